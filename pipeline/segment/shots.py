"""From region descriptors to shots: Chamfer similarity, peaks of distance, the 1.5 s rule.

Paper section 3.1 (Video Segmentation), following ViSiL [35]: Chamfer similarity between the
region sets of consecutive samples (one per second), peaks of the distance curve are shot
transitions, shots are at least 1.5 s long. :func:`segment` runs the whole step on sampled
frames, :func:`segment_features` on descriptors computed elsewhere (a remote model).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.segment.descriptors import ColourHistogramRegions, RegionFeatureExtractor


def chamfer_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Chamfer similarity of two region sets ``a: (Ra, D)``, ``b: (Rb, D)``.

    ViSiL's Chamfer similarity ``CS(a, b) = mean_i max_j <a_i, b_j>`` is asymmetric; for
    consecutive frames there is no reason to prefer either direction, so this returns
    ``(CS(a, b) + CS(b, a)) / 2``. With unit-norm rows it lies in [-1, 1] (in [0, 1] for
    non-negative descriptors such as histograms and post-ReLU R-MAC), and equals 1 for identical
    sets.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (R, D) region sets of equal D, got {a.shape} and {b.shape}")
    sim = a.astype(np.float32) @ b.astype(np.float32).T
    return float((sim.max(axis=1).mean() + sim.max(axis=0).mean()) / 2)


def distance_curve(features: Sequence[np.ndarray]) -> np.ndarray:
    """``d[i] = 1 - chamfer_similarity(f[i], f[i+1])``: ``(len(features) - 1,) float64``."""
    return np.array(
        [1.0 - chamfer_similarity(features[i], features[i + 1]) for i in range(len(features) - 1)],
        dtype=np.float64,
    )


def detect_cuts(
    times_s: Sequence[float],
    features: Sequence[np.ndarray] | None = None,
    *,
    distances: np.ndarray | None = None,
    threshold: float = ColourHistogramRegions.cut_threshold,
    window: int = 3,
    margin: float = 0.1,
) -> list[float]:
    """Shot transitions, in seconds, from the peaks of the consecutive-frame distance curve.

    ``d[i]`` (between samples ``i`` and ``i + 1``) is a cut when both

    * ``d[i] >= threshold``: an absolute floor, so a nearly static video whose distances are all
      tiny never yields cuts from relative fluctuations; and
    * ``d[i] - median(d[i - window : i + window + 1] without d[i]) >= margin``: it stands out
      from its neighbourhood, so sustained motion (a pan, a moving crowd) that raises the whole
      curve does not produce a run of cuts. The median, unlike the mean or a local-maximum test,
      ignores another cut nearby, so even two cuts one sample apart are both kept (the 1.5 s rule
      decides later what to do with the short shot between them).

    A cut is placed halfway between the two samples' times: at 1 fps that is within 0.5 s of
    the true transition.

    Args:
        times_s: sample times in seconds, increasing, one per feature.
        features: per-sample region descriptors ``(R, D)``; or pass ``distances`` instead.
        distances: precomputed ``d`` of length ``len(times_s) - 1``.
    """
    if distances is None:
        if features is None:
            raise ValueError("pass features or distances")
        if len(features) != len(times_s):
            raise ValueError(f"{len(features)} features for {len(times_s)} times")
        distances = distance_curve(features)
    if len(distances) != max(0, len(times_s) - 1):
        raise ValueError(f"{len(distances)} distances for {len(times_s)} times")
    cuts = []
    n = len(distances)
    for i in range(n):
        if distances[i] < threshold:
            continue
        neighbours = np.concatenate(
            [distances[max(0, i - window) : i], distances[i + 1 : min(n, i + window + 1)]]
        )
        baseline = float(np.median(neighbours)) if len(neighbours) else 0.0
        if distances[i] - baseline >= margin:
            cuts.append((times_s[i] + times_s[i + 1]) / 2)
    return cuts


@dataclass(frozen=True)
class Shot:
    """A shot: ``[start_s, end_s)`` in seconds; ``index`` counts from 0 in time order."""

    index: int
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def shots_from_cuts(
    cuts: Iterable[float], duration_s: float, min_shot_s: float = 1.5
) -> list[Shot]:
    """Shots between ``cuts`` covering ``[0, duration_s)``, each at least ``min_shot_s`` long.

    Cuts outside ``(0, duration_s)`` and duplicates are ignored. Then, while some shot is
    shorter than ``min_shot_s`` (paper: shots are at least 1.5 s), the shortest one (earliest on
    ties) is merged into its shorter neighbour (the left one on ties): merging into the shorter
    neighbour removes the cut that costs least, since the longer neighbour is the better
    established shot. A video shorter than ``min_shot_s`` is one shot.
    """
    if duration_s < 0:
        raise ValueError(f"duration_s must be >= 0, got {duration_s}")
    bounds = [0.0, *sorted({float(c) for c in cuts if 0.0 < c < duration_s}), float(duration_s)]
    while len(bounds) > 2:
        lengths = [b - a for a, b in itertools.pairwise(bounds)]
        shortest = min(range(len(lengths)), key=lambda k: (lengths[k], k))
        if lengths[shortest] >= min_shot_s:
            break
        if shortest == 0:
            drop = 1  # only a right neighbour: remove the cut at its end
        elif shortest == len(lengths) - 1:
            drop = shortest  # only a left neighbour
        else:
            left, right = lengths[shortest - 1], lengths[shortest + 1]
            drop = shortest if left <= right else shortest + 1
        del bounds[drop]
    return [Shot(i, a, b) for i, (a, b) in enumerate(itertools.pairwise(bounds))]


# --------------------------------------------------------------------------------------------
# The whole step


class SegmentSettings(BaseModel):
    """Settings of the segmentation step (paper numbers as defaults)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["auto", "rmac", "histogram"] = "auto"
    weights_path: Path | None = Field(
        default=None, description="ResNet50 state dict for 'rmac' (and for 'auto' to pick it)"
    )
    sample_fps: float = Field(default=1.0, gt=0, description="frames per second fed to it")
    min_shot_s: float = Field(default=1.5, ge=0, description="shorter shots are merged")
    cut_threshold: float | None = Field(
        default=None, ge=0, le=2, description="absolute distance floor; None: the extractor's"
    )
    peak_window: int = Field(default=3, ge=1, description="samples each side for the median")
    peak_margin: float = Field(default=0.1, ge=0, description="how far above the local median")
    batch_size: int = Field(default=8, ge=1, description="frames per descriptor call")


