"""The rows every dataset reader returns: :class:`VideoRow`, and the names they use.

Rows are sorted by ``video_id`` so two runs over the same folder give the same list in the same
order (evaluation runs are resumable by ``video_id``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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
            faces, read with :func:`batch.datasets.iter_face_sequence`).
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


def summarize(rows: Sequence[VideoRow]) -> dict[tuple[str, str, int], int]:
    """Counts of rows per ``(split, manipulation, label)``: what a run is about to score."""
    counts: dict[tuple[str, str, int], int] = defaultdict(int)
    for row in rows:
        counts[(row.split, row.manipulation, row.label)] += 1
    return dict(counts)
