"""Face extraction on Ray Data: dataset rows -> sampled frames -> MTCNN -> Parquet face crops.

The training data of ``dfd train`` (issue 15). Each row of a dataset (paper section 4.1, read by
:func:`batch.datasets.read_dataset`) goes to a pool of :class:`ExtractorActor` actors
(``map_batches`` with :class:`ray.data.ActorPoolStrategy`), each holding one
:class:`pipeline.faces.FaceDetector` (the analysis' detector, same settings, same square 1.3x
boxes). Shots and tracks are not needed for training: up to ``max_frames`` frames are spread
over the whole video with :func:`pipeline.faces.select_frame_times`, decoded with
:func:`pipeline.media.iter_frames`, and each frame keeps its most confident face (``keep="best"``,
the default) or all of its faces (``keep="all"``). A video's label applies to every face kept: in
a fake with several people only one face may be manipulated, and keeping the most confident face
(the largest, clearest one, usually the subject) limits that label noise. Images give their faces
(frame 0). WildDeepfake rows are face crops already: no detection, ``max_frames`` crops spread
over the sequence.

The folder::

    FACES/faces.json              settings, dataset, fingerprint, history of sessions
    FACES/parts/part-*.parquet    one row per face, plus one row per failed or face-less video

Rows (:data:`FACE_FIELDS`) have ``status`` ``"face"`` (a crop), ``"no_face"`` (the video was
read and has no face: an answer, written so that a rerun does not redo it) or ``"error"`` (the
video failed at ``stage``; ``error_kind`` is a :class:`~pipeline.errors.DfdError` kind,
``"internal"`` or ``"worker-lost"``). A broken video never fails the run.

Split: the dataset's own split (``VideoRow.split``) where the reader found one
(``split_source="dataset"``). Rows with split ``"unspecified"`` get a video-level split
(``split_source="hash"``): ``"val"`` when the first 8 bytes of ``sha256(video_id)``, read as an
unsigned integer over 2**64, fall below ``val_fraction``, else ``"train"``. It depends on the id
alone, so it is the same on every machine and every rerun, and all frames of a video land on one
side. (Identities are not grouped: an FF++ fake and its source video may fall on different
sides when the official split files are absent.)

Resume: the driver writes parts atomically (temporary name, then rename) every ``flush_rows``
videos or ``flush_s`` seconds; a rerun into the same folder skips every video that has rows
(error rows too, unless ``retry_errors``). When a video appears in several parts, the newest part
wins. A rerun with another dataset, root or any setting that changes the crops is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from batch.datasets import DatasetName, VideoRow, iter_face_sequence, read_dataset
from batch.evaluate import WORKER_LOST, _concat, _data_context, _read_parts, _worker_id
from dfd.version import __version__
from pipeline.errors import ConfigError, CorruptMediaError, DatasetLayoutError, DfdError
from pipeline.faces import FaceSettings

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.faces import Detection, FaceDetector

log = logging.getLogger(__name__)

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
    ("split_source", pa.string()),  # "dataset" (the reader's) | "hash" (see module docstring)
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


class FaceExtractionConfig(BaseModel):
    """Everything a face extraction needs; stored in ``faces.json``."""

    model_config = ConfigDict(extra="forbid")

    #: Which reader turns ``root`` into rows (see :func:`batch.datasets.read_dataset`).
    dataset: DatasetName
    #: The dataset's folder in its official layout (for ``csv``: the manifest file).
    root: Path
    #: The output folder: ``faces.json`` and ``parts/``.
    out: Path
    #: Keep only rows of this split (the reader's split); None = every row.
    split: str | None = None
    #: Reader options, e.g. ``{"compression": "c40"}`` for FF++.
    reader_options: dict[str, Any] = Field(default_factory=dict)
    #: Frames sampled per video, spread over its whole length; crops per face sequence.
    max_frames: int = Field(32, ge=1)
    #: Fraction of ``"unspecified"``-split videos assigned to ``"val"`` (by hash of video_id).
    val_fraction: float = Field(0.2, ge=0.0, le=1.0)
    #: ``"best"``: the most confident face per frame; ``"all"``: every face found.
    keep: Literal["best", "all"] = "best"
    #: The analysis' detector settings (margin 1.3, thresholds, minimum size).
    faces: FaceSettings = Field(default_factory=FaceSettings)
    #: Crops with a longer side over this are reduced (the analysis' ``crop_max_side``).
    crop_max_side: int = Field(600, ge=32)
    #: Decompression-bomb guard per image or frame, pixels.
    max_pixels: int = Field(100_000_000, gt=0)
    #: Only the first N rows (after the split filter): a smoke test. Not part of the fingerprint.
    limit: int | None = Field(None, ge=1)
    #: Rerun videos whose stored rows are errors (finished videos are always skipped).
    retry_errors: bool = False
    #: Actors in the pool; each loads the detector once.
    actors: int = Field(2, ge=1)
    #: Logical CPUs per actor; fractional so Ray Data's own tasks still fit on 2 cores.
    actor_num_cpus: float = Field(0.5, gt=0.0)
    #: GPU share per actor when the detector runs on CUDA (``faces.device``); None: an even
    #: share of one GPU among the actors. Without a share Ray hides the GPU from the actor.
    actor_num_gpus: float | None = Field(None, ge=0.0)
    #: ``torch.set_num_threads`` in each actor (0: torch's default).
    torch_threads: int = Field(1, ge=0)
    #: Retries of a video whose worker died before it becomes a ``worker-lost`` error row.
    max_task_retries: int = Field(1, ge=0)
    #: A part is written every ``flush_rows`` videos or ``flush_s`` seconds.
    flush_rows: int = Field(32, ge=1)
    flush_s: float = Field(30.0, gt=0.0)


#: Settings that never change a crop; left out of the fingerprint.
_EXECUTION_ONLY: dict[str, Any] = {
    "out": True,
    "limit": True,
    "retry_errors": True,
    "actors": True,
    "actor_num_cpus": True,
    "actor_num_gpus": True,
    "torch_threads": True,
    "max_task_retries": True,
    "flush_rows": True,
    "flush_s": True,
    "faces": {"device", "batch_size"},
}


def fingerprint(config: FaceExtractionConfig) -> dict[str, Any]:
    """What must not change between the sessions of one faces folder."""
    settings = config.model_dump(mode="json", exclude=_EXECUTION_ONLY)
    settings["root"] = str(Path(config.root).expanduser().resolve())
    return settings


def assign_split(video_id: str, split: str, val_fraction: float) -> tuple[str, str]:
    """``(split, split_source)``: the dataset's split, or a hash split of ``video_id``."""
    if split != "unspecified":
        return split, "dataset"
    h = int.from_bytes(hashlib.sha256(video_id.encode()).digest()[:8], "big") / 2**64
    return ("val" if h < val_fraction else "train"), "hash"


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


