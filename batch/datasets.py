"""Dataset readers: each benchmark's official folder layout -> rows of :class:`VideoRow`.

One reader per dataset of paper section 4.1 (FaceForensics++, Celeb-DF-v2, WildDeepfake) plus DFDC
(the training data of models 1-4, paper 3.2.2) and a plain CSV manifest for anything else. Readers
only list files and parse the official label/split files; they never decode media. Rows are sorted
by ``video_id`` so two runs over the same folder give the same list in the same order (evaluation
runs are resumable by ``video_id``).

A folder that does not look like the official layout raises :class:`DatasetLayoutError` naming
what was expected and where the reader looked; when the folder looks like another dataset's
layout, the message says which one.

WildDeepfake ships face sequences, not videos: :func:`iter_face_sequence` streams the RGB face crops
of one row out of its ``.tar.gz`` archive (or extracted folder) without extracting to disk.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import logging
import re
import tarfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.errors import (
    ConfigError,
    CorruptMediaError,
    DatasetLayoutError,
    EmptyMediaError,
    MissingFileError,
)

log = logging.getLogger(__name__)

DatasetName = Literal["ffpp", "celebdf", "wdf", "dfdc", "csv"]
SplitName = Literal["train", "val", "test", "unspecified"]
RowKind = Literal["video", "face_sequence"]
OnMissing = Literal["error", "skip"]

SPLITS: tuple[str, ...] = ("train", "val", "test", "unspecified")
KINDS: tuple[str, ...] = ("video", "face_sequence")
#: ``manipulation`` of every real row.
ORIGINAL = "original"
#: ``manipulation`` of a fake row whose method the dataset does not name (DFDC, CSV without column).
UNSPECIFIED = "unspecified"

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


@dataclass(frozen=True, slots=True)
class VideoRow:
    """One item of an evaluation dataset.

    Attributes:
        video_id: unique within a dataset and stable across runs and machines (built from paths
            relative to the dataset root), e.g. ``"ffpp/Deepfakes/c23/519_515"``.
        path: absolute path of the media file, or of the WildDeepfake archive/folder.
        label: 1 = fake, 0 = real.
        manipulation: ``"original"`` for real rows; the method's name for fakes (FF++ folder name,
            ``"Celeb-synthesis"``, ``"wild"`` for WildDeepfake, ``"unspecified"`` when unknown).
        split: ``"train"``, ``"val"``, ``"test"`` or ``"unspecified"`` (no official split found).
        kind: ``"video"`` (a media file the pipeline decodes) or ``"face_sequence"`` (pre-cropped
            faces, read with :func:`iter_face_sequence`).
        sequence: for face sequences, the folder inside the archive (or below ``path``) that holds
            this sequence's images, POSIX-style (``""`` = the top level); ``None`` = all images.
    """

    video_id: str
    path: str
    label: int
    manipulation: str
    split: str
    kind: str
    sequence: str | None = None

    def __post_init__(self) -> None:
        if self.label not in (0, 1):
            raise ValueError(f"VideoRow.label must be 0 (real) or 1 (fake), got {self.label!r}")
        if self.split not in SPLITS:
            raise ValueError(f"VideoRow.split must be one of {SPLITS}, got {self.split!r}")
        if self.kind not in KINDS:
            raise ValueError(f"VideoRow.kind must be one of {KINDS}, got {self.kind!r}")


# ----------------------------------------------------------------------------------------------
# Shared helpers


def _natural_key(text: str) -> tuple[Any, ...]:
    """Sort key where ``"frame_9" < "frame_10"``: WDF images are named by frame number."""
    # re.split with a capture group alternates str, int, str, ... so positions compare like types.
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", text)))


def _check_root(root: Path, dataset: str) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise MissingFileError(f"{dataset} root {root} does not exist; pass the dataset's folder")
    if not root.is_dir():
        raise DatasetLayoutError(f"{dataset} root {root} is a file; pass the dataset's folder")
    return root.resolve()


def _guess_dataset(root: Path) -> str | None:
    """Which official layout ``root`` looks like, by its marker folders (None if none)."""
    names = {p.name.lower() for p in root.iterdir()} if root.is_dir() else set()
    if names & {"original_sequences", "manipulated_sequences"}:
        return "ffpp"
    if names & {"celeb-synthesis", "celeb-real"}:
        return "celebdf"
    if names & set(_WDF_FOLDERS):
        return "wdf"
    if "metadata.json" in names or any(n.startswith("dfdc_train_part") for n in names):
        return "dfdc"
    return None


def _layout_error(root: Path, dataset: str, expected: str) -> DatasetLayoutError:
    found = sorted(p.name for p in root.iterdir())[:8] if root.is_dir() else []
    guess = _guess_dataset(root)
    hint = (
        f"; this looks like a {_PRETTY[guess]} root: use read_dataset({guess!r}, ...)"
        if guess is not None and guess != dataset
        else ""
    )
    return DatasetLayoutError(
        f"{_PRETTY[dataset]} layout not found: expected {expected} under {root}, "
        f"found {found or 'nothing'}{hint}"
    )


def _missing(paths: Sequence[str], where: str, on_missing: OnMissing) -> None:
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


def _parse_label(raw: str, where: str) -> int:
    """``0/1``, ``real/fake`` (any case) -> 0/1 with 1 = fake."""
    value = raw.strip().lower()
    if value in ("1", "fake"):
        return 1
    if value in ("0", "real"):
        return 0
    raise DatasetLayoutError(f"{where}: label {raw!r} is not one of 0, 1, real, fake")


def _mp4s(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.mp4") if p.is_file()) if folder.is_dir() else []


# ----------------------------------------------------------------------------------------------
# FaceForensics++

FFPP_COMPRESSIONS: tuple[str, ...] = ("raw", "c23", "c40")
#: The four methods of paper Table 2; the default selection, so Table 1's "FF++" is reproduced.
FFPP_PAPER_MANIPULATIONS: tuple[str, ...] = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
FFPP_MANIPULATIONS: tuple[str, ...] = (
    *FFPP_PAPER_MANIPULATIONS,
    "FaceShifter",
    "DeepFakeDetection",
)
FFPP_SPLIT_FILES: dict[str, str] = {"train": "train.json", "val": "val.json", "test": "test.json"}
_FFPP_PAIR_NAME = re.compile(r"^(\d+)_(\d+)$")


def parse_ffpp_splits(splits_dir: Path) -> dict[tuple[str, ...], str]:
    """Read FF++'s official ``train.json``/``val.json``/``test.json`` from ``splits_dir``.

    Each file is a JSON list of pairs of youtube ids, e.g. ``[["953", "974"], ...]``.

    Returns:
        A map from ``(id,)`` (a real video) and from both ``(target, source)`` orders of each pair
        (a fake ``"953_974"`` or ``"974_953"``) to ``"train"``, ``"val"`` or ``"test"``. Files that
        are absent are skipped; an empty map means no split file was found.

    Raises:
        DatasetLayoutError: a file is not a list of pairs, or a video is listed in two splits.
    """
    mapping: dict[tuple[str, ...], str] = {}
    for split, filename in FFPP_SPLIT_FILES.items():
        path = Path(splits_dir) / filename
        if not path.is_file():
            continue
        try:
            pairs = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetLayoutError(f"{path} is not valid JSON ({exc}); re-download it") from exc
        if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
            for p in pairs
        ):
            raise DatasetLayoutError(
                f'{path} must be a JSON list of id pairs like [["953", "974"], ...]'
            )
        for a, b in pairs:
            for key in ((a,), (b,), (a, b), (b, a)):
                previous = mapping.setdefault(key, split)
                if previous != split:
                    raise DatasetLayoutError(
                        f"FF++ split files disagree: {'_'.join(key)} is in both {previous} and "
                        f"{split} (in {splits_dir})"
                    )
    return mapping


def _find_ffpp_splits(
    root: Path, splits_dir: Path | None
) -> tuple[dict[tuple[str, ...], str], str]:
    if splits_dir is not None:
        splits_dir = Path(splits_dir).expanduser()
        mapping = parse_ffpp_splits(splits_dir)
        if not mapping:
            raise DatasetLayoutError(
                f"no FF++ split file ({', '.join(FFPP_SPLIT_FILES.values())}) in {splits_dir}"
            )
        return mapping, str(splits_dir)
    for candidate in (root / "splits", root):
        mapping = parse_ffpp_splits(candidate)
        if mapping:
            return mapping, str(candidate)
    return {}, ""


def read_ffpp(
    root: Path,
    *,
    compression: str = "c23",
    manipulations: Sequence[str] | None = None,
    splits_dir: Path | None = None,
) -> list[VideoRow]:
    """FaceForensics++ from the layout its official download script writes.

    ``original_sequences/youtube/<compression>/videos/*.mp4`` are real (manipulation
    ``"original"``); ``manipulated_sequences/<method>/<compression>/videos/*.mp4`` are fake.
    DeepFakeDetection's own real videos (``original_sequences/actors/...``) are read only when
    ``"DeepFakeDetection"`` is selected.

    Splits come from the official ``train.json``/``val.json``/``test.json`` in ``splits_dir``, else
    in ``root/splits/`` or ``root``: a real ``"953"`` takes the split that lists it, a fake
    ``"953_974"`` (or ``"974_953"``) the split of its pair. Videos no split file names (all of
    DeepFakeDetection, whose names are not id pairs) get ``"unspecified"``, as do all videos when
    no split file is found.

    Args:
        root: the FF++ folder holding ``original_sequences`` and ``manipulated_sequences``.
        compression: ``"raw"`` (c0), ``"c23"`` or ``"c40"``.
        manipulations: methods to read; default the paper's four (``FFPP_PAPER_MANIPULATIONS``)
            that are present. Methods named explicitly must be present.
        splits_dir: folder of the official split JSON files.
    """
    root = _check_root(root, "ffpp")
    if compression == "c0":
        compression = "raw"
    if compression not in FFPP_COMPRESSIONS:
        raise ConfigError(f"FF++ compression {compression!r} is not one of {FFPP_COMPRESSIONS}")
    explicit = manipulations is not None
    selected = tuple(manipulations) if manipulations is not None else FFPP_PAPER_MANIPULATIONS
    unknown = [m for m in selected if m not in FFPP_MANIPULATIONS]
    if unknown:
        raise ConfigError(f"unknown FF++ manipulation(s) {unknown}; known: {FFPP_MANIPULATIONS}")

    expected = (
        f"original_sequences/youtube/{compression}/videos/*.mp4 and "
        f"manipulated_sequences/<method>/{compression}/videos/*.mp4"
    )
    if not (root / "original_sequences").is_dir() and not (root / "manipulated_sequences").is_dir():
        raise _layout_error(root, "ffpp", expected)

    split_of, splits_where = _find_ffpp_splits(root, splits_dir)
    rows: list[VideoRow] = []

    def add(path: Path, video_id: str, label: int, manipulation: str, split: str) -> None:
        rows.append(VideoRow(video_id, str(path), label, manipulation, split, "video"))

    for path in _mp4s(root / "original_sequences" / "youtube" / compression / "videos"):
        split = split_of.get((path.stem,), "unspecified")
        add(path, f"ffpp/original/{compression}/{path.stem}", 0, ORIGINAL, split)
    if "DeepFakeDetection" in selected:
        for path in _mp4s(root / "original_sequences" / "actors" / compression / "videos"):
            add(path, f"ffpp/actors/{compression}/{path.stem}", 0, ORIGINAL, "unspecified")

    missing: list[str] = []
    for method in selected:
        videos = _mp4s(root / "manipulated_sequences" / method / compression / "videos")
        if not videos:
            missing.append(method)
            continue
        for path in videos:
            match = _FFPP_PAIR_NAME.match(path.stem)
            # DeepFakeDetection names ("01_02__walk_down_hall_angry__YVGY8LOK") are not id pairs.
            split = split_of.get(match.groups(), "unspecified") if match else "unspecified"
            add(path, f"ffpp/{method}/{compression}/{path.stem}", 1, method, split)

    if explicit and missing:
        raise DatasetLayoutError(
            f"FF++ {missing} not found: expected manipulated_sequences/<method>/{compression}/"
            f"videos/*.mp4 under {root}"
        )
    if not rows or missing == list(selected):
        present = sorted({p.parent.name for p in root.glob("*_sequences/*/*/videos") if p.is_dir()})
        raise DatasetLayoutError(
            f"no FF++ {compression} videos of {list(selected)}: expected {expected} under {root}"
            + (f"; compressions present: {present}" if present else "")
        )
    if split_of:
        log.info("FF++ splits read from %s", splits_where)
    return rows


