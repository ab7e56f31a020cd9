"""The evaluation run folder: the format ``batch`` writes and the reports read.

One owner for the layout, the schemas and the rules, so a report never needs the code that ran
the evaluation::

    RUN/run.json                       config, model fingerprint, history of sessions
    RUN/predictions/part-*.parquet     one row per video (schema: :func:`prediction_schema`)
    RUN/faces/part-*.parquet           one row per scored face, same part names (optional)

Parts are written atomically (temporary name, then rename), face parts before their prediction
part, so a session that stops loses at most one part and :meth:`RunFolder.clean` removes what it
left. When a video appears in several parts (a retry), the newest part wins.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
PREDICTIONS_DIR = "predictions"
FACES_DIR = "faces"
#: Per-member score columns are ``member_<name>`` (member names are ``[a-z0-9_]+``).
MEMBER_PREFIX = "member_"
#: Crops per ensemble call when scoring a face sequence (bounds memory on long sequences).
SEQUENCE_CHUNK = 32
#: ``error_kind`` of a row whose worker died (crash, out of memory) on every retry.
WORKER_LOST = "worker-lost"

#: ``(column, type)`` of every prediction row, before the per-member columns.
PREDICTION_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("video_id", pa.string()),
    ("dataset", pa.string()),
    ("path", pa.string()),
    ("label", pa.int8()),  # 1 = fake, 0 = real
    ("manipulation", pa.string()),
    ("split", pa.string()),
    ("kind", pa.string()),  # "video" | "face_sequence"
    ("score", pa.float64()),  # DeepFake probability; null = no face, or error
    ("label_pred", pa.int8()),  # score >= threshold; null without score
    ("n_faces", pa.int32()),  # faces scored (in kept tracks)
    ("n_faces_detected", pa.int32()),
    ("n_tracks", pa.int32()),
    ("n_shots", pa.int32()),
    ("frames_sampled", pa.int32()),
    ("duration_s", pa.float64()),
    ("error_kind", pa.string()),  # a DfdError kind, "internal" or "worker-lost"; null = fine
    ("error", pa.string()),  # one-line message; null = fine
    ("service_version", pa.string()),
    ("models_digest", pa.string()),
    ("elapsed_s", pa.float64()),
    ("finished_at", pa.timestamp("us", tz="UTC")),
    ("worker", pa.string()),  # host:pid of the actor
    ("node", pa.string()),  # the Ray node of the actor (null outside Ray)
    ("worker_rss_mb", pa.float64()),  # the actor's resident memory after this row
)

#: ``(column, type)`` of every face row, before the per-member columns.
FACE_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("video_id", pa.string()),
    ("dataset", pa.string()),
    ("label", pa.int8()),
    ("manipulation", pa.string()),
    ("split", pa.string()),
    ("shot", pa.int32()),
    ("track", pa.int32()),  # face cluster within the shot
    ("frame_index", pa.int32()),  # frame of the video; position in a face sequence
    ("time_s", pa.float64()),  # null for face sequences
    ("detection_confidence", pa.float64()),  # null for face sequences (not detected here)
    ("score", pa.float64()),
)


def member_column(name: str) -> str:
    return f"{MEMBER_PREFIX}{name}"


def member_names_of(schema: pa.Schema) -> list[str]:
    """Member names from the ``member_*`` columns of a predictions or faces table."""
    return [n.removeprefix(MEMBER_PREFIX) for n in schema.names if n.startswith(MEMBER_PREFIX)]


def prediction_schema(member_names: Sequence[str]) -> pa.Schema:
    """Schema of ``predictions/*.parquet``: :data:`PREDICTION_FIELDS` + ``member_<name>``."""
    fields = [pa.field(n, t) for n, t in PREDICTION_FIELDS]
    fields += [pa.field(member_column(m), pa.float64()) for m in member_names]
    return pa.schema(fields)


def face_schema(member_names: Sequence[str]) -> pa.Schema:
    """Schema of ``faces/*.parquet``: :data:`FACE_FIELDS` + ``member_<name>``."""
    fields = [pa.field(n, t) for n, t in FACE_FIELDS]
    fields += [pa.field(member_column(m), pa.float64()) for m in member_names]
    return pa.schema(fields)


def read_parts(folder: Path) -> list[tuple[str, pa.Table]]:
    """``(name, table)`` of every readable ``part-*.parquet`` in ``folder``, oldest first."""
    parts = []
    for path in sorted(folder.glob("part-*.parquet")):
        try:
            parts.append((path.stem, pq.read_table(path)))
        except (OSError, pa.ArrowInvalid) as exc:
            # Parts are renamed into place only once complete, so this is outside damage.
            log.warning("skipping unreadable part %s: %s", path, exc)
    return parts


def concat_tables(
    tables: Sequence[pa.Table], *, promote: Literal["default", "permissive"] = "default"
) -> pa.Table:
    """One table of ``tables``, their schemas unified: a column missing from a part, or null-typed
    in it (all its values None), takes the other parts' type; ``"permissive"`` also widens
    numbers (int64 and double -> double)."""
    return pa.concat_tables(tables, promote_options=promote)


def newest_rows(parts: Sequence[tuple[str, pa.Table]]) -> tuple[list[pa.Table], dict[str, str]]:
    """The rows of each part that are the newest of their video (parts oldest first, as
    :func:`read_parts` returns them), and ``video_id -> winning part``."""
    winner: dict[str, str] = {}
    for name, table in parts:  # oldest first: later parts overwrite
        for vid in table.column("video_id").to_pylist():
            winner[vid] = name
    kept = [
        table.filter(pa.array([winner[v] == name for v in table.column("video_id").to_pylist()]))
        for name, table in parts
    ]
    return kept, winner


def part_name(seq: int) -> str:
    """A new part's name: sorts by the time it was written, unique across processes."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    return f"part-{stamp}-{os.getpid()}-{seq:05d}"


def write_table(table: pa.Table, path: Path) -> None:
    """Write a Parquet file atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically (temporary name in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def write_json(path: Path, info: dict[str, Any]) -> None:
    """Write a folder's JSON description atomically."""
    write_bytes(path, (json.dumps(info, indent=2, default=str) + "\n").encode("utf-8"))


class PartsFolder:
    """A folder described by one JSON file and holding Parquet parts: an evaluation run and an
    attack run (:mod:`evaluation.attack_runs`) here, a faces folder in ``batch``.

    The helpers below work on one folder of parts whose rows are keyed by ``video_id`` (the
    newest part wins per video); a subclass names its folders and its row rules.
    """

    #: The folder's JSON description, and what the folder is called in errors.
    INFO_FILE: ClassVar[str]
    WHAT: ClassVar[str]

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._part_seq = itertools.count()

    def new_part_name(self) -> str:
        """The name of the next part this object writes (:func:`part_name`)."""
        return part_name(next(self._part_seq))

    def write_table_part(self, folder: Path, table: pa.Table, name: str | None = None) -> str:
        """Write ``table`` as part ``name`` (default: a new name) of ``folder``, atomically;
        returns the name."""
        name = name or self.new_part_name()
        write_table(table, folder / f"{name}.parquet")
        return name

    @staticmethod
    def remove_temporaries(*folders: Path) -> None:
        """Remove the ``*.tmp`` files a session that stopped mid-write left in ``folders``."""
        for folder in folders:
            for tmp in folder.glob("*.tmp"):
                tmp.unlink()

    @staticmethod
    def newest_table(
        folder: Path, *, promote: Literal["default", "permissive"] = "default"
    ) -> tuple[pa.Table | None, dict[str, str]]:
        """The rows of ``folder``'s parts that are the newest of their video (unsorted; None when
        there is no part), and ``video_id -> winning part``."""
        parts = read_parts(folder)
        kept, winner = newest_rows(parts)
        return (concat_tables(kept, promote=promote) if parts else None), winner

    @property
    def info_file(self) -> Path:
        return self.root / self.INFO_FILE

    def exists(self) -> bool:
        return self.info_file.is_file()

    def info(self) -> dict[str, Any]:
        """The parsed JSON description."""
        if not self.exists():
            raise ConfigError(f"{self.root} is not {self.WHAT} (no {self.INFO_FILE})")
        info: dict[str, Any] = json.loads(self.info_file.read_text(encoding="utf-8"))
        return info

    def write_info(self, info: dict[str, Any]) -> None:
        write_json(self.info_file, info)


class RunFolder(PartsFolder):
    """A run folder on disk: its ``run.json``, prediction parts and face parts."""

    INFO_FILE = RUN_FILE
    WHAT = "an evaluation run folder"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.predictions_dir = self.root / PREDICTIONS_DIR
        self.faces_dir = self.root / FACES_DIR

    def clean(self) -> None:
        """Remove leftovers of a session that stopped mid-write: temporary files, and face parts
        whose prediction part never landed (predictions are renamed into place last)."""
        self.remove_temporaries(self.predictions_dir, self.faces_dir)
        written = {p.stem for p in self.predictions_dir.glob("part-*.parquet")}
        for part in self.faces_dir.glob("part-*.parquet"):
            if part.stem not in written:
                part.unlink()

    def write_part(self, predictions: pa.Table, faces: pa.Table | None) -> str:
        """Write one part (faces first, predictions last, each atomically); returns its name."""
        name = self.new_part_name()
        if faces is not None and faces.num_rows:
            self.write_table_part(self.faces_dir, faces, name)
        return self.write_table_part(self.predictions_dir, predictions, name)

    def _latest(self) -> tuple[pa.Table | None, dict[str, str]]:
        """All prediction rows, newest part first per video, and ``video_id -> winning part``."""
        return self.newest_table(self.predictions_dir)

    def predictions(self) -> pa.Table | None:
        """One row per video (the newest when a video was written twice), sorted by video_id;
        None when nothing is written yet."""
        table, _ = self._latest()
        return None if table is None else table.sort_by("video_id")

    def faces(self) -> pa.Table | None:
        """Face rows of the winning prediction row of each video; None when none were written."""
        _, winner = self._latest()
        kept = []
        for name, table in read_parts(self.faces_dir):
            ids = table.column("video_id").to_pylist()
            kept.append(table.filter(pa.array([winner.get(v) == name for v in ids])))
        if not kept:
            return None
        return concat_tables(kept).sort_by([("video_id", "ascending"), ("shot", "ascending")])

    def finished_ids(self, *, retry_errors: bool = False) -> set[str]:
        """Videos a new session skips: every written row, or only the error-free ones."""
        return finished_ids_of(self.predictions(), retry_errors=retry_errors)


def finished_ids_of(table: pa.Table | None, *, retry_errors: bool) -> set[str]:
    """The ``video_id`` of every row of ``table``, or (``retry_errors``) of the rows whose
    ``error`` is null: the videos a new session skips."""
    if table is None:
        return set()
    ids = table.column("video_id").to_pylist()
    if not retry_errors or "error" not in table.column_names:
        return set(ids)
    errors = table.column("error").to_pylist()
    return {v for v, e in zip(ids, errors, strict=True) if e is None}