# ----------------------------------------------------------------------------------------------
# Extracting one row (plain Python: Ray Data actors and the in-process loop alike)


class _Failure(Exception):
    """Carries the stage a video failed at."""

    def __init__(self, stage: str, cause: Exception) -> None:
        super().__init__(str(cause))
        self.stage = stage
        self.cause = cause


class ExtractorActor:
    """Loads the face detector once, then extracts the faces of every row it is given.

    Plain Python: ``map_batches(ExtractorActor, compute=ActorPoolStrategy(...))`` builds one per
    actor, and ``--local`` builds one in the driver and calls it the same way.
    """

    def __init__(self, config_json: str) -> None:
        import torch

        from pipeline.faces import FaceDetector

        self.config = FaceExtractionConfig.model_validate_json(config_json)
        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        self.detector: FaceDetector = FaceDetector(self.config.faces)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Rows (columns of :class:`VideoRow` + ``dataset``) -> face rows (:data:`FACE_SCHEMA`)."""
        fields = {f.name for f in dataclasses.fields(VideoRow)}
        records: list[dict[str, Any]] = []
        for item in batch.to_pylist():
            row = VideoRow(**{k: v for k, v in item.items() if k in fields})
            records.extend(self.extract(row, item["dataset"]))
        return pa.Table.from_pylist(records, schema=FACE_SCHEMA)

    def extract(self, row: VideoRow, dataset: str) -> list[dict[str, Any]]:
        """Rows for one video: its faces, or one ``no_face`` row, or one ``error`` row.

        Never raises for a bad video.
        """
        split, source = assign_split(row.video_id, row.split, self.config.val_fraction)
        base = {
            "video_id": row.video_id,
            "dataset": dataset,
            "path": row.path,
            "label": row.label,
            "manipulation": row.manipulation,
            "split": split,
            "split_source": source,
            "kind": row.kind,
            "service_version": __version__,
            "worker": _worker_id(),
        }
        try:
            if row.kind == "face_sequence":
                faces = self._sequence(row)
            else:
                faces = self._media(Path(row.path))
            records = [{**f, "status": FACE} for f in faces] or [{"status": NO_FACE}]
        except _Failure as failure:
            exc = failure.cause
            if isinstance(exc, DfdError):
                kind, message = exc.kind, exc.detail
            else:  # a bug or a library failure on this video: record it, go on
                log.error("extracting %s failed at %s", row.video_id, failure.stage, exc_info=exc)
                kind, message = "internal", f"{type(exc).__name__}: {exc}"
            records = [{"status": ERROR, "error_kind": kind, "error": message,
                        "stage": failure.stage}]  # fmt: skip
        now = datetime.now(UTC)
        return [{**base, **r, "finished_at": now} for r in records]

    def _sequence(self, row: VideoRow) -> list[dict[str, Any]]:
        """WildDeepfake: the images are the faces; ``max_frames`` of them, spread evenly."""
        from pipeline.analyze import _spread

        stage = "read"
        try:
            crops = list(iter_face_sequence(row))
            picked = _spread(len(crops), self.config.max_frames)
            stage = "encode"
            return [self._face(i, None, crops[i], None, crops[i].shape) for i in picked]
        except Exception as exc:
            raise _Failure(stage, exc) from exc

    def _media(self, path: Path) -> list[dict[str, Any]]:
        """A video (frames spread over its length) or an image (frame 0)."""
        from pipeline.faces import select_frame_times
        from pipeline.media import iter_frames, load_image, probe

        c = self.config
        stage = "probe"
        try:
            info = probe(path, max_pixels=c.max_pixels)
            stage = "decode"
            if info.kind == "image":
                frames: Iterator[tuple[int, float | None, np.ndarray]] = iter(
                    [(0, 0.0, load_image(path, max_pixels=c.max_pixels))]
                )
            else:
                fps = info.fps or 25.0
                duration = info.duration_s or 1.0 / fps  # unknown length: the first frame
                times = select_frame_times(0.0, duration, fps, c.max_frames) or [0.0]
                frames = (
                    (f.index, f.time_s, f.image)
                    for f in iter_frames(path, times, max_pixels=c.max_pixels)
                )
            faces: list[dict[str, Any]] = []
            decoded = 0
            while batch := _take(frames, c.faces.batch_size):
                decoded += len(batch)
                stage = "detect"
                found = self.detector.detect([image for _, _, image in batch])
                stage = "encode"
                for (index, t, image), dets in zip(batch, found, strict=True):
                    for det in dets if c.keep == "all" else dets[:1]:
                        faces.append(self._face(index, t, image, det, image.shape))
                stage = "decode"
            if not decoded:
                raise CorruptMediaError(f"{path.name}: no video frame could be decoded")
            return faces
        except Exception as exc:
            raise _Failure(stage, exc) from exc

    def _face(
        self,
        index: int,
        time_s: float | None,
        image: np.ndarray,
        det: Detection | None,
        frame_shape: tuple[int, ...],
    ) -> dict[str, Any]:
        """One face row; ``det=None``: ``image`` is the crop already (face sequences)."""
        from pipeline.faces import crop
        from pipeline.gallery import thumbnail

        face = image if det is None else crop(image, det)
        face, scale = thumbnail(face, self.config.crop_max_side)
        record: dict[str, Any] = {
            "frame_index": index,
            "time_s": time_s,
            "crop_png": encode_crop(np.ascontiguousarray(face)),
            "width": int(face.shape[1]),
            "height": int(face.shape[0]),
            "frame_width": int(frame_shape[1]),
            "frame_height": int(frame_shape[0]),
        }
        if det is not None:
            origin = np.array(det.box[:2], dtype=np.float32)
            landmarks = (det.landmarks - origin) * np.float32(scale)
            record.update(
                box=list(det.box),
                raw_box=list(det.raw_box),
                landmarks=landmarks.reshape(-1).tolist(),
                detection_confidence=round(det.confidence, 6),
            )
        return record


def _take(items: Iterator[Any], n: int) -> list[Any]:
    out = []
    for item in items:
        out.append(item)
        if len(out) >= n:
            break
    return out


# ----------------------------------------------------------------------------------------------
# The folder


class FacesFolder:
    """A faces folder on disk: ``faces.json`` and ``parts/``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.parts_dir = self.root / PARTS_DIR
        self._seq = 0

    @property
    def info_file(self) -> Path:
        return self.root / FACES_FILE

    def exists(self) -> bool:
        return self.info_file.is_file()

    def info(self) -> dict[str, Any]:
        if not self.exists():
            raise ConfigError(f"{self.root} is not a faces folder (no {FACES_FILE})")
        info: dict[str, Any] = json.loads(self.info_file.read_text(encoding="utf-8"))
        return info

    def write_info(self, info: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.info_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(self.info_file)

    def clean(self) -> None:
        """Remove temporary files of a session that stopped mid-write."""
        for tmp in self.parts_dir.glob("*.tmp"):
            tmp.unlink()

    def write_part(self, table: pa.Table) -> str:
        """Write one part atomically (temporary name, then rename); returns its name."""
        import os

        self._seq += 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        name = f"part-{stamp}-{os.getpid()}-{self._seq:05d}"
        path = self.parts_dir / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)
        return name

    def rows(self) -> pa.Table | None:
        """Every row of the newest part of each video (faces, no_face and error rows)."""
        parts = _read_parts(self.parts_dir)
        if not parts:
            return None
        winner: dict[str, str] = {}
        for name, table in parts:  # oldest first: later parts overwrite
            for vid in table.column("video_id").to_pylist():
                winner[vid] = name
        kept = [
            table.filter(
                pa.array([winner[v] == name for v in table.column("video_id").to_pylist()])
            )
            for name, table in parts
        ]
        return _concat(kept).sort_by([("video_id", "ascending"), ("frame_index", "ascending")])

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


