"""The member networks: normalised face batches in, one logit per face out.

Each network takes ``(N, 3, S, S)`` float tensors already normalised by its spec's mean and std and
returns ``(N,)`` logits. Backbones come from timm, built without pretrained weights (nothing is
downloaded at run time; trained weights arrive through checkpoints).
"""

from __future__ import annotations

import hashlib

import timm
import torch
from torch import Tensor, nn

from pipeline.models.detr import DetrHead
from pipeline.models.spec import MemberSpec


class EfficientNetClassifier(nn.Module):
    """Models 1 and 5: a timm EfficientNet whose classifier is one logit."""

    def __init__(self, backbone: str) -> None:
        super().__init__()
        self.net = timm.create_model(backbone, pretrained=False, num_classes=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


class DetrClassifier(nn.Module):
    """Models 2-4: EfficientNet region activations -> DETR head(s) -> one logit.

    One head per entry of ``spec.head.stages``; their logits are averaged (model 4 has two).
    """

    def __init__(self, spec: MemberSpec) -> None:
        super().__init__()
        assert spec.head is not None
        self.backbone = timm.create_model(
            spec.backbone, pretrained=False, features_only=True, out_indices=spec.head.stages
        )
        channels = self.backbone.feature_info.channels()
        self.heads = nn.ModuleList(DetrHead(c, spec.head) for c in channels)

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone(x)
        logits = [head(f) for head, f in zip(self.heads, feats, strict=True)]
        return torch.stack(logits, dim=0).mean(dim=0)


def init_seed(spec: MemberSpec) -> int:
    """Seed for random initialisation, fixed by the member's name and architecture.

    Untrained members must still give the same scores in every process (CLI, Serve replicas,
    Ray Data actors), so their initialisation cannot depend on the global RNG state.
    """
    digest = hashlib.sha256(f"{spec.name}:{spec.architecture_digest()}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def build_network(spec: MemberSpec) -> nn.Module:
    """Build the member's network, randomly initialised with :func:`init_seed`, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed(spec))
        net: nn.Module = (
            EfficientNetClassifier(spec.backbone)
            if spec.architecture == "efficientnet"
            else DetrClassifier(spec)
        )
    return net.eval()
