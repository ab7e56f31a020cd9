"""FaceForensics++ (paper 4.1): the layout its official download script writes, and its splits."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from batch.datasets.layout import check_root, layout_error, mp4s
from batch.datasets.rows import ORIGINAL, VideoRow
from pipeline.errors import ConfigError, DatasetLayoutError

log = logging.getLogger(__name__)

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
    root = check_root(root, "ffpp")
    compression, selected = _selection(compression, manipulations)
    expected = (
        f"original_sequences/youtube/{compression}/videos/*.mp4 and "
        f"manipulated_sequences/<method>/{compression}/videos/*.mp4"
    )
    if not (root / "original_sequences").is_dir() and not (root / "manipulated_sequences").is_dir():
        raise layout_error(root, "ffpp", expected)

    split_of, splits_where = _find_ffpp_splits(root, splits_dir)
    rows = _real_rows(root, compression, selected, split_of)
    fakes, missing = _fake_rows(root, compression, selected, split_of)
    rows += fakes
    if manipulations is not None and missing:
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


def _selection(
    compression: str, manipulations: Sequence[str] | None
) -> tuple[str, tuple[str, ...]]:
    """The compression folder's name (``"c0"`` is ``"raw"``) and the methods to read."""
    if compression == "c0":
        compression = "raw"
    if compression not in FFPP_COMPRESSIONS:
        raise ConfigError(f"FF++ compression {compression!r} is not one of {FFPP_COMPRESSIONS}")
    selected = tuple(manipulations) if manipulations is not None else FFPP_PAPER_MANIPULATIONS
    unknown = [m for m in selected if m not in FFPP_MANIPULATIONS]
    if unknown:
        raise ConfigError(f"unknown FF++ manipulation(s) {unknown}; known: {FFPP_MANIPULATIONS}")
    return compression, selected


def _real_rows(
    root: Path, compression: str, selected: Sequence[str], split_of: dict[tuple[str, ...], str]
) -> list[VideoRow]:
    """The youtube originals, and DeepFakeDetection's actors when that method is selected."""
    rows = []
    for path in mp4s(root / "original_sequences" / "youtube" / compression / "videos"):
        split = split_of.get((path.stem,), "unspecified")
        video_id = f"ffpp/original/{compression}/{path.stem}"
        rows.append(VideoRow(video_id, str(path), 0, ORIGINAL, split, "video"))
    if "DeepFakeDetection" in selected:
        for path in mp4s(root / "original_sequences" / "actors" / compression / "videos"):
            video_id = f"ffpp/actors/{compression}/{path.stem}"
            rows.append(VideoRow(video_id, str(path), 0, ORIGINAL, "unspecified", "video"))
    return rows


def _fake_rows(
    root: Path, compression: str, selected: Sequence[str], split_of: dict[tuple[str, ...], str]
) -> tuple[list[VideoRow], list[str]]:
    """The fakes of every selected method, and the methods without any video."""
    rows: list[VideoRow] = []
    missing: list[str] = []
    for method in selected:
        videos = mp4s(root / "manipulated_sequences" / method / compression / "videos")
        if not videos:
            missing.append(method)
            continue
        for path in videos:
            match = _FFPP_PAIR_NAME.match(path.stem)
            # DeepFakeDetection names ("01_02__walk_down_hall_angry__YVGY8LOK") are not id pairs.
            split = split_of.get(match.groups(), "unspecified") if match else "unspecified"
            video_id = f"ffpp/{method}/{compression}/{path.stem}"
            rows.append(VideoRow(video_id, str(path), 1, method, split, "video"))
    return rows, missing
