"""Celeb-DF-v2 (paper 4.1): its three video folders and its official test list."""

from __future__ import annotations

from pathlib import Path

from batch.datasets.layout import check_root, layout_error, mp4s, report_missing
from batch.datasets.rows import ORIGINAL, OnMissing, VideoRow
from pipeline.errors import DatasetLayoutError, MissingFileError

CELEBDF_FOLDERS: dict[str, int] = {"Celeb-real": 0, "YouTube-real": 0, "Celeb-synthesis": 1}
CELEBDF_TEST_LIST = "List_of_testing_videos.txt"


def parse_celebdf_test_list(path: Path) -> dict[str, int]:
    """Read Celeb-DF-v2's ``List_of_testing_videos.txt``.

    Lines look like ``1 YouTube-real/00170.mp4``. In that file **1 means real and 0 means fake**,
    the inverse of this project's labels, so the values returned are flipped.

    Returns:
        relative path (as written, POSIX) -> label with 1 = fake, 0 = real.

    Raises:
        DatasetLayoutError: a line is not ``<0|1> <folder>/<name>.mp4``.
    """
    labels: dict[str, int] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in ("0", "1") or "/" not in parts[1]:
            raise DatasetLayoutError(
                f"{path}:{number}: expected '<1 real|0 fake> <folder>/<video>.mp4', got {line!r}"
            )
        labels[parts[1]] = 1 - int(parts[0])  # the list's 1 = real; ours 1 = fake
    return labels


def read_celebdf(
    root: Path, *, test_list: Path | None = None, on_missing: OnMissing = "error"
) -> list[VideoRow]:
    """Celeb-DF-v2: ``Celeb-real/``, ``YouTube-real/`` (real), ``Celeb-synthesis/`` (fake).

    Videos named in ``List_of_testing_videos.txt`` (at ``root`` unless ``test_list`` is given) are
    ``"test"``, all others ``"train"``; without the list every split is ``"unspecified"``. A listed
    label that disagrees with the video's folder raises, as that means the list was misread.

    Args:
        root: the ``Celeb-DF-v2`` folder.
        test_list: path of the official test list.
        on_missing: what to do with listed videos absent on disk (``"skip"`` logs a warning).
    """
    root = check_root(root, "celebdf")
    by_lower = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    folders = {name: by_lower[name.lower()] for name in CELEBDF_FOLDERS if name.lower() in by_lower}
    if "Celeb-synthesis" not in folders or not folders.keys() & {"Celeb-real", "YouTube-real"}:
        raise layout_error(
            root, "celebdf", "Celeb-real/*.mp4, YouTube-real/*.mp4 and Celeb-synthesis/*.mp4"
        )

    list_path = Path(test_list) if test_list is not None else root / CELEBDF_TEST_LIST
    if test_list is not None and not list_path.is_file():
        raise MissingFileError(f"Celeb-DF test list {list_path} not found")
    listed = parse_celebdf_test_list(list_path) if list_path.is_file() else None
    # The list writes "YouTube-real"; some copies spell the folder "Youtube-real".
    listed_lower = {k.lower(): (k, v) for k, v in (listed or {}).items()}

    rows: list[VideoRow] = []
    seen: set[str] = set()
    for name, folder in folders.items():
        label = CELEBDF_FOLDERS[name]
        for path in mp4s(folder):
            relative = f"{name}/{path.name}"
            split = "unspecified"
            if listed is not None:
                entry = listed_lower.get(relative.lower())
                split = "train" if entry is None else "test"
                if entry is not None:
                    seen.add(entry[0])
                    if entry[1] != label:
                        raise DatasetLayoutError(
                            f"{list_path} marks {relative} as {'fake' if entry[1] else 'real'} but "
                            f"it lies in {name}/; the official list uses 1 = real, 0 = fake"
                        )
            manipulation = ORIGINAL if label == 0 else name
            rows.append(
                VideoRow(
                    f"celebdf/{name}/{path.stem}", str(path), label, manipulation, split, "video"
                )
            )
    if listed is not None:
        report_missing(sorted(set(listed) - seen), str(list_path), on_missing)
    if not rows:
        raise layout_error(root, "celebdf", "*.mp4 in Celeb-real/, YouTube-real/, Celeb-synthesis/")
    return rows
