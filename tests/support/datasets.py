"""Builders of small datasets in each benchmark's official layout, from the real media of
``../shared/data``, inside a test's ``tmp_path`` (symlinks to the shared files, never copies into
the repository).
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

#: FF++ c23 files of shared/data/deepfake, by their path in the official layout.
FFPP_FILES: dict[str, str] = {
    "original_sequences/youtube/c23/videos/004.mp4": "deepfake/ffpp_c23_004.mp4",
    "original_sequences/youtube/c23/videos/519.mp4": "deepfake/ffpp_c23_519.mp4",
    "original_sequences/youtube/c23/videos/634.mp4": "deepfake/ffpp_c23_634.mp4",
    "manipulated_sequences/NeuralTextures/c23/videos/004_982.mp4": "deepfake/ffpp_c23_004_982.mp4",
    "manipulated_sequences/Deepfakes/c23/videos/519_515.mp4": "deepfake/ffpp_c23_519_515.mp4",
    "manipulated_sequences/FaceSwap/c23/videos/634_660.mp4": "deepfake/ffpp_c23_634_660.mp4",
}
#: Official-format split lists for the fixture: one pair per split, the test pair written in the
#: reverse order ("660", "634") to exercise pair matching both ways.
FFPP_SPLITS: dict[str, list[list[str]]] = {
    "train": [["004", "982"], ["100", "200"]],
    "val": [["519", "515"]],
    "test": [["660", "634"]],
}
#: DeepFakeDetection names: "<actor>_<actor>__<scene>__<code>" for fakes, "<actor>__<scene>" reals.
DFD_FAKE = (
    "manipulated_sequences/DeepFakeDetection/c23/videos/01_02__walk_down_hall_angry__YVGY8LOK.mp4"
)
DFD_REAL = "original_sequences/actors/c23/videos/01__walk_down_hall_angry.mp4"


def link(source: Path, destination: Path) -> Path:
    """Symlink ``destination`` -> ``source``, creating parent folders."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.symlink_to(source)
    return destination


def build_ffpp(
    root: Path,
    shared_data: Path,
    *,
    splits: Mapping[str, list[list[str]]] | None = FFPP_SPLITS,
    splits_at: str = "splits",
    with_dfd: bool = False,
) -> Path:
    """FF++ c23 layout with 3 originals and their NeuralTextures/Deepfakes/FaceSwap fakes.

    ``splits_at`` is the folder (relative to ``root``, ``""`` = root) that gets the split JSON
    files; ``splits=None`` writes none.
    """
    for relative, source in FFPP_FILES.items():
        link(shared_data / source, root / relative)
    if with_dfd:
        link(shared_data / "deepfake/ffpp_c23_519_515.mp4", root / DFD_FAKE)
        link(shared_data / "deepfake/ffpp_c23_519.mp4", root / DFD_REAL)
    if splits is not None:
        folder = root / splits_at
        folder.mkdir(parents=True, exist_ok=True)
        for split, pairs in splits.items():
            (folder / f"{split}.json").write_text(json.dumps(pairs), encoding="utf-8")
    return root


#: Celeb-DF-v2 fixture: official relative path -> shared file.
CELEBDF_FILES: dict[str, str] = {
    "Celeb-real/id0_0000.mp4": "deepfake/ffpp_c23_004.mp4",
    "Celeb-real/id1_0001.mp4": "deepfake/ffpp_c23_519.mp4",
    "YouTube-real/00170.mp4": "deepfake/ffpp_c23_634.mp4",
    "Celeb-synthesis/id0_id1_0000.mp4": "deepfake/ffpp_c23_004_982.mp4",
    "Celeb-synthesis/id1_id0_0001.mp4": "deepfake/ffpp_c23_519_515.mp4",
}
#: The official list's convention: 1 = REAL, 0 = fake.
CELEBDF_TEST_LINES: tuple[str, ...] = (
    "1 YouTube-real/00170.mp4",
    "0 Celeb-synthesis/id0_id1_0000.mp4",
    "1 Celeb-real/id0_0000.mp4",
)


def build_celebdf(
    root: Path, shared_data: Path, *, test_lines: Sequence[str] | None = CELEBDF_TEST_LINES
) -> Path:
    """Celeb-DF-v2 layout (2 Celeb-real, 1 YouTube-real, 2 Celeb-synthesis) and its test list."""
    for relative, source in CELEBDF_FILES.items():
        link(shared_data / source, root / relative)
    if test_lines is not None:
        (root / "List_of_testing_videos.txt").write_text("\n".join(test_lines) + "\n")
    return root


def shared_dfdc_videos(shared_data: Path) -> dict[str, str]:
    """DFDC video clips of shared/data and their labels, read from ``deepfake/labels.csv``.

    Returns:
        file name in shared/data/deepfake -> "REAL" or "FAKE".
    """
    with (shared_data / "deepfake" / "labels.csv").open(newline="", encoding="utf-8") as handle:
        return {
            row["file_in_folder"]: row["label_for_detector"]
            for row in csv.DictReader(handle)
            if row["dataset"].startswith("DFDC") and row["kind"] == "video"
        }