# ----------------------------------------------------------------------------------------------
# Celeb-DF-v2

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
    root = _check_root(root, "celebdf")
    by_lower = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    folders = {name: by_lower[name.lower()] for name in CELEBDF_FOLDERS if name.lower() in by_lower}
    if "Celeb-synthesis" not in folders or not folders.keys() & {"Celeb-real", "YouTube-real"}:
        raise _layout_error(
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
        for path in _mp4s(folder):
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
        _missing(sorted(set(listed) - seen), str(list_path), on_missing)
    if not rows:
        raise _layout_error(
            root, "celebdf", "*.mp4 in Celeb-real/, YouTube-real/, Celeb-synthesis/"
        )
    return rows


# ----------------------------------------------------------------------------------------------
# WildDeepfake

#: Split folder -> (label, split). The README's tree writes the names with a space.
_WDF_FOLDERS: dict[str, tuple[int, str]] = {
    "real_train": (0, "train"),
    "real_test": (0, "test"),
    "fake_train": (1, "train"),
    "fake_test": (1, "test"),
    "real train": (0, "train"),
    "real test": (0, "test"),
    "fake train": (1, "train"),
    "fake test": (1, "test"),
}
#: WildDeepfake's fakes come from the web; their method is unknown.
WDF_MANIPULATION = "wild"


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _archive_stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _is_image_name(name: str) -> bool:
    base = PurePosixPath(name).name
    # macOS tar adds "._name" resource forks next to every file; they are not images.
    return not base.startswith(".") and PurePosixPath(base).suffix.lower() in IMAGE_SUFFIXES


def _archive_sequences(path: Path) -> list[str]:
    """Folders inside a face archive that directly contain images (one face sequence each)."""
    with tarfile.open(path, mode="r|*") as archive:
        folders = {
            _member_folder(member.name)
            for member in archive
            if member.isfile() and _is_image_name(member.name)
        }
    return sorted(folders, key=_natural_key)


def _folder_sequences(path: Path) -> list[str]:
    folders = {
        p.parent.relative_to(path).as_posix() if p.parent != path else ""
        for p in path.rglob("*")
        if p.is_file() and _is_image_name(p.name)
    }
    return sorted(folders, key=_natural_key)


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
    root = _check_root(root, "wdf")
    if unit not in ("sequence", "archive"):
        raise ConfigError(f"WildDeepfake unit {unit!r} is not 'sequence' or 'archive'")
    split_folders = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name in _WDF_FOLDERS]
    if not split_folders:
        raise _layout_error(
            root, "wdf", "real_train/, real_test/, fake_train/, fake_test/ of <n>.tar.gz archives"
        )
    rows: list[VideoRow] = []
    for folder in split_folders:
        label, split = _WDF_FOLDERS[folder.name]
        tag = folder.name.replace(" ", "_")
        manipulation = ORIGINAL if label == 0 else WDF_MANIPULATION
        for item in sorted(folder.iterdir(), key=lambda p: _natural_key(p.name)):
            if item.name.startswith("."):  # macOS "._0.tar.gz" forks, ".DS_Store"
                continue
            if _is_archive(item):
                video = _archive_stem(item)
            elif item.is_dir():
                video = item.name
            else:
                continue
            base_id = f"wdf/{tag}/{video}"
            sequences: list[str | None] = [None]
            if unit == "sequence":
                try:
                    found = _archive_sequences(item) if item.is_file() else _folder_sequences(item)
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
        raise _layout_error(root, "wdf", "<n>.tar.gz archives or <n>/ folders in the split folders")
    return rows


