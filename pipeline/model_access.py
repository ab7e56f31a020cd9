"""The models the pipeline calls, behind one interface.

``LocalModels`` runs them in this process (the CLI, tests, Ray Data actors). A Serve application
implements the same interface with deployment handles, so the orchestration in
``pipeline.analyze`` is one piece of code whichever way the models run, and the two give equal
results.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline.faces import Detection, FaceDetector, FaceSettings
from pipeline.models import Ensemble, EnsemblePrediction, InferenceSettings, MemberInfo
from pipeline.models.manifest import resolve_model_dir
from pipeline.segment import RegionFeatureExtractor, SegmentSettings, build_extractor
from pipeline.tracks import FaceEmbedder

log = logging.getLogger(__name__)

#: Optional weights looked up in ``<model dir>/aux/`` (paper 3.1: ResNet50 for segmentation,
#: InceptionResnetV1/VGGFace2 for face embeddings). Absent files select the weight-free methods.
RESNET50_FILE = "resnet50.pt"
FACENET_FILE = "inception_resnet_v1_vggface2.pt"


class PipelineModels(Protocol):
    """Everything with weights that the analysis needs."""

    segmentation_method: str
    segmentation_threshold: float
    face_detector_name: str
    has_embedder: bool
    #: The margin face crops for :meth:`score_faces` are cut at (the members' largest).
    crop_margin: float
    #: The named ensemble that scores (``paper``, ``mesonet``, ...).
    ensemble_name: str

    def region_features(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Frames ``(H, W, 3) uint8 RGB`` -> one ``(R, D)`` unit-norm descriptor set each."""
        ...

    def detect_faces(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Faces per frame (square 1.3x boxes, confidences, landmarks)."""
        ...

    def embed_faces(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, 512)`` unit-norm embeddings (only when ``has_embedder``)."""
        ...

    def score_faces(self, crops: Sequence[np.ndarray]) -> EnsemblePrediction:
        """Ensemble and per-member probabilities for face crops."""
        ...

    def model_infos(self) -> list[MemberInfo]: ...

    def warnings(self) -> list[str]: ...


class LocalModels:
    """All models in this process, loaded once and reused across analyses."""

    face_detector_name = "mtcnn (facenet-pytorch 2.5.3)"

    def __init__(
        self,
        extractor: RegionFeatureExtractor,
        detector: FaceDetector,
        ensemble: Ensemble,
        embedder: FaceEmbedder | None = None,
    ) -> None:
        self.extractor = extractor
        self.detector = detector
        self.ensemble = ensemble
        self.embedder = embedder
        self.segmentation_method = extractor.name
        self.segmentation_threshold = extractor.cut_threshold
        self.has_embedder = embedder is not None
        self.crop_margin = ensemble.crop_margin
        self.ensemble_name = ensemble.name

    @classmethod
    def load(
        cls,
        inference: InferenceSettings | None = None,
        faces: FaceSettings | None = None,
        segmentation: SegmentSettings | None = None,
        embedder_weights: Path | None = None,
    ) -> LocalModels:
        inference = inference or InferenceSettings()
        segmentation = segmentation or SegmentSettings()
        aux = resolve_model_dir(inference.model_dir).root / "aux"
        seg_weights = segmentation.weights_path or aux / RESNET50_FILE
        extractor = build_extractor(segmentation.method, seg_weights)
        embed_path = embedder_weights or aux / FACENET_FILE
        embedder = FaceEmbedder(embed_path) if embed_path.is_file() else None
        if embedder is None:
            log.info("no face-embedding weights at %s: tracks use box continuity only", embed_path)
        return cls(extractor, FaceDetector(faces), Ensemble.load(inference), embedder)

    def region_features(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.extractor(frames)

    def detect_faces(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        return self.detector.detect(frames)

    def embed_faces(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if self.embedder is None:
            raise RuntimeError("no face embedder loaded")
        return self.embedder.embed(crops)

    def score_faces(self, crops: Sequence[np.ndarray]) -> EnsemblePrediction:
        return self.ensemble.predict(crops)

    def model_infos(self) -> list[MemberInfo]:
        return self.ensemble.infos

    def warnings(self) -> list[str]:
        return self.ensemble.warnings()