# ----------------------------------------------------------------------------------------------
# The driver


@dataclass
class ExtractionSummary:
    """What one session did."""

    out: Path
    total: int
    skipped: int
    processed: int
    errors: int
    no_face: int
    faces: int
    elapsed_s: float

    def line(self) -> str:
        return (
            f"{self.total} videos: {self.skipped} already done, {self.processed} processed now "
            f"({self.errors} errors, {self.no_face} without a face), {self.faces} faces written "
            f"to {self.out / PARTS_DIR} in {self.elapsed_s:.1f} s"
        )


def _prepare(config: FaceExtractionConfig, folder: FacesFolder) -> dict[str, Any]:
    """Write ``faces.json``, or check that the folder was made with the same dataset and
    settings (mixing them would give a training set nobody can describe)."""
    current = fingerprint(config)
    if folder.exists():
        info = folder.info()
        previous = info.get("fingerprint", {})
        changed = sorted(
            k for k in set(previous) | set(current) if previous.get(k) != current.get(k)
        )
        if changed:
            shown = ", ".join(f"{k}: {previous.get(k)!r} != {current.get(k)!r}" for k in changed)
            raise ConfigError(
                f"{folder.root} holds faces extracted with other settings ({shown}); "
                "choose a new --out"
            )
        folder.clean()
    else:
        if folder.parts_dir.exists() and any(folder.parts_dir.glob("part-*.parquet")):
            raise ConfigError(f"{folder.root} has parts but no {FACES_FILE}; choose a new --out")
        info = {"created_at": datetime.now(UTC).isoformat(), "sessions": []}
    info["config"] = config.model_dump(mode="json")
    info["fingerprint"] = current
    info["service_version"] = __version__
    folder.write_info(info)
    return info


