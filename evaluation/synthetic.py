"""Synthetic long videos for benchmarks: real clips concatenated, with known cut times.

Used by ``dfd bench analyze`` (growth curve over 1, 5 and 20 minutes) and batch benchmarks.
The clips come from real media; only their order, length and colour are varied so consecutive
segments form real cuts.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np


def _frames(path: Path, size: tuple[int, int]) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
    finally:
        cap.release()
    if not frames:
        raise ValueError(f"no frame decoded from {path}")
    return frames


def concat_clips(
    sources: Sequence[Path],
    out: Path,
    duration_s: float,
    *,
    size: tuple[int, int] = (1280, 720),
    fps: float = 25.0,
    segment_s: tuple[float, float] = (4.0, 12.0),
    seed: int = 0,
) -> list[float]:
    """Write ``out`` (MPEG-4 Part 2) of ``duration_s`` seconds; return the cut times in seconds.

    Segments of random length in ``segment_s`` cycle through ``sources``; every other pass over
    a clip is mirrored and hue-shifted, so repeated material still differs from its neighbours.
    Only one clip's frames (at ``size``) are in memory at a time.
    """
    rng = np.random.default_rng(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    total = round(duration_s * fps)
    written = 0
    cuts: list[float] = []
    try:
        for k, source in enumerate(itertools.cycle(sources)):
            if written >= total:
                break
            frames = _frames(Path(source), size)
            n = min(total - written, round(rng.uniform(*segment_s) * fps))
            variant = (k // len(sources)) % 2
            for i in range(n):
                frame = frames[i % len(frames)]
                if variant:
                    hsv = cv2.cvtColor(cv2.flip(frame, 1), cv2.COLOR_BGR2HSV)
                    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + 60) % 180
                    frame = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
                writer.write(frame)
            if written:
                cuts.append(written / fps)
            written += n
            del frames
    finally:
        writer.release()
    tmp.replace(out)
    return cuts
