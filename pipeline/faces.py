"""Face detection: MTCNN on sampled frames, square boxes enlarged by the paper's margin of 1.3.

Paper section 3.1 (Face Detection): a pre-trained MTCNN (facenet-pytorch, whose P/R/O-net weights
ship inside the wheel, so nothing is downloaded) runs on at most 64 unique frames per shot; each
detected box is made square and enlarged by 30% per side so that the artefacts at the boundary
between face and background stay in the crop.

Frames are ``(H, W, 3) uint8 RGB`` arrays everywhere; boxes are ``(x1, y1, x2, y2)`` in pixels of
the frame they were found in (x to the right, y down, ``x2``/``y2`` exclusive).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

Box = tuple[float, float, float, float]


class FaceSettings(BaseModel):
    """Settings of the face detection step (paper numbers and laptop-friendly defaults)."""

    model_config = ConfigDict(extra="forbid")

    margin: float = Field(
        default=1.3, ge=1.0, description="side of the square crop / longer side of the face box"
    )
    min_face_size_px: int = Field(
        default=40, ge=12, description="smallest face side kept, in pixels of the original frame"
    )
    min_face_fraction: float = Field(
        default=0.0, ge=0, le=1, description="also drop faces smaller than this x min(H, W)"
    )
    thresholds: tuple[float, float, float] = Field(
        default=(0.6, 0.7, 0.7), description="MTCNN P-, R- and O-net score thresholds"
    )
    min_confidence: float = Field(
        default=0.9, ge=0, le=1, description="final face probability below which a box is dropped"
    )
    factor: float = Field(default=0.709, gt=0, lt=1, description="MTCNN image pyramid step")
    max_frames_per_shot: int = Field(default=64, ge=1, description="paper: 64 unique frames")
    max_side_px: int | None = Field(
        default=1280,
        ge=64,
        description="frames whose longer side exceeds this are reduced before detection (speed); "
        "boxes are mapped back to full resolution. None: never reduce",
    )
    batch_size: int = Field(
        default=8, ge=1, description="frames per MTCNN call (it holds them as float32)"
    )
    device: str = Field(default="cpu", description="torch device, e.g. 'cpu' or 'cuda:0'")


@dataclass(frozen=True)
class Detection:
    """One face in one frame.

    ``box``: the enlarged square box, whole pixels (stored as floats), inside the frame, the region
    :func:`crop` returns. ``raw_box``: MTCNN's box in frame pixels, as detected (not square, may
    reach past the frame edge by a few pixels). ``confidence``: MTCNN's face probability in
    [0, 1]. ``landmarks``: ``(5, 2) float32`` (x, y) of the eyes, nose and mouth corners.
    """

    box: Box
    raw_box: Box
    confidence: float
    landmarks: np.ndarray


def square_box(raw_box: Box, frame_width: int, frame_height: int, margin: float = 1.3) -> Box:
    """The square crop box for a detected face box, inside a ``frame_width x frame_height`` frame.

    The side is ``margin x max(w, h)`` of ``raw_box`` (paper: 1.3, each side grows by 30%),
    centred on the raw box's centre and rounded to whole pixels. A box that would reach past the
    frame edge is *shifted* back inside rather than clipped or padded: it stays square and at the
    detector's scale, and contains no invented (padded) pixels that real frames never have. Only
    when the side exceeds the frame's shorter side is it reduced to that side (still centred as
    far as the frame allows).

    Returns ``(x1, y1, x2, y2)`` with ``x2 - x1 == y2 - y1``, ``0 <= x1``, ``x2 <= frame_width``,
    ``0 <= y1``, ``y2 <= frame_height``.
    """
    x1, y1, x2, y2 = raw_box
    if frame_width <= 0 or frame_height <= 0:
        raise ValueError(f"empty frame {frame_width}x{frame_height}")
    side = max(x2 - x1, y2 - y1) * margin
    side_px = int(min(max(1, round(side)), frame_width, frame_height))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left = min(max(0, round(cx - side_px / 2)), frame_width - side_px)
    top = min(max(0, round(cy - side_px / 2)), frame_height - side_px)
    return (float(left), float(top), float(left + side_px), float(top + side_px))


def crop(frame: np.ndarray, det: Detection | Box) -> np.ndarray:
    """The pixels of ``det.box`` (or of a box from :func:`square_box`): ``(S, S, 3) uint8``.

    A copy, so the frame can be released while crops are kept.
    """
    box = det.box if isinstance(det, Detection) else det
    x1, y1, x2, y2 = (round(v) for v in box)
    h, w = frame.shape[:2]
    if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
        raise ValueError(f"box {box} is not inside the {w}x{h} frame")
    return np.ascontiguousarray(frame[y1:y2, x1:x2])


def select_frame_times(
    start_s: float, end_s: float, fps: float, max_frames: int = 64
) -> list[float]:
    """Times (seconds) of at most ``max_frames`` unique frames of the shot ``[start_s, end_s)``.

    The shot's frames are those with index ``k`` such that ``start_s <= k / fps < end_s``; when
    there are more than ``max_frames`` of them, ``max_frames`` indices are spread evenly from the
    first to the last (paper: at most 64 unique frames per shot). A 2-second shot at 25 fps has
    50 frames, so all 50 are returned. Times are ``k / fps`` exactly, increasing.
    """
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    # A tolerance of 1e-6 frames absorbs float error in times computed as k / fps upstream.
    first = math.ceil(start_s * fps - 1e-6)
    last = math.ceil(end_s * fps - 1e-6) - 1
    first = max(first, 0)
    if last < first:
        return []
    n = last - first + 1
    if n <= max_frames:
        indices = list(range(first, last + 1))
    else:
        # Spacing is > 1 frame here, so rounding cannot produce duplicates.
        indices = [round(v) for v in np.linspace(first, last, max_frames)]
    return [k / fps for k in indices]


class FixedShapeBatches(torch.nn.Module):
    """Runs ``net`` on a batch in chunks of at most ``max_batch`` rows, each zero-padded to a
    power of two of at least ``min_batch`` rows; outputs are those of ``net(x)`` (a tensor or a
    tuple of tensors, batch first), padding rows removed.

    MTCNN's refinement stages (R-net, O-net) run on every candidate box of a batch of frames at
    once, in chunks of 512 (facenet-pytorch's ``fixed_batch_process``), so both the size and the
    *shape* of their input vary with the content of every batch. Measured on 720p video (batches
    of 8 frames): 0 to 2,134 R-net and 0 to 334 O-net candidates per batch. Two costs follow:

    * transient memory proportional to the candidates: O-net's first convolution and PReLU take
      0.55 MB per candidate, +120 MB over a typical batch for the 334-candidate one. A longer
      video has more batches and so meets more such frames: peak RSS grew with video length.
    * oneDNN caches a compiled primitive per input shape (up to 1,024 of them): each new candidate
      count added 0.6 MB that stayed, so resident memory also grew with the number of batches.

    Fixed chunks bound the first and power-of-two shapes (8, 16, 32, 64: four per net) the
    second. Each row is computed independently (MTCNN has no batch normalisation), so padding
    changes no result.

    ``x``: ``(N, C, H, W) float``; ``N = 0`` is passed through unchanged.
    """

    def __init__(self, net: torch.nn.Module, max_batch: int = 64, min_batch: int = 8) -> None:
        super().__init__()
        if not 1 <= min_batch <= max_batch:
            raise ValueError(f"need 1 <= min_batch <= max_batch, got {min_batch}, {max_batch}")
        self.net = net
        self.max_batch = max_batch
        self.min_batch = min_batch

    def _padded_size(self, n: int) -> int:
        return min(self.max_batch, max(self.min_batch, 1 << (n - 1).bit_length()))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(x) == 0:
            return self.net(x)
        parts: list[tuple[torch.Tensor, ...]] = []
        single = False
        for start in range(0, len(x), self.max_batch):
            chunk = x[start : start + self.max_batch]
            n = len(chunk)
            size = self._padded_size(n)
            if size > n:
                chunk = torch.cat([chunk, chunk.new_zeros((size - n, *chunk.shape[1:]))])
            out = self.net(chunk)
            single = isinstance(out, torch.Tensor)
            parts.append(tuple(o[:n] for o in ((out,) if single else out)))
        merged = tuple(torch.cat(ts) for ts in zip(*parts, strict=True))
        return merged[0] if single else merged


class FaceDetector:
    """MTCNN (facenet-pytorch) returning every face above ``settings.min_confidence``.

    Construction loads the P/R/O-nets from the facenet-pytorch wheel (no network). ``detect``
    batches frames of equal size (MTCNN's own batching requires it), ``batch_size`` at a time.
    The R- and O-nets run in fixed-shape chunks (:class:`FixedShapeBatches`), so memory does not
    depend on how many candidate boxes a batch of frames happens to produce.
    """

    def __init__(self, settings: FaceSettings | None = None) -> None:
        from facenet_pytorch import MTCNN

        self.settings = settings or FaceSettings()
        self._mtcnn = MTCNN(
            keep_all=True,
            min_face_size=self.settings.min_face_size_px,
            thresholds=list(self.settings.thresholds),
            factor=self.settings.factor,
            post_process=False,
            select_largest=False,
            device=torch.device(self.settings.device),
        ).eval()
        self._mtcnn.rnet = FixedShapeBatches(self._mtcnn.rnet).eval()
        self._mtcnn.onet = FixedShapeBatches(self._mtcnn.onet).eval()

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Faces in each frame: ``result[i]`` lists frame ``i``'s faces, most confident first.

        ``frames``: each ``(H, W, 3) uint8 RGB``; sizes may differ. Empty input gives ``[]``.
        """
        results: list[list[Detection]] = [[] for _ in frames]
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, frame in enumerate(frames):
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise ValueError(
                    f"frame {i}: expected (H, W, 3) uint8 RGB, got {frame.shape} {frame.dtype}"
                )
            by_size.setdefault(frame.shape[:2], []).append(i)
        bs = self.settings.batch_size
        for (h, w), indices in by_size.items():
            for k in range(0, len(indices), bs):
                chunk = indices[k : k + bs]
                for i, dets in zip(
                    chunk, self._detect_same_size([frames[i] for i in chunk], h, w), strict=True
                ):
                    results[i] = dets
        return results

    def _detect_same_size(self, frames: list[np.ndarray], h: int, w: int) -> list[list[Detection]]:
        s = self.settings
        scale = 1.0
        if s.max_side_px is not None and max(h, w) > s.max_side_px:
            scale = s.max_side_px / max(h, w)
        min_side = max(float(s.min_face_size_px), s.min_face_fraction * min(h, w))
        # MTCNN's smallest pyramid face, in detection pixels (12 px is its P-net's window): no
        # pyramid level is spent on faces the size filter below would drop anyway. It depends on
        # the frame size, so it is set per call (a FaceDetector is not meant for concurrent use).
        self._mtcnn.min_face_size = max(12, int(min_side * scale))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if min(size) < self._mtcnn.min_face_size:
            # No face of the minimum size fits (and MTCNN fails on an empty image pyramid).
            return [[] for _ in frames]
        if scale != 1.0:
            batch = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
            sx, sy = w / size[0], h / size[1]
        else:
            batch = np.stack(frames)
            sx = sy = 1.0
        with torch.inference_mode():
            all_boxes, all_probs, all_points = self._mtcnn.detect(batch, landmarks=True)
        out: list[list[Detection]] = []
        for boxes, probs, points in zip(all_boxes, all_probs, all_points, strict=True):
            dets: list[Detection] = []
            if boxes is not None:
                for box, prob, pts in zip(boxes, probs, points, strict=True):
                    raw = (
                        float(box[0] * sx),
                        float(box[1] * sy),
                        float(box[2] * sx),
                        float(box[3] * sy),
                    )
                    if float(prob) < s.min_confidence:
                        continue
                    if max(raw[2] - raw[0], raw[3] - raw[1]) < min_side:
                        continue
                    landmarks = np.asarray(pts, dtype=np.float32) * np.array([sx, sy], np.float32)
                    dets.append(
                        Detection(
                            box=square_box(raw, w, h, s.margin),
                            raw_box=raw,
                            confidence=float(prob),
                            landmarks=landmarks.astype(np.float32),
                        )
                    )
            dets.sort(key=lambda d: -d.confidence)
            out.append(dets)
        return out
