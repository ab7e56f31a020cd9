"""What the official layouts look like, and what a reader says when a folder does not.

A folder that does not look like the official layout raises :class:`DatasetLayoutError` naming
what was expected and where the reader looked; when the folder looks like another dataset's
layout, the message says which one (:func:`guess_dataset`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from batch.datasets.rows import SPLITS, OnMissing
from pipeline.errors import DatasetLayoutError, MissingFileError

log = logging.getLogger(__name__)

#: How messages name each dataset.
PRETTY: dict[str, str] = {
    "ffpp": "FaceForensics++",
    "celebdf": "Celeb-DF-v2",
    "wdf": "WildDeepfake",
    "dfdc": "DFDC",
    "csv": "CSV manifest",
}
#: WildDeepfake's split folder -> (label, split). The README's tree writes the names with a space.
WDF_FOLDERS: dict[str, tuple[int, str]] = {
    "real_train": (0, "train"),
    "real_test": (0, "test"),
    "fake_train": (1, "train"),
    "fake_test": (1, "test"),
    "real train": (0, "train"),
    "real test": (0, "test"),
    "fake train": (1, "train"),
    "fake test": (1, "test"),
}


def check_root(root: Path, dataset: str) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise MissingFileError(f"{dataset} root {root} does not exist; pass the dataset's folder")
    if not root.is_dir():
        raise DatasetLayoutError(f"{dataset} root {root} is a file; pass the dataset's folder")
    return root.resolve()


def guess_dataset(root: Path) -> str | None:
    """Which official layout ``root`` looks like, by its marker folders (None if none)."""
    names = {p.name.lower() for p in root.iterdir()} if root.is_dir() else set()
    if names & {"original_sequences", "manipulated_sequences"}:
        return "ffpp"
    if names & {"celeb-synthesis", "celeb-real"}:
        return "celebdf"
    if names & set(WDF_FOLDERS):
        return "wdf"
    if "metadata.json" in names or any(n.startswith("dfdc_train_part") for n in names):
        return "dfdc"
    return None


def layout_error(root: Path, dataset: str, expected: str) -> DatasetLayoutError:
    found = sorted(p.name for p in root.iterdir())[:8] if root.is_dir() else []
    guess = guess_dataset(root)
    hint = (
        f"; this looks like a {PRETTY[guess]} root: use read_dataset({guess!r}, ...)"
        if guess is not None and guess != dataset
        else ""
    )
    return DatasetLayoutError(
        f"{PRETTY[dataset]} layout not found: expected {expected} under {root}, "
        f"found {found or 'nothing'}{hint}"
    )


def report_missing(paths: Sequence[str], where: str, on_missing: OnMissing) -> None:
    """Apply the ``on_missing`` policy to files an official list names but the disk lacks."""
    if not paths:
        return
    shown = ", ".join(paths[:3]) + (" ..." if len(paths) > 3 else "")
    if on_missing == "error":
        raise DatasetLayoutError(
            f"{len(paths)} file(s) listed in {where} are missing on disk ({shown}); "
            "complete the download or pass on_missing='skip'"
        )
    log.warning(
        "skipping %d file(s) listed in %s but missing on disk: %s", len(paths), where, shown
    )


def parse_label(raw: str, where: str) -> int:
    """``0/1``, ``real/fake`` (any case) -> 0/1 with 1 = fake."""
    value = raw.strip().lower()
    if value in ("1", "fake"):
        return 1
    if value in ("0", "real"):
        return 0
    raise DatasetLayoutError(f"{where}: label {raw!r} is not one of 0, 1, real, fake")


def split_name(raw: object, where: str, default: str) -> str:
    """A split name from a label file (``"validation"`` is accepted for ``"val"``)."""
    value = str(raw or default).strip().lower()
    value = {"validation": "val"}.get(value, value)
    if value not in SPLITS:
        raise DatasetLayoutError(f"{where}: split {raw!r} is not one of train, val, test")
    return value


def mp4s(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.mp4") if p.is_file()) if folder.is_dir() else []