def read_rows(config: FaceExtractionConfig) -> list[VideoRow]:
    """The dataset's rows (split filter and ``limit`` applied).

    Raises:
        ConfigError, DatasetLayoutError, MissingFileError: from the reader; an empty dataset.
    """
    rows = read_dataset(config.dataset, config.root, split=config.split, **config.reader_options)
    if config.limit is not None:
        rows = rows[: config.limit]
    if not rows:
        raise DatasetLayoutError(f"{config.dataset} at {config.root} has no rows to extract")
    return rows


#: ``progress(done, total, elapsed_s)`` after every video.
Progress = Callable[[int, int, float], None]


def extract_faces(
    config: FaceExtractionConfig,
    *,
    rows: Sequence[VideoRow] | None = None,
    local: bool = False,
    progress: Progress | None = None,
) -> ExtractionSummary:
    """Extract the faces of every row of ``config``'s dataset not yet in ``config.out``.

    Args:
        config: the job's settings.
        rows: extract these rows instead of reading ``config.root`` (tests).
        local: run one :class:`ExtractorActor` in this process, without Ray.
        progress: called as ``progress(done, total, elapsed_s)`` as videos come back.

    Raises:
        ConfigError, DatasetLayoutError, MissingFileError: before any video is read. Per-video
            failures never raise: they become error rows.
    """
    started = time.perf_counter()
    folder = FacesFolder(config.out)
    if rows is None:
        rows = read_rows(config)
    info = _prepare(config, folder)
    done = folder.finished_ids(retry_errors=config.retry_errors)
    todo = [r for r in rows if r.video_id not in done]
    summary = ExtractionSummary(folder.root, len(rows), len(rows) - len(todo), 0, 0, 0, 0, 0.0)
    session: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(),
        "rows": len(rows),
        "mode": "local" if local else "ray",
    }
    if todo:
        _execute(config, folder, todo, summary, started, local, progress)
    summary.elapsed_s = time.perf_counter() - started
    session.update(
        finished_at=datetime.now(UTC).isoformat(),
        skipped=summary.skipped,
        processed=summary.processed,
        errors=summary.errors,
        no_face=summary.no_face,
        faces=summary.faces,
        elapsed_s=round(summary.elapsed_s, 2),
    )
    info["sessions"] = [*info.get("sessions", []), session]
    folder.write_info(info)
    return summary