@dataclass(frozen=True)
class Segmentation:
    """The shots of a video and how they were found.

    ``method`` is the extractor's name (``"rmac"`` or ``"histogram"``); ``times_s`` the sample
    times; ``distances[i]`` the distance between samples ``i`` and ``i + 1`` (in [0, 2]);
    ``cuts_s`` the detected transitions before the minimum-length merge.
    """

    shots: list[Shot]
    method: str
    times_s: list[float]
    distances: list[float]
    cuts_s: list[float]


class TimedFrame(Protocol):
    """Anything with a ``time_s`` (seconds) and an ``image`` (``(H, W, 3) uint8 RGB``)."""

    time_s: float
    image: np.ndarray


def segment(
    samples: Iterable[tuple[float, np.ndarray] | TimedFrame],
    duration_s: float,
    extractor: RegionFeatureExtractor,
    settings: SegmentSettings | None = None,
) -> Segmentation:
    """Split a video into shots (paper 3.1), from frames the caller samples at
    ``settings.sample_fps`` (paper: 1 per second) over ``[0, duration_s)``.

    ``samples`` yields ``(time_s, frame)`` pairs (or objects with ``time_s`` and ``image``) in
    time order; it is consumed ``batch_size`` frames at a time and only the descriptors are
    kept, so a long high-resolution video needs no more memory than a short one beyond
    ``R x D`` floats per sample.
    """
    settings = settings or SegmentSettings()
    times: list[float] = []
    features: list[np.ndarray] = []
    pending_t: list[float] = []
    pending_f: list[np.ndarray] = []

    def flush() -> None:
        if pending_f:
            features.extend(extractor(pending_f))
            times.extend(pending_t)
            pending_f.clear()
            pending_t.clear()

    for sample in samples:
        if isinstance(sample, tuple):
            t, frame = sample
        else:
            t, frame = sample.time_s, sample.image
        pending_t.append(float(t))
        pending_f.append(frame)
        if len(pending_f) >= settings.batch_size:
            flush()
    flush()
    return segment_features(
        times, features, duration_s, extractor.name, settings, extractor.cut_threshold
    )


def segment_features(
    times_s: Sequence[float],
    features: Sequence[np.ndarray],
    duration_s: float,
    method: str,
    settings: SegmentSettings | None = None,
    default_threshold: float = ColourHistogramRegions.cut_threshold,
) -> Segmentation:
    """:func:`segment` from precomputed descriptors (one ``(R, D)`` per sample time).

    ``method`` is recorded as :attr:`Segmentation.method`; ``default_threshold`` is the cut
    threshold used when ``settings.cut_threshold`` is None (pass the extractor's).
    """
    settings = settings or SegmentSettings()
    if len(features) != len(times_s):
        raise ValueError(f"{len(features)} descriptors for {len(times_s)} sample times")
    if any(b <= a for a, b in itertools.pairwise(times_s)):
        raise ValueError("sample times must be strictly increasing")
    distances = distance_curve(features)
    threshold = settings.cut_threshold if settings.cut_threshold is not None else default_threshold
    cuts = detect_cuts(
        times_s,
        distances=distances,
        threshold=threshold,
        window=settings.peak_window,
        margin=settings.peak_margin,
    )
    return Segmentation(
        shots=shots_from_cuts(cuts, duration_s, settings.min_shot_s),
        method=method,
        times_s=[float(t) for t in times_s],
        distances=[float(d) for d in distances],
        cuts_s=cuts,
    )
