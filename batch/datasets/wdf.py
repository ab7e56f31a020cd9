"""WildDeepfake (paper 4.1): split folders of face archives, one row per face sequence."""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path
from typing import Literal

from batch.datasets.face_sequences import (
    archive_sequences,
    archive_stem,
    folder_sequences,
    is_archive,
    natural_key,
)
from batch.datasets.layout import WDF_FOLDERS, check_root, layout_error
from batch.datasets.rows import ORIGINAL, VideoRow
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

#: WildDeepfake's fakes come from the web; their method is unknown.
WDF_MANIPULATION = "wild"


def read_wdf(root: Path, *, unit: Literal["sequence", "archive"] = "sequence") -> list[VideoRow]:
    """WildDeepfake: ``real_train/``, ``real_test/``, ``fake_train/``, ``fake_test/``.

    Each split folder holds one ``<n>.tar.gz`` per source video (or the same extracted as a folder
    ``<n>/``). Following the dataset's README, each archive holds several folders of face images,
    one folder per face sequence, images named by their frame number. Images directly at the top of
    an archive/folder form one sequence too, so both conventions are read.

    Args:
        root: the ``deepfake_in_the_wild`` folder.
        unit: ``"sequence"`` (default) gives one row per face sequence: the unit of the dataset's
            own counts (3,805 real and 3,509 fake sequences, which are the paper's "3800 real and
            3500 fake videos"). Listing the sequences reads every archive once (gzip cannot be
            listed without decompressing). ``"archive"`` gives one row per archive, listing only
            file names. An archive that cannot be listed becomes one archive row (logged), so its
            failure is reported by the evaluation run instead of being lost here.
    """
    root = check_root(root, "wdf")
    if unit not in ("sequence", "archive"):
        raise ConfigError(f"WildDeepfake unit {unit!r} is not 'sequence' or 'archive'")
    split_folders = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name in WDF_FOLDERS]
    if not split_folders:
        raise layout_error(
            root, "wdf", "real_train/, real_test/, fake_train/, fake_test/ of <n>.tar.gz archives"
        )
    rows: list[VideoRow] = []
    for folder in split_folders:
        label, split = WDF_FOLDERS[folder.name]
        tag = folder.name.replace(" ", "_")
        manipulation = ORIGINAL if label == 0 else WDF_MANIPULATION
        for item in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
            if item.name.startswith("."):  # macOS "._0.tar.gz" forks, ".DS_Store"
                continue
            if is_archive(item):
                video = archive_stem(item)
            elif item.is_dir():
                video = item.name
            else:
                continue
            base_id = f"wdf/{tag}/{video}"
            sequences: list[str | None] = [None]
            if unit == "sequence":
                try:
                    found = archive_sequences(item) if item.is_file() else folder_sequences(item)
                except (tarfile.TarError, OSError, EOFError) as exc:
                    log.warning("cannot list %s (%s); keeping it as one archive row", item, exc)
                    found = None
                if found is not None:
                    if not found:
                        log.warning("no face images in %s; skipped", item)
                    sequences = list(found)
            for sequence in sequences:
                video_id = base_id if not sequence else f"{base_id}/{sequence}"
                rows.append(
                    VideoRow(
                        video_id, str(item), label, manipulation, split, "face_sequence", sequence
                    )
                )
    if not rows:
        raise layout_error(root, "wdf", "<n>.tar.gz archives or <n>/ folders in the split folders")
    return rows
