"""The five detectors of paper section 3.2 and their ensemble."""

from pipeline.models.ensemble import (
    Ensemble,
    EnsembleModule,
    EnsemblePrediction,
    Member,
    MemberInfo,
)
from pipeline.models.manifest import Manifest, ModelDirectory, default_model_dir, resolve_model_dir
from pipeline.models.settings import InferenceSettings
from pipeline.models.spec import DetrHeadSpec, MemberSpec, paper_members, tiny_members

__all__ = [
    "DetrHeadSpec",
    "Ensemble",
    "EnsembleModule",
    "EnsemblePrediction",
    "InferenceSettings",
    "Manifest",
    "Member",
    "MemberInfo",
    "MemberSpec",
    "ModelDirectory",
    "default_model_dir",
    "paper_members",
    "resolve_model_dir",
    "tiny_members",
]
