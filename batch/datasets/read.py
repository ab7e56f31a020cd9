"""The entry point: a dataset's name and folder -> its rows, checked and sorted by ``video_id``."""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batch.datasets.celebdf import read_celebdf
from batch.datasets.csv_manifest import read_csv_manifest
from batch.datasets.dfdc import read_dfdc
from batch.datasets.ffpp import read_ffpp
from batch.datasets.layout import PRETTY
from batch.datasets.rows import SPLITS, DatasetName, VideoRow
from batch.datasets.wdf import read_wdf
from pipeline.errors import ConfigError, DatasetLayoutError

_READERS: dict[str, Callable[..., list[VideoRow]]] = {
    "ffpp": read_ffpp,
    "celebdf": read_celebdf,
    "wdf": read_wdf,
    "dfdc": read_dfdc,
    "csv": read_csv_manifest,
}


def read_dataset(
    name: DatasetName, root: Path, *, split: str | None = None, **opts: Any
) -> list[VideoRow]:
    """Rows of dataset ``name`` found at ``root``, sorted by ``video_id``.

    Args:
        name: ``"ffpp"``, ``"celebdf"``, ``"wdf"``, ``"dfdc"`` or ``"csv"`` (``root`` = the CSV).
        root: the dataset's folder as the official download unpacks it.
        split: keep only rows of this split (``"train"``, ``"val"``, ``"test"``, ``"unspecified"``).
        **opts: reader options, see :func:`read_ffpp` (compression, manipulations, splits_dir),
            :func:`read_celebdf` (test_list, on_missing), :func:`read_wdf` (unit),
            :func:`read_dfdc` (on_missing), :func:`read_csv_manifest` (on_missing).

    Raises:
        ConfigError: unknown dataset, option or split name.
        DatasetLayoutError: ``root`` does not have the layout; ids collide; the split is absent.
        MissingFileError: ``root`` does not exist.
    """
    reader = _READERS.get(name)
    if reader is None:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {sorted(_READERS)}")
    if split is not None and split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {SPLITS}")
    accepted = [p for p in inspect.signature(reader).parameters if p not in ("root", "path")]
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        raise ConfigError(f"{PRETTY[name]} reader has no option(s) {unknown}; options: {accepted}")
    rows = sorted(reader(Path(root), **opts), key=lambda r: r.video_id)
    duplicates = [vid for vid, n in Counter(r.video_id for r in rows).items() if n > 1]
    if duplicates:
        raise DatasetLayoutError(
            f"{PRETTY[name]} at {root}: video ids are not unique ({duplicates[:3]}); "
            "two files map to the same id"
        )
    if split is None:
        return rows
    selected = [r for r in rows if r.split == split]
    if not selected:
        counts = dict(Counter(r.split for r in rows))
        raise DatasetLayoutError(
            f"{PRETTY[name]} at {root} has no {split!r} rows (splits found: {counts}); "
            "check that the official split files are present"
        )
    return selected
