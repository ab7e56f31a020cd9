"""The steps of one analysis as plain functions, so that they can run in one process
(:class:`pipeline.analyze.Analyzer`) or as the stages of a distributed run (``batch``) with
the same code: probe, pass 1 (shot boundaries), the frame plan of pass 2, face crops.

Each step takes the models it needs (:class:`~pipeline.model_access.PipelineModels`) and the
:class:`~pipeline.settings.AnalysisSettings`; none holds state between calls.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np

from pipeline import gallery
from pipeline.errors import CorruptMediaError, TooLargeError
from pipeline.faces import Detection, crop, square_box
from pipeline.media import Frame, MediaInfo, iter_frames, probe
from pipeline.model_access import PipelineModels
from pipeline.result import Methods
from pipeline.sampling import FramePlan
from pipeline.segment import Segmentation, segment_features
from pipeline.settings import AnalysisSettings

T = TypeVar("T")

#: ``report(done, total)`` while pass 1 decodes.
SegmentProgress = Callable[[int, int], None]


def batched(items: Iterator[T], n: int) -> Iterator[list[T]]:
    """``itertools.batched`` (Python 3.12+) for 3.11, as lists."""
    while batch := list(itertools.islice(items, n)):
        yield batch


def probe_media(path: Path, settings: AnalysisSettings) -> MediaInfo:
    """What the file is (from its bytes); a video over the duration limit is refused."""
    info = probe(path, max_pixels=settings.max_pixels)
    if info.kind == "video" and (info.duration_s or 0) > settings.download.max_duration_s:
        raise TooLargeError(
            f"video lasts {info.duration_s:.0f} s, over the limit of "
            f"{settings.download.max_duration_s:.0f} s"
        )
    return info


def video_fps(info: MediaInfo) -> float:
    return info.fps or 25.0


def segment_video(
    models: PipelineModels,
    settings: AnalysisSettings,
    path: Path,
    info: MediaInfo,
    report: SegmentProgress | None = None,
) -> tuple[Segmentation, int]:
    """Pass 1: region descriptors at 1 fps, cut into shots; returns the frames it decoded.

    Runs to the real end of the stream whatever the header says (iter_frames stops there);
    only the descriptors are kept.
    """
    s = settings
    rate = s.segmentation.sample_fps
    expected = int((info.duration_s or 0) * rate) + 1
    times: list[float] = []
    features: list[np.ndarray] = []
    last_time = 0.0
    if report is not None:
        report(0, expected)
    stream = iter_frames(path, (k / rate for k in itertools.count()), max_pixels=s.max_pixels)
    for batch in batched(stream, s.segmentation.batch_size):
        features.extend(models.region_features([f.image for f in batch]))
        times.extend(f.time_s for f in batch)
        last_time = batch[-1].time_s
        if report is not None:
            report(len(times), max(expected, len(times)))
    if not times:
        raise CorruptMediaError(f"{path.name}: no video frame could be decoded")
    duration = max(info.duration_s or 0.0, last_time + 1.0 / video_fps(info))
    segmentation = segment_features(
        times,
        features,
        duration,
        models.segmentation_method,
        s.segmentation,
        models.segmentation_threshold,
    )
    return segmentation, len(times)


def plan_frames(
    segmentation: Segmentation, info: MediaInfo, settings: AnalysisSettings
) -> FramePlan:
    """Pass 2's frames: at most ``max_frames_per_shot`` per shot (paper 3.1: 64)."""
    return FramePlan.for_shots(
        segmentation.shots, video_fps(info), settings.faces.max_frames_per_shot
    )


def planned_frames(
    path: Path, plan: FramePlan, settings: AnalysisSettings
) -> Iterator[tuple[int, Frame]]:
    """Pass 2: the planned frames in time order, each with the index of the shot it serves."""
    for frame in iter_frames(path, plan.times, max_pixels=settings.max_pixels):
        yield plan.shot_of(frame.time_s), frame


def video_methods(
    models: PipelineModels, settings: AnalysisSettings, segmentation_method: str
) -> Methods:
    """How a video was analysed (recorded in its result)."""
    return Methods(
        segmentation=segmentation_method,
        face_detector=models.face_detector_name,
        tracking_cues=["iou", "embedding"] if models.has_embedder else ["iou"],
        sample_rate_hz=settings.segmentation.sample_fps,
        max_frames_per_shot=settings.faces.max_frames_per_shot,
    )


def image_methods(models: PipelineModels) -> Methods:
    """How an image was analysed: faces and scores only (paper 3.1)."""
    return Methods(
        segmentation="none (image)",
        face_detector=models.face_detector_name,
        tracking_cues=["none (image: each face is its own track)"],
        aggregation="face -> medium (max)",
        sample_rate_hz=None,
        max_frames_per_shot=1,
    )


def cut_face(
    frame: np.ndarray, det: Detection, crop_margin: float, settings: AnalysisSettings
) -> np.ndarray:
    """The face's crop at the margin the scoring members need (their largest; the paper's 1.3
    for its five and for MesoNet), which each member narrows to its own; at most
    ``crop_max_side`` pixels."""
    box = det.box
    if crop_margin != settings.faces.margin:
        box = square_box(det.raw_box, frame.shape[1], frame.shape[0], crop_margin)
    return gallery.thumbnail(crop(frame, box), settings.crop_max_side)[0]