def _blocks_local(config: FaceExtractionConfig, items: list[dict[str, Any]]) -> Iterator[pa.Table]:
    actor = ExtractorActor(config.model_dump_json())
    for item in items:
        yield actor(pa.Table.from_pylist([item]))


def _blocks_ray(config: FaceExtractionConfig, items: list[dict[str, Any]]) -> Iterator[pa.Table]:
    import ray

    if not ray.is_initialized():
        ray.init()
    # Per-video errors are rows, so no block should ever fail; if one does, the video is
    # written as worker-lost below rather than stopping the run.
    with _data_context(max_errored_blocks=-1, enable_progress_bars=False):
        # One row per block: each video is one task, so the pool balances long and short videos.
        ds: Any = ray.data.from_items(items, override_num_blocks=len(items))
        with warnings.catch_warnings():
            # As in batch/evaluate.py: max_task_retries has no named parameter in Ray 2.60, and
            # Ray Data's default (-1) would retry a video that kills its worker forever.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            ds = ds.map_batches(
                ExtractorActor,
                fn_constructor_kwargs={"config_json": config.model_dump_json()},
                batch_size=1,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=config.actors),
                num_cpus=config.actor_num_cpus,
                num_gpus=_gpu_share(config),
                max_task_retries=config.max_task_retries,
            )
        yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


