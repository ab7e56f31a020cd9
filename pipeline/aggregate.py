"""Face scores -> track, shot and medium scores (paper 3.1, "Video-level Aggregation").

track = mean of its faces; shot = max of its tracks; video = max of its shots. An image is one
shot whose tracks are single faces, so its score is the max over faces. Anything without a face
has no score (``None``), which is an answer, not an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def track_score(face_scores: Sequence[float]) -> float:
    if len(face_scores) == 0:
        raise ValueError("a track has at least one face")
    return float(np.mean(face_scores))


def max_or_none(scores: Sequence[float | None]) -> float | None:
    present = [s for s in scores if s is not None]
    return max(present) if present else None


def argmax_or_none(scores: Sequence[float | None]) -> int | None:
    """Index of the first maximal score, ignoring ``None`` (the UI selects that shot first)."""
    best: int | None = None
    for i, s in enumerate(scores):
        if s is not None and (best is None or s > scores[best]):  # type: ignore[operator]
            best = i
    return best
