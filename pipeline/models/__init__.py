"""The five detectors of paper section 3.2 and their ensemble.

The names below load their modules on first use, so a process that only runs an exported
member (a Serve member replica: settings, manifest, ONNX Runtime) never imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.models.ensemble import Ensemble, EnsembleModule, EnsemblePrediction
    from pipeline.models.manifest import (
        Manifest,
        ModelDirectory,
        default_model_dir,
        resolve_model_dir,
    )
    from pipeline.models.member import Member, MemberInfo
    from pipeline.models.settings import InferenceSettings
    from pipeline.models.spec import DetrHeadSpec, MemberSpec, paper_members, tiny_members

#: Where each public name lives.
_HOMES = {
    "Ensemble": "ensemble",
    "EnsembleModule": "ensemble",
    "EnsemblePrediction": "ensemble",
    "Member": "member",
    "MemberInfo": "member",
    "Manifest": "manifest",
    "ModelDirectory": "manifest",
    "default_model_dir": "manifest",
    "resolve_model_dir": "manifest",
    "InferenceSettings": "settings",
    "DetrHeadSpec": "spec",
    "MemberSpec": "spec",
    "paper_members": "spec",
    "tiny_members": "spec",
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
