"""Pass 2 over a video: which frames each shot gives to face detection, and what is kept of them.

Paper section 3.1: faces are detected on at most 64 unique frames per shot, spread over it
(:func:`pipeline.faces.select_frame_times`). The frames of every shot are decoded in one pass
over the file: :class:`FramePlan` lists their times in order and says which shot a decoded frame
serves. Of each frame a shot keeps only a small thumbnail (for its gallery) and the face crops
(:class:`ShotSamples`), and only until the shot is scored.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from pipeline.faces import Detection, select_frame_times
from pipeline.segment import Shot


class KeyFrame(NamedTuple):
    """A sampled frame as a shot keeps it: ``thumbnail`` is ``image`` shrunk by ``scale``."""

    frame_index: int  # decoded frame number
    time_s: float
    thumbnail: np.ndarray  # (h, w, 3) uint8 RGB
    scale: float  # thumbnail pixels per frame pixel, <= 1


@dataclass
class SampledFace:
    """A face found on a shot's sampled frame; ``frame_pos`` indexes ``ShotSamples.frames``."""

    frame_pos: int
    frame_index: int
    time_s: float
    detection: Detection
    crop: np.ndarray


@dataclass
class ShotSamples:
    """What pass 2 holds of one shot until the shot is scored."""

    shot: Shot
    frames: list[KeyFrame] = field(default_factory=list)
    faces: list[SampledFace] = field(default_factory=list)


@dataclass(frozen=True)
class FramePlan:
    """The times (seconds, ascending) pass 2 decodes, and the shot each one serves."""

    times: list[float]
    shot_indices: list[int]

    @classmethod
    def for_shots(cls, shots: Sequence[Shot], fps: float, max_frames_per_shot: int) -> FramePlan:
        """Up to ``max_frames_per_shot`` frames spread over each shot (at least its start)."""
        times: list[float] = []
        shot_indices: list[int] = []
        for shot in shots:
            picked = select_frame_times(shot.start_s, shot.end_s, fps, max_frames_per_shot)
            for t in picked or [shot.start_s]:
                times.append(t)
                shot_indices.append(shot.index)
        return cls(times, shot_indices)

    def __len__(self) -> int:
        return len(self.times)

    def shot_of(self, time_s: float) -> int:
        """The shot of the planned time nearest to a decoded frame's time (ties: the earlier)."""
        times = self.times
        k = bisect.bisect_left(times, time_s)
        if k > 0 and (k == len(times) or time_s - times[k - 1] <= times[k] - time_s):
            k -= 1
        return self.shot_indices[k]


def spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all of them when ``n <= k``)."""
    if n <= k:
        return list(range(n))
    return sorted({round(v) for v in np.linspace(0, n - 1, k)})
