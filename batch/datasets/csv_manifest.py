"""A plain CSV manifest: any media this project can read, labelled by hand."""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath

from batch.datasets.face_sequences import is_archive
from batch.datasets.layout import parse_label, report_missing, split_name
from batch.datasets.rows import ORIGINAL, UNSPECIFIED, OnMissing, VideoRow
from pipeline.errors import DatasetLayoutError, MissingFileError

CSV_REQUIRED = ("path", "label")
CSV_OPTIONAL = ("manipulation", "split", "video_id")


def read_csv_manifest(path: Path, *, on_missing: OnMissing = "error") -> list[VideoRow]:
    """A CSV manifest with header ``path,label[,manipulation,split,video_id]``.

    ``label`` accepts ``0``/``1`` and ``real``/``fake`` in any case (1 = fake). Relative ``path``
    values are relative to the CSV's folder. A folder or ``.tar.gz``/``.tgz``/``.tar`` path is a
    face sequence; anything else is decoded by the pipeline (video or image). Missing
    ``manipulation`` is ``"original"`` for real rows and ``"unspecified"`` for fakes; missing
    ``split`` is ``"unspecified"``; missing ``video_id`` is ``"csv/<path as written>"``.

    Args:
        path: the CSV file.
        on_missing: what to do with rows whose file is absent (``"skip"`` logs a warning).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"CSV manifest {path} not found")
    base = path.resolve().parent
    rows: list[VideoRow] = []
    absent: list[str] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        if not set(CSV_REQUIRED) <= set(columns):
            raise DatasetLayoutError(
                f"{path} must start with a header containing 'path,label' "
                f"(optional: {', '.join(CSV_OPTIONAL)}), got {columns}"
            )
        unknown = sorted(set(columns) - set(CSV_REQUIRED) - set(CSV_OPTIONAL))
        if unknown:
            raise DatasetLayoutError(
                f"{path}: unknown column(s) {unknown}; allowed: {CSV_REQUIRED + CSV_OPTIONAL}"
            )
        reader.fieldnames = columns
        for number, record in enumerate(reader, 2):
            where = f"{path}:{number}"
            written = (record.get("path") or "").strip()
            if not written:
                raise DatasetLayoutError(f"{where}: empty path")
            label = parse_label(record.get("label") or "", where)
            media = Path(written).expanduser()
            media = media if media.is_absolute() else base / media
            if not media.exists():
                absent.append(written)
                continue
            manipulation = (record.get("manipulation") or "").strip() or (
                ORIGINAL if label == 0 else UNSPECIFIED
            )
            split = split_name(record.get("split"), where, "unspecified")
            video_id = (record.get("video_id") or "").strip() or f"csv/{PurePosixPath(written)}"
            kind = "face_sequence" if media.is_dir() or is_archive(media) else "video"
            rows.append(VideoRow(video_id, str(media), label, manipulation, split, kind))
    report_missing(absent, str(path), on_missing)
    if not rows:
        raise DatasetLayoutError(f"{path} lists no media; add rows 'path,label'")
    return rows
