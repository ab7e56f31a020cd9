"""The architecture registry: every network a member can be, by name.

A name maps to the builder that makes its network from a :class:`~pipeline.models.spec.MemberSpec`
(``module:function``, imported on first use so that reading a manifest imports no network code).
A builder returns the *raw* network, whose state dict is what checkpoints hold and whose output is
the upstream convention (one logit, or one logit per class); :func:`build_network` wraps it into
a :class:`~pipeline.models.outputs.DetectorNet`, which turns that output into the one "fake"
logit every runner, export and attack works with.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from pipeline.models.outputs import DetectorNet
    from pipeline.models.spec import MemberSpec

#: Architecture name -> ``module:function`` of its builder ``(spec) -> nn.Module``.
ARCHITECTURES: dict[str, str] = {
    # Paper 3.2, models 1 and 5: a timm EfficientNet with a one-logit head.
    "efficientnet": "pipeline.models.networks:build_efficientnet",
    # Paper 3.2, models 2-4: EfficientNet region activations -> DETR head(s).
    "detr": "pipeline.models.networks:build_detr",
    # Any timm classifier, ``backbone`` its name, ``num_classes`` logits (options: global_pool).
    "timm": "pipeline.models.networks:build_timm",
    # MesoNet (Afchar et al. 2018), the Keras originals rebuilt in torch.
    "meso4": "pipeline.models.mesonet:build_meso4",
    "mesoinception4": "pipeline.models.mesonet:build_mesoinception4",
    # EfficientNets as efficientnet_pytorch builds them (static 'same' padding, optional
    # unpadded stem, attention, siamese head): SBI, icpr2020dfdc, DeepfakeBench.
    "effnet_pt": "pipeline.models.effnet_compat:build_effnet_pt",
    # Cadene-style Xception (timm legacy_xception): icpr2020dfdc, DeepfakeBench.
    "xception": "pipeline.models.xception:build_xception",
}


def builder(architecture: str) -> Callable[[MemberSpec], nn.Module]:
    """The builder function of ``architecture`` (a name in :data:`ARCHITECTURES`)."""
    module_name, _, function = ARCHITECTURES[architecture].partition(":")
    return getattr(importlib.import_module(module_name), function)


def init_seed(spec: MemberSpec) -> int:
    """Seed for random initialisation, fixed by the member's name and architecture.

    Untrained members must still give the same scores in every process (CLI, Serve replicas,
    Ray Data actors), so their initialisation cannot depend on the global RNG state.
    """
    digest = hashlib.sha256(f"{spec.name}:{spec.architecture_digest()}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def build_network(spec: MemberSpec) -> DetectorNet:
    """The member's network, randomly initialised with :func:`init_seed`, in eval mode.

    ``(N, 3, S, S)`` normalised float -> ``(N,)`` logit of "fake"; its ``state_dict`` is the raw
    network's (what checkpoints hold).
    """
    import torch

    from pipeline.models.outputs import DetectorNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed(spec))
        body = builder(spec.architecture)(spec)
    return DetectorNet(body, spec).eval()
