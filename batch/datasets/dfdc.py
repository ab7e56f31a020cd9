"""DFDC (the training data of models 1-4, paper 3.2.2): ``metadata.json`` parts and the test
set's ``labels.csv``."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path

from batch.datasets.layout import check_root, layout_error, parse_label, report_missing, split_name
from batch.datasets.rows import ORIGINAL, UNSPECIFIED, OnMissing, VideoRow
from pipeline.errors import DatasetLayoutError


def read_dfdc(root: Path, *, on_missing: OnMissing = "error") -> list[VideoRow]:
    """DFDC: folders of videos with a ``metadata.json``, and the test set's ``labels.csv``.

    ``metadata.json`` (at ``root`` or in a direct subfolder such as ``dfdc_train_part_0/``) maps
    ``"name.mp4"`` to ``{"label": "FAKE"|"REAL", "split": "train", "original": ...}``; its videos
    lie next to it. ``labels.csv`` (``filename,label`` with 1 = fake, at ``root`` or in a direct
    subfolder) lists test videos lying next to it; they get split ``"test"``. DFDC does not name
    the method of each fake: fakes get manipulation ``"unspecified"``.

    Args:
        root: folder holding the DFDC parts (or one part).
        on_missing: what to do with listed videos absent on disk (``"skip"`` logs a warning).
    """
    root = check_root(root, "dfdc")
    folders = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    rows: list[VideoRow] = []
    found_any = False
    for folder in folders:
        prefix = "dfdc" if folder == root else f"dfdc/{folder.name}"
        metadata = folder / "metadata.json"
        if metadata.is_file():
            found_any = True
            rows.extend(_read_dfdc_metadata(metadata, prefix, on_missing))
        labels = folder / "labels.csv"
        if labels.is_file():
            found_any = True
            test_prefix = "dfdc/test" if folder == root else prefix
            rows.extend(_read_dfdc_labels(labels, test_prefix, on_missing))
    if not found_any:
        raise layout_error(
            root, "dfdc", "metadata.json or labels.csv at the root or in dfdc_train_part_*/ folders"
        )
    return rows


def _read_dfdc_metadata(path: Path, prefix: str, on_missing: OnMissing) -> list[VideoRow]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetLayoutError(f"{path} is not valid JSON ({exc}); re-extract it") from exc
    if not isinstance(entries, dict):
        raise DatasetLayoutError(f'{path} must map "name.mp4" to {{"label": ...}}')
    rows: list[VideoRow] = []
    absent: list[str] = []
    for name, info in sorted(entries.items()):
        label_raw = info.get("label") if isinstance(info, Mapping) else None
        if label_raw not in ("REAL", "FAKE"):
            raise DatasetLayoutError(f"{path}: {name!r} has label {label_raw!r}, not REAL/FAKE")
        video = path.parent / name
        if not video.is_file():
            absent.append(name)
            continue
        label = 1 if label_raw == "FAKE" else 0
        split = split_name(info.get("split"), f"{path}: {name}", "train")
        rows.append(
            VideoRow(
                f"{prefix}/{Path(name).stem}",
                str(video),
                label,
                ORIGINAL if label == 0 else UNSPECIFIED,
                split,
                "video",
            )
        )
    report_missing(absent, str(path), on_missing)
    return rows


def _read_dfdc_labels(path: Path, prefix: str, on_missing: OnMissing) -> list[VideoRow]:
    rows: list[VideoRow] = []
    absent: list[str] = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"filename", "label"} <= set(reader.fieldnames):
            raise DatasetLayoutError(f"{path} must have the header 'filename,label'")
        for number, record in enumerate(reader, 2):
            name = (record["filename"] or "").strip()
            label = parse_label(record["label"] or "", f"{path}:{number}")
            video = path.parent / name
            if not video.is_file():
                absent.append(name)
                continue
            manipulation = ORIGINAL if label == 0 else UNSPECIFIED
            rows.append(
                VideoRow(
                    f"{prefix}/{Path(name).stem}", str(video), label, manipulation, "test", "video"
                )
            )
    report_missing(absent, str(path), on_missing)
    return rows