def _gpu_share(config: FaceExtractionConfig) -> float:
    """Each actor's GPU share: none on CPU, else the configured or an even share of one GPU."""
    if not config.faces.device.startswith("cuda"):
        return 0.0
    if config.actor_num_gpus is not None:
        return config.actor_num_gpus
    return 1.0 / config.actors


def _execute(
    config: FaceExtractionConfig,
    folder: FacesFolder,
    todo: Sequence[VideoRow],
    summary: ExtractionSummary,
    started: float,
    local: bool,
    progress: Progress | None,
) -> None:
    items = [{**dataclasses.asdict(r), "dataset": config.dataset} for r in todo]
    buffer: list[pa.Table] = []
    buffered: set[str] = set()
    seen: set[str] = set()
    last_flush = time.perf_counter()

    def flush() -> None:
        nonlocal last_flush
        last_flush = time.perf_counter()
        if buffer:
            folder.write_part(_concat(buffer))
            buffer.clear()
            buffered.clear()

    blocks = _blocks_local(config, items) if local else _blocks_ray(config, items)
    for block in blocks:
        if not block.num_rows:
            continue
        block = block.cast(FACE_SCHEMA)
        buffer.append(block)
        statuses: dict[str, str] = {}
        for vid, status in zip(
            block.column("video_id").to_pylist(), block.column("status").to_pylist(), strict=True
        ):
            statuses.setdefault(vid, status)
            summary.faces += status == FACE
        for status in statuses.values():
            summary.processed += 1
            summary.errors += status == ERROR
            summary.no_face += status == NO_FACE
        seen.update(statuses)
        buffered.update(statuses)
        if progress is not None:
            progress(summary.processed, len(todo), time.perf_counter() - started)
        if len(buffered) >= config.flush_rows or time.perf_counter() - last_flush >= config.flush_s:
            flush()
    flush()
    lost = [r for r in todo if r.video_id not in seen]
    if lost:
        folder.write_part(_lost_rows(lost, config))
        summary.processed += len(lost)
        summary.errors += len(lost)
        log.error("%d video(s) lost their worker on every retry; written as error rows", len(lost))


def _lost_rows(rows: Sequence[VideoRow], config: FaceExtractionConfig) -> pa.Table:
    """Error rows for videos whose worker died on every retry."""
    now = datetime.now(UTC)
    records = []
    for r in rows:
        split, source = assign_split(r.video_id, r.split, config.val_fraction)
        records.append(
            {
                "video_id": r.video_id,
                "dataset": config.dataset,
                "path": r.path,
                "label": r.label,
                "manipulation": r.manipulation,
                "split": split,
                "split_source": source,
                "kind": r.kind,
                "status": ERROR,
                "error_kind": WORKER_LOST,
                "error": "the worker process died while extracting this video (crash or out "
                "of memory) on every retry; see the Ray worker logs",
                "stage": "worker",
                "service_version": __version__,
                "finished_at": now,
            }
        )
    return pa.Table.from_pylist(records, schema=FACE_SCHEMA)
