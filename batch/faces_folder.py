"""The faces folder: the format ``dfd faces extract`` writes and ``dfd train`` reads.

::

    FACES/faces.json              settings, dataset, fingerprint, history of sessions
    FACES/parts/part-*.parquet    one row per face, plus one row per failed or face-less video

Rows (:data:`FACE_FIELDS`) have ``status`` ``"face"`` (a crop), ``"no_face"`` (the video was
read and has no face: an answer, written so that a rerun does not redo it) or ``"error"`` (the
video failed at ``stage``; ``error_kind`` is a :class:`~pipeline.errors.DfdError` kind,
``"internal"`` or ``"worker-lost"``). Parts are written atomically (temporary name, then
rename); when a video appears in several parts, the newest part wins.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from evaluation.runs import (
    PartsFolder,
    concat_tables,
    newest_rows,
    part_name,
    read_parts,
    write_table,
)

if TYPE_CHECKING:
    import pandas as pd

FACES_FILE = "faces.json"
PARTS_DIR = "parts"
#: ``status`` of a row: a crop, a video without any face, a failed video.
FACE, NO_FACE, ERROR = "face", "no_face", "error"

#: ``(column, type)`` of every row of ``parts/*.parquet``.
FACE_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("video_id", pa.string()),
    ("dataset", pa.string()),
    ("path", pa.string()),
    ("label", pa.int8()),  # 1 = fake, 0 = real
    ("manipulation", pa.string()),
    ("split", pa.string()),  # "train" | "val" | "test"
    ("split_source", pa.string()),  # "dataset" (the reader's) | "hash" (see assign_split)
    ("kind", pa.string()),  # the row's VideoRow.kind: "video" | "face_sequence"
    ("status", pa.string()),  # "face" | "no_face" | "error"
    ("frame_index", pa.int32()),  # decoded frame of the video; position in a face sequence
    ("time_s", pa.float64()),  # seconds; 0 for images, null for face sequences
    ("box", pa.list_(pa.float32(), 4)),  # square crop box (x1, y1, x2, y2), frame pixels
    ("raw_box", pa.list_(pa.float32(), 4)),  # MTCNN's box, frame pixels
    ("landmarks", pa.list_(pa.float32(), 10)),  # (5, 2) x, y flattened, crop pixels
    ("detection_confidence", pa.float64()),  # MTCNN probability; null for face sequences
    ("crop_png", pa.binary()),  # (height, width, 3) RGB crop, PNG
    ("width", pa.int32()),  # of the stored crop, pixels
    ("height", pa.int32()),
    ("frame_width", pa.int32()),  # of the frame the face was found in
    ("frame_height", pa.int32()),
    ("error_kind", pa.string()),  # a DfdError kind, "internal" or "worker-lost"; null = fine
    ("error", pa.string()),  # one-line message
    ("stage", pa.string()),  # where it failed: read, probe, decode, detect, encode
    ("service_version", pa.string()),
    ("worker", pa.string()),  # host:pid of the actor
    ("finished_at", pa.timestamp("us", tz="UTC")),
)
FACE_SCHEMA = pa.schema([pa.field(n, t) for n, t in FACE_FIELDS])


def encode_crop(crop: np.ndarray) -> bytes:
    """``(H, W, 3) uint8`` RGB -> PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_crop(png: bytes) -> np.ndarray:
    """PNG bytes of ``crop_png`` -> ``(H, W, 3) uint8`` RGB (square for detected faces)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


class FacesFolder(PartsFolder):
    """A faces folder on disk: ``faces.json`` and ``parts/``."""

    INFO_FILE = FACES_FILE
    WHAT = "a faces folder"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.parts_dir = self.root / PARTS_DIR
        self._seq = 0

    def clean(self) -> None:
        """Remove temporary files of a session that stopped mid-write."""
        for tmp in self.parts_dir.glob("*.tmp"):
            tmp.unlink()

    def write_part(self, table: pa.Table) -> str:
        """Write one part atomically (temporary name, then rename); returns its name."""
        self._seq += 1
        name = part_name(self._seq)
        write_table(table, self.parts_dir / f"{name}.parquet")
        return name

    def rows(self) -> pa.Table | None:
        """Every row of the newest part of each video (faces, no_face and error rows)."""
        parts = read_parts(self.parts_dir)
        if not parts:
            return None
        kept, _ = newest_rows(parts)
        order = [("video_id", "ascending"), ("frame_index", "ascending")]
        return concat_tables(kept).sort_by(order)

    def finished_ids(self, *, retry_errors: bool = False) -> set[str]:
        """Videos a new session skips: every written one, or only those without an error."""
        table = self.rows()
        if table is None:
            return set()
        ids = table.column("video_id").to_pylist()
        if not retry_errors:
            return set(ids)
        status = table.column("status").to_pylist()
        return {v for v, s in zip(ids, status, strict=True) if s != ERROR}


def read_faces(folder: Path) -> pd.DataFrame:
    """The face rows (``status == "face"``) of a faces folder, one per crop, sorted by video and
    frame; columns of :data:`FACE_FIELDS`. Decode ``crop_png`` with :func:`decode_crop`."""
    table = FacesFolder(folder).rows()
    if table is None:
        return FACE_SCHEMA.empty_table().to_pandas()
    mask = pc.equal(table.column("status"), FACE)
    return table.filter(mask).to_pandas()


def read_errors(folder: Path) -> pd.DataFrame:
    """The error rows of a faces folder (one per failed video)."""
    table = FacesFolder(folder).rows()
    if table is None:
        return FACE_SCHEMA.empty_table().to_pandas()
    return table.filter(pc.equal(table.column("status"), ERROR)).to_pandas()