def build_dfdc(root: Path, shared_data: Path, *, with_test: bool = True) -> dict[str, str]:
    """DFDC layout: ``dfdc_train_part_10/`` with ``metadata.json``, and (``with_test``) a test set
    whose ``labels.csv`` (1 = fake) and videos lie at ``root``.

    Returns:
        expected ``video_id`` -> "REAL"/"FAKE".
    """
    expected: dict[str, str] = {}
    part = root / "dfdc_train_part_10"
    metadata: dict[str, dict[str, str]] = {}
    test_rows: list[tuple[str, int]] = []
    for shared_name, label in sorted(shared_dfdc_videos(shared_data).items()):
        name = shared_name.removeprefix("dfdc_")
        link(shared_data / "deepfake" / shared_name, part / name)
        entry = {"label": label, "split": "train"}
        if label == "FAKE":
            entry["original"] = "wdpsifpppf.mp4"
        metadata[name] = entry
        expected[f"dfdc/dfdc_train_part_10/{Path(name).stem}"] = label
        if with_test:
            test_name = f"test{len(test_rows)}{name}"
            link(shared_data / "deepfake" / shared_name, root / test_name)
            test_rows.append((test_name, 1 if label == "FAKE" else 0))
            expected[f"dfdc/test/{Path(test_name).stem}"] = label
    (part / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    if with_test:
        lines = ["filename,label", *(f"{name},{label}" for name, label in test_rows)]
        (root / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return expected


# ----------------------------------------------------------------------------------------------
# WildDeepfake

#: Pre-cropped DFDC faces of shared/data (face crops, like WDF's), by label.
WDF_SOURCE_CROPS: dict[int, tuple[str, ...]] = {
    0: ("deepfake/dfdc_crop_abarnvbtwb-000-00.png", "deepfake/dfdc_crop_abarnvbtwb-009-00.png"),
    1: ("deepfake/dfdc_crop_aapnvogymq-004-01.png", "deepfake/dfdc_crop_abqwwspghj-001-00.png"),
}


def face_frames(shared_data: Path, source: str, n: int, size: int = 64) -> list[np.ndarray]:
    """``n`` ``(size, size, 3)`` uint8 crops of a face image, each window shifted one pixel
    further right and down, like a face track drifting across frames (plain numpy slicing)."""
    image = np.asarray(Image.open(shared_data / source).convert("RGB"))
    assert image.shape[0] >= size + n and image.shape[1] >= size + n, image.shape
    return [image[i : i + size, i : i + size].copy() for i in range(n)]


def png_bytes(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tar(path: Path, members: Sequence[tuple[str, bytes]]) -> Path:
    """A tar.gz archive with the given (name, data) members, in the given (archive) order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@dataclass
class WdfFixture:
    """What :func:`build_wdf` wrote: ``sequences[(item path, sequence folder)]`` lists the frames
    of each face sequence in frame-number order; ``video_ids`` maps the expected row ids to
    those keys."""

    root: Path
    sequences: dict[tuple[str, str], list[np.ndarray]] = field(default_factory=dict)
    video_ids: dict[str, tuple[str, str]] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)


def build_wdf(root: Path, shared_data: Path) -> WdfFixture:
    """WildDeepfake layout with the three archive conventions the reader supports.

    * ``real_test/0.tar.gz``: ``0/<seq>/<frame>.png`` (a top folder named after the archive),
      two sequences, members written out of frame order (frames 10, 2, 1).
    * ``fake_test/3.tar.gz``: ``<seq>/<frame>.png`` (no top folder), two sequences.
    * ``fake_train/5.tar.gz``: ``<frame>.png`` at the top (one sequence) plus a macOS ``._`` file.
    * ``real_train/7/``: an extracted archive, ``7/<seq>/<frame>.png``.
    """
    fixture = WdfFixture(root=root)
    frame_numbers = (1, 2, 10)  # natural order; archive order below is 10, 2, 1

    def sequence(
        item: Path, folder: str, video_id: str, label: int, source: str
    ) -> list[tuple[str, bytes]]:
        frames = face_frames(shared_data, source, len(frame_numbers))
        fixture.sequences[(str(item), folder)] = frames
        fixture.video_ids[video_id] = (str(item), folder)
        fixture.labels[video_id] = label
        prefix = f"{folder}/" if folder else ""
        return [
            (f"{prefix}{number}.png", png_bytes(frame))
            for number, frame in reversed(list(zip(frame_numbers, frames, strict=True)))
        ]

    real, fake = WDF_SOURCE_CROPS[0], WDF_SOURCE_CROPS[1]
    item = root / "real_test" / "0.tar.gz"
    members = sequence(item, "0/2", "wdf/real_test/0/0/2", 0, real[0])
    members += sequence(item, "0/10", "wdf/real_test/0/0/10", 0, real[1])
    write_tar(item, members)

    item = root / "fake_test" / "3.tar.gz"
    members = sequence(item, "1", "wdf/fake_test/3/1", 1, fake[0])
    members += sequence(item, "0", "wdf/fake_test/3/0", 1, fake[1])
    write_tar(item, members)

    item = root / "fake_train" / "5.tar.gz"
    members = sequence(item, "", "wdf/fake_train/5", 1, fake[1])
    write_tar(item, [*members, ("._1.png", b"\x00\x05\x16\x07 not an image")])

    item = root / "real_train" / "7"
    for name, data in sequence(item, "a", "wdf/real_train/7/a", 0, real[0]):
        (item / name).parent.mkdir(parents=True, exist_ok=True)
        (item / name).write_bytes(data)
    return fixture