def _decode_image(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise CorruptMediaError(f"cannot decode face image {where}: {exc}") from exc


def iter_face_sequence(
    source: VideoRow | Path | str, *, sequence: str | None = None
) -> Iterator[np.ndarray]:
    """Stream the face crops of one face sequence, in natural name (= frame number) order.

    Args:
        source: a ``face_sequence`` row (its ``path`` and ``sequence`` are used), or the path of a
            ``.tar.gz``/``.tgz``/``.tar`` archive or of a folder of images.
        sequence: folder inside the archive/below the folder to read (``""`` = top level only);
            ``None`` = every image, sorted by folder then name. Overrides the row's ``sequence``.

    Yields:
        ``(H, W, 3)`` uint8 RGB arrays, one per image, decoded one at a time.

    Memory: a folder is read image by image. An archive is read in one streaming pass when this is
    called (gzip cannot seek backwards cheaply, and archive order need not be name order), keeping
    only the *encoded* bytes of the selected sequence (face crops, a few MB), never the whole
    archive; frames are decoded one at a time as the iterator advances, and their bytes dropped.

    Raises:
        MissingFileError: the path does not exist (when called).
        CorruptMediaError: the archive (when called) or an image (when reached) cannot be read.
        EmptyMediaError: no image matches (when called).
    """
    if isinstance(source, VideoRow):
        path = Path(source.path)
        if sequence is None:
            sequence = source.sequence
    else:
        path = Path(source)
    if not path.exists():
        raise MissingFileError(f"face sequence {path} not found")
    wanted = None if sequence is None else sequence.strip("/")
    if path.is_dir():
        return _iter_folder(path, wanted)
    return _iter_archive(path, wanted)


def _iter_folder(path: Path, wanted: str | None) -> Iterator[np.ndarray]:
    base = path / wanted if wanted else path
    files = base.rglob("*") if wanted is None else base.glob("*")
    images = sorted(
        (p for p in files if p.is_file() and _is_image_name(p.name)),
        key=lambda p: _natural_key(p.relative_to(path).as_posix()),
    )
    if not images:
        raise EmptyMediaError(f"no face images in {base}")

    def generate() -> Iterator[np.ndarray]:
        for image in images:
            yield _decode_image(image.read_bytes(), str(image))

    return generate()


def _member_folder(name: str) -> str:
    parent = str(PurePosixPath(name.removeprefix("./")).parent)
    return "" if parent == "." else parent


def _iter_archive(path: Path, wanted: str | None) -> Iterator[np.ndarray]:
    encoded: list[tuple[str, bytes]] = []
    try:
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                if not (member.isfile() and _is_image_name(member.name)):
                    continue
                if wanted is not None and _member_folder(member.name) != wanted:
                    continue
                handle = archive.extractfile(member)
                assert handle is not None  # regular file members always have data
                encoded.append((member.name.removeprefix("./"), handle.read()))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise CorruptMediaError(f"cannot read face archive {path}: {exc}") from exc
    if not encoded:
        where = f"{path}" if wanted is None else f"{path} (sequence {wanted!r})"
        raise EmptyMediaError(f"no face images in {where}")
    # Reverse order so pop() hands out the next image and frees its bytes as the caller advances.
    encoded.sort(key=lambda item: _natural_key(item[0]), reverse=True)

    def generate() -> Iterator[np.ndarray]:
        while encoded:
            name, data = encoded.pop()
            yield _decode_image(data, f"{path}:{name}")

    return generate()


# ----------------------------------------------------------------------------------------------
# DFDC


def _split_name(raw: object, where: str, default: str) -> str:
    """A split name from a label file (``"validation"`` is accepted for ``"val"``)."""
    value = str(raw or default).strip().lower()
    value = {"validation": "val"}.get(value, value)
    if value not in SPLITS:
        raise DatasetLayoutError(f"{where}: split {raw!r} is not one of train, val, test")
    return value


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
    root = _check_root(root, "dfdc")
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
        raise _layout_error(
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
        split = _split_name(info.get("split"), f"{path}: {name}", "train")
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
    _missing(absent, str(path), on_missing)
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
            label = _parse_label(record["label"] or "", f"{path}:{number}")
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
    _missing(absent, str(path), on_missing)
    return rows


# ----------------------------------------------------------------------------------------------
# CSV manifest

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
            label = _parse_label(record.get("label") or "", where)
            media = Path(written).expanduser()
            media = media if media.is_absolute() else base / media
            if not media.exists():
                absent.append(written)
                continue
            manipulation = (record.get("manipulation") or "").strip() or (
                ORIGINAL if label == 0 else UNSPECIFIED
            )
            split = _split_name(record.get("split"), where, "unspecified")
            video_id = (record.get("video_id") or "").strip() or f"csv/{PurePosixPath(written)}"
            kind = "face_sequence" if media.is_dir() or _is_archive(media) else "video"
            rows.append(VideoRow(video_id, str(media), label, manipulation, split, kind))
    _missing(absent, str(path), on_missing)
    if not rows:
        raise DatasetLayoutError(f"{path} lists no media; add rows 'path,label'")
    return rows


# ----------------------------------------------------------------------------------------------
# Entry point

_PRETTY: dict[str, str] = {
    "ffpp": "FaceForensics++",
    "celebdf": "Celeb-DF-v2",
    "wdf": "WildDeepfake",
    "dfdc": "DFDC",
    "csv": "CSV manifest",
}
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
        raise ConfigError(f"{_PRETTY[name]} reader has no option(s) {unknown}; options: {accepted}")
    rows = sorted(reader(Path(root), **opts), key=lambda r: r.video_id)
    duplicates = [vid for vid, n in Counter(r.video_id for r in rows).items() if n > 1]
    if duplicates:
        raise DatasetLayoutError(
            f"{_PRETTY[name]} at {root}: video ids are not unique ({duplicates[:3]}); "
            "two files map to the same id"
        )
    if split is None:
        return rows
    selected = [r for r in rows if r.split == split]
    if not selected:
        counts = dict(Counter(r.split for r in rows))
        raise DatasetLayoutError(
            f"{_PRETTY[name]} at {root} has no {split!r} rows (splits found: {counts}); "
            "check that the official split files are present"
        )
    return selected


def summarize(rows: Sequence[VideoRow]) -> dict[tuple[str, str, int], int]:
    """Counts of rows per ``(split, manipulation, label)``: what a run is about to score."""
    counts: dict[tuple[str, str, int], int] = defaultdict(int)
    for row in rows:
        counts[(row.split, row.manipulation, row.label)] += 1
    return dict(counts)
