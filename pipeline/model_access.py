"""The models the pipeline calls, behind one interface.

``LocalModels`` runs them in this process (the CLI, tests, Ray Data actors). A Serve application
implements the same interface with deployment handles, so the orchestration in
``pipeline.analyze`` is one piece of code whichever way the models run, and the two give equal
results.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Literal, Protocol, TypeVar

import numpy as np

from pipeline.faces import Detection, FaceDetector, FaceSettings
from pipeline.models import Ensemble, EnsemblePrediction, InferenceSettings, MemberInfo
from pipeline.models.manifest import resolve_model_dir
from pipeline.models.member import context_margin, resolve_ensemble
from pipeline.models.spec import PAPER_CROP_MARGIN
from pipeline.segment import RegionFeatureExtractor, SegmentSettings, build_extractor
from pipeline.tracks import FaceEmbedder

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Optional weights looked up in ``<model dir>/aux/`` (paper 3.1: ResNet50 for segmentation,
#: InceptionResnetV1/VGGFace2 for face embeddings). Absent files select the weight-free methods.
RESNET50_FILE = "resnet50.pt"
FACENET_FILE = "inception_resnet_v1_vggface2.pt"

#: What :meth:`LocalModels.load` can load: shot-boundary features, the face detector, the face
#: embedder (when its weights are installed) and the ensemble.
ModelPart = Literal["features", "faces", "embedder", "ensemble"]
ALL_PARTS: frozenset[ModelPart] = frozenset({"features", "faces", "embedder", "ensemble"})


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
        extractor: RegionFeatureExtractor | None,
        detector: FaceDetector | None,
        ensemble: Ensemble | None,
        embedder: FaceEmbedder | None = None,
        *,
        crop_margin: float | None = None,
        ensemble_name: str | None = None,
    ) -> None:
        """Any part may be absent (a stage of a distributed run loads only the ones it calls;
        calling an absent one raises). Without the ensemble, ``crop_margin`` and
        ``ensemble_name`` say what it would be."""
        self.extractor = extractor
        self.detector = detector
        self.ensemble = ensemble
        self.embedder = embedder
        self.segmentation_method = extractor.name if extractor else ""
        self.segmentation_threshold = extractor.cut_threshold if extractor else 0.0
        self.has_embedder = embedder is not None
        margin = ensemble.crop_margin if ensemble else crop_margin
        self.crop_margin = PAPER_CROP_MARGIN if margin is None else margin
        self.ensemble_name = ensemble.name if ensemble else (ensemble_name or "")

    @classmethod
    def load(
        cls,
        inference: InferenceSettings | None = None,
        faces: FaceSettings | None = None,
        segmentation: SegmentSettings | None = None,
        embedder_weights: Path | None = None,
        *,
        parts: Collection[ModelPart] = ALL_PARTS,
    ) -> LocalModels:
        """Load ``parts`` (default: all) for these settings. The embedder is loaded only when
        its weights are installed (``<model dir>/aux/``); without it tracks use box overlap."""
        inference = inference or InferenceSettings()
        segmentation = segmentation or SegmentSettings()
        aux = resolve_model_dir(inference.model_dir).root / "aux"
        extractor = None
        if "features" in parts:
            seg_weights = segmentation.weights_path or aux / RESNET50_FILE
            extractor = build_extractor(segmentation.method, seg_weights)
        embedder = None
        if "embedder" in parts:
            embed_path = embedder_weights or aux / FACENET_FILE
            embedder = FaceEmbedder(embed_path) if embed_path.is_file() else None
            if embedder is None:
                log.info("no face-embedding weights at %s: tracks use box continuity", embed_path)
        detector = FaceDetector(faces) if "faces" in parts else None
        if "ensemble" in parts:
            return cls(extractor, detector, Ensemble.load(inference), embedder)
        _, name, specs = resolve_ensemble(inference)  # the manifest only: no network, no hashing
        return cls(
            extractor,
            detector,
            None,
            embedder,
            crop_margin=context_margin(specs),
            ensemble_name=name,
        )

    def region_features(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        return _loaded(self.extractor, "features")(frames)

    def detect_faces(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        return _loaded(self.detector, "faces").detect(frames)

    def embed_faces(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if self.embedder is None:
            raise RuntimeError("no face embedder loaded")
        return self.embedder.embed(crops)

    def score_faces(self, crops: Sequence[np.ndarray]) -> EnsemblePrediction:
        return _loaded(self.ensemble, "ensemble").predict(crops)

    def model_infos(self) -> list[MemberInfo]:
        return _loaded(self.ensemble, "ensemble").infos

    def warnings(self) -> list[str]:
        return _loaded(self.ensemble, "ensemble").warnings()


def _loaded(part: T | None, name: ModelPart) -> T:
    if part is None:
        raise RuntimeError(f"the {name} part is not loaded in this process")
    return part
