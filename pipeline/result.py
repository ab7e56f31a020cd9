"""The versioned result schema, shared by the CLI, the API, the UI and batch runs.

``SCHEMA_VERSION`` changes with the output format (the ``x`` of the service version, paper 5.3).
Scores are DeepFake probabilities in [0, 1]; ``None`` means "no face to score", never a failure.
Times are seconds from the start of the medium; boxes are pixels ``[x1, y1, x2, y2]`` in the
displayed (rotation-corrected) frame.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "1.1"

Label = Literal["likely-real", "uncertain", "likely-manipulated", "no-faces"]
WeightsStatus = Literal["trained", "random-init"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScoreBands(_Model):
    """Plain-language bands for non-experts; the thresholds are stated with every result."""

    real_below: float = Field(0.3, ge=0.0, le=1.0)
    manipulated_from: float = Field(0.7, ge=0.0, le=1.0)

    def label(self, score: float | None) -> Label:
        if score is None:
            return "no-faces"
        if score >= self.manipulated_from:
            return "likely-manipulated"
        if score < self.real_below:
            return "likely-real"
        return "uncertain"


class SourceInfo(_Model):
    url: str | None = None
    path: str | None = None
    sha256: str
    media_type: Literal["image", "video"]
    format: str
    size_bytes: int
    width: int
    height: int
    fps: float | None = None
    duration_s: float | None = None
    frame_count: int | None = None
    #: Frames the analysis retrieved (both passes: 1 fps for shots, up to 64 per shot for faces).
    frames_sampled: int = 0


class FaceResult(_Model):
    frame_index: int
    time_s: float
    box: tuple[float, float, float, float]
    detection_confidence: float
    score: float = Field(ge=0.0, le=1.0)
    member_scores: dict[str, float]
    crop: str | None = None


class ClusterResult(_Model):
    """A face track: faces of one person in one shot (paper 3.1, face clustering)."""

    id: int
    score: float = Field(ge=0.0, le=1.0)
    faces: list[FaceResult]
    #: Collage of the track's face crops (the UI's "Shot" view) and one full keyframe.
    collage: str | None = None
    keyframe: str | None = None
    keyframe_time_s: float | None = None


class ShotResult(_Model):
    index: int
    start_s: float
    end_s: float
    score: float | None = Field(None, ge=0.0, le=1.0)
    label: Label = "no-faces"
    sampled_frames: int
    faces_detected: int
    clusters: list[ClusterResult]
    #: Tracks dropped for having fewer faces than 20% of the shot's sampled frames.
    dropped_clusters: int = 0
    gallery: str | None = None
    thumbnail: str | None = None


class ModelInfo(_Model):
    """A member that scored: identity, provenance and whether its weights are trained."""

    name: str
    version: str
    weights: WeightsStatus
    sha256: str | None
    backend: str
    trained_on: str
    architecture: str = ""
    licence: str = ""
    #: Where the weights come from (upstream project and file), as the manifest records it.
    source: str = ""
    #: Plain words on what the member is and where it is weak.
    description: str = ""
    #: Weight in the ensemble's weighted mean.
    weight: float = 1.0


class Methods(_Model):
    segmentation: str
    face_detector: str
    tracking_cues: list[str]
    aggregation: str = "face -> track (mean) -> shot (max) -> medium (max)"
    sample_rate_hz: float | None = None
    max_frames_per_shot: int = 64


class Result(_Model):
    schema_version: str = SCHEMA_VERSION
    service_version: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    source: SourceInfo
    score: float | None = Field(None, ge=0.0, le=1.0)
    label: Label
    bands: ScoreBands
    #: Index of the shot whose score is the medium's score (None without faces).
    top_shot: int | None = None
    shots: list[ShotResult]
    faces_total: int
    models: list[ModelInfo]
    #: The named ensemble that scored (``paper``, ``mesonet``, a user's own).
    ensemble: str | None = None
    methods: Methods
    #: Seconds per stage, in order.
    timings: dict[str, float]
    warnings: list[str]
