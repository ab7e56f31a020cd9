"""Synthetic test videos built from real clips, with known cut times.

Shot-boundary and face-track tests need videos whose ground truth is known exactly. Rather than
drawing shapes, these helpers cut pieces out of the real videos in ``../shared/data`` and
concatenate them (optionally reversed or re-coloured) or place two of them side by side, so the
content is real camera footage and only the edit points are synthetic. Everything is decoded and
written with OpenCV (``mp4v``); frames handed to the code under test are ``(H, W, 3) uint8 RGB``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

Transform = Literal["none", "reverse", "hue_shift", "invert"]


@dataclass(frozen=True)
class ClipSpec:
    """A piece of a real video: ``duration_s`` seconds from ``start_s``, then ``transform``.

    ``reverse`` plays the piece backwards; ``hue_shift`` rotates the hue by 90 degrees (same
    structure and brightness, different colours: a hard case for colour descriptors); ``invert``
    is the photographic negative.
    """

    source: Path
    start_s: float
    duration_s: float
    transform: Transform = "none"


@dataclass(frozen=True)
class SyntheticVideo:
    """A written test video and its ground truth.

    ``cut_times_s`` are the instants (seconds from the start) where one clip ends and the next
    begins: ``len(clips) - 1`` of them, strictly increasing.
    """

    path: Path
    fps: float
    size: tuple[int, int]  # (width, height) in pixels
    n_frames: int
    clips: tuple[ClipSpec, ...]
    cut_times_s: tuple[float, ...] = field(default=())

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps


def video_info(path: Path) -> tuple[float, int, int, int]:
    """``(fps, n_frames, width, height)`` as OpenCV reports them."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise OSError(f"cannot open video {path}")
    try:
        return (
            float(cap.get(cv2.CAP_PROP_FPS)),
            int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
    finally:
        cap.release()


def read_frames_at(path: Path, times_s: Sequence[float]) -> Iterator[tuple[float, np.ndarray]]:
    """Decode the frames shown at ``times_s`` (seconds, increasing) as ``(time_s, RGB uint8)``.

    Decodes sequentially and keeps one frame at a time, so memory does not grow with the video.
    The frame shown at time t is the one with index ``floor(t * fps + 1e-6)``; times past the end
    are skipped.
    """
    fps, _, _, _ = video_info(path)
    wanted = [int(np.floor(t * fps + 1e-6)) for t in times_s]
    if any(b < a for a, b in itertools.pairwise(wanted)):
        raise ValueError("times_s must be increasing")
    cap = cv2.VideoCapture(str(path))
    try:
        index = -1
        frame = None
        for t, target in zip(times_s, wanted, strict=True):
            while index < target:
                if not cap.grab():
                    return
                index += 1
                frame = None
            if frame is None:
                ok, bgr = cap.retrieve()
                if not ok:
                    return
                frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            yield t, frame
    finally:
        cap.release()


def sample_frames(path: Path, sample_fps: float = 1.0) -> Iterator[tuple[float, np.ndarray]]:
    """Frames at ``0, 1/sample_fps, 2/sample_fps, ...`` seconds, as ``(time_s, RGB uint8)``."""
    fps, n_frames, _, _ = video_info(path)
    duration = n_frames / fps
    times = [k / sample_fps for k in range(int(np.floor(duration * sample_fps - 1e-9)) + 1)]
    return read_frames_at(path, times)


def fit_frame(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crop to the aspect ratio of ``size`` = (width, height), then resize to it."""
    width, height = size
    h, w = rgb.shape[:2]
    if w * height > h * width:  # too wide: crop columns
        new_w = round(h * width / height)
        x0 = (w - new_w) // 2
        rgb = rgb[:, x0 : x0 + new_w]
    else:
        new_h = round(w * height / width)
        y0 = (h - new_h) // 2
        rgb = rgb[y0 : y0 + new_h]
    interpolation = cv2.INTER_AREA if rgb.shape[1] > width else cv2.INTER_LINEAR
    return cv2.resize(rgb, (width, height), interpolation=interpolation)


def _apply(rgb: np.ndarray, transform: Transform) -> np.ndarray:
    if transform in ("none", "reverse"):
        return rgb
    if transform == "invert":
        return 255 - rgb
    if transform == "hue_shift":
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
        # OpenCV's 8-bit hue runs over 0..179: +45 is a quarter turn of the colour wheel.
        hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + 45) % 180).astype(np.uint8)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    raise ValueError(f"unknown transform {transform!r}")


def _clip_frames(clip: ClipSpec, n_out: int, fps: float, size: tuple[int, int]) -> list[np.ndarray]:
    """The ``n_out`` output frames of one clip (small: size is reduced before they are kept)."""
    times = [clip.start_s + k / fps for k in range(n_out)]
    frames = [fit_frame(rgb, size) for _, rgb in read_frames_at(clip.source, times)]
    if len(frames) != n_out:
        raise ValueError(
            f"{clip.source.name} has no frames up to {clip.start_s + clip.duration_s:.2f} s"
        )
    if clip.transform == "reverse":
        frames.reverse()
    return [_apply(f, clip.transform) for f in frames]


def _writer(path: Path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise OSError(f"cannot write {path}")
    return writer


def concatenate_clips(
    clips: Sequence[ClipSpec],
    out_path: Path,
    *,
    size: tuple[int, int] = (640, 360),
    fps: float = 25.0,
) -> SyntheticVideo:
    """Write ``clips`` one after another (hard cuts) to ``out_path`` and return the ground truth.

    Each clip contributes ``round(duration_s * fps)`` frames resampled from its source at
    ``fps``; the cut between clip i and i+1 is at the time of clip i+1's first frame.
    """
    writer = _writer(out_path, fps, size)
    n_frames = 0
    cuts: list[float] = []
    try:
        for i, clip in enumerate(clips):
            if i > 0:
                cuts.append(n_frames / fps)
            n_out = round(clip.duration_s * fps)
            for rgb in _clip_frames(clip, n_out, fps, size):
                writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            n_frames += n_out
    finally:
        writer.release()
    return SyntheticVideo(out_path, fps, size, n_frames, tuple(clips), tuple(cuts))


def side_by_side(
    left: ClipSpec,
    right: ClipSpec,
    out_path: Path,
    *,
    tile_size: tuple[int, int] = (360, 360),
    fps: float = 25.0,
) -> SyntheticVideo:
    """Two real clips next to each other in one frame (one shot, two people).

    Both clips are cut to ``min(left.duration_s, right.duration_s)``; the frame is
    ``(2 * tile_width, tile_height)``.
    """
    n_out = round(min(left.duration_s, right.duration_s) * fps)
    width, height = tile_size
    size = (2 * width, height)
    lefts = _clip_frames(left, n_out, fps, tile_size)
    rights = _clip_frames(right, n_out, fps, tile_size)
    writer = _writer(out_path, fps, size)
    try:
        for a, b in zip(lefts, rights, strict=True):
            writer.write(cv2.cvtColor(np.hstack([a, b]), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return SyntheticVideo(out_path, fps, size, n_out, (left, right), ())
