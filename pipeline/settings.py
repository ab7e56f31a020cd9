"""The settings of one analysis: every knob of paper section 3.1, with the paper's numbers.

Validated once, at the boundary (the CLI's options, the Serve YAML's ``analysis`` block), and
then passed whole to :class:`pipeline.analyze.Analyzer`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from pipeline.download import DownloadSettings
from pipeline.faces import FaceSettings
from pipeline.media import DEFAULT_MAX_PIXELS
from pipeline.models import InferenceSettings
from pipeline.result import ScoreBands
from pipeline.segment import SegmentSettings


class AnalysisSettings(BaseModel):
    """Every knob of one analysis, with the paper's numbers as defaults."""

    model_config = ConfigDict(extra="forbid")

    download: DownloadSettings = DownloadSettings()
    segmentation: SegmentSettings = SegmentSettings()
    faces: FaceSettings = FaceSettings()
    inference: InferenceSettings = InferenceSettings()
    #: InceptionResnetV1 (VGGFace2) state dict; default ``<model dir>/aux/``.
    embedder_weights: Path | None = None
    #: Paper 3.1: edges where embedding similarity > 0.8.
    sim_threshold: float = Field(0.8, ge=-1.0, le=1.0)
    iou_threshold: float = Field(0.5, gt=0.0, le=1.0)
    #: Paper 3.1: drop tracks with fewer faces than 20% of the shot's sampled frames.
    min_track_fraction: float = Field(0.2, ge=0.0, le=1.0)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)
    galleries: bool = True
    #: Longer side of keyframe thumbnails kept per sampled frame (UI hover-zoom needs detail).
    gallery_max_side: int = Field(640, ge=64)
    #: Keyframes per shot gallery and crops per track collage.
    gallery_max_tiles: int = Field(16, ge=1)
    collage_max_tiles: int = Field(36, ge=1)
    #: Face crops larger than this are reduced when extracted (they are resized to the models'
    #: 300 px anyway; this bounds a shot's memory for close-ups in 4K video).
    crop_max_side: int = Field(600, ge=32)
    bands: ScoreBands = ScoreBands()
    #: Shots scored concurrently (useful when models are remote, as in Serve).
    shot_workers: int = Field(1, ge=1)
