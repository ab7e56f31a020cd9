"""The member networks: normalised face batches in, one logit per face out.

Each network takes ``(N, 3, S, S)`` float tensors already normalised by its spec's mean and std and
returns ``(N,)`` logits. Backbones come from timm, built without pretrained weights (nothing is
downloaded at run time; trained weights arrive through checkpoints).
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import Tensor, nn

from pipeline.errors import ConfigError
from pipeline.models.detr import DetrHead
from pipeline.models.registry import build_network, init_seed
from pipeline.models.spec import MemberSpec

__all__ = [
    "DetrClassifier",
    "EfficientNetClassifier",
    "build_network",
    "calibrate_untrained",
    "init_seed",
]


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
        channels: list[int] = self.backbone.feature_info.channels()  # type: ignore[union-attr,operator]
        self.heads = nn.ModuleList(DetrHead(c, spec.head) for c in channels)

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone(x)
        logits = [head(f) for head, f in zip(self.heads, feats, strict=True)]
        return torch.stack(logits, dim=0).mean(dim=0)


def build_efficientnet(spec: MemberSpec) -> nn.Module:
    return EfficientNetClassifier(spec.backbone)


def build_detr(spec: MemberSpec) -> nn.Module:
    return DetrClassifier(spec)


def build_timm(spec: MemberSpec) -> nn.Module:
    """Any timm classifier: ``spec.backbone`` with ``spec.num_classes`` logits.

    ``options``: ``global_pool`` (e.g. ``"avg"`` for a ViT pooled over patch tokens),
    ``drop_rate`` and ``drop_path_rate`` (inactive in eval mode; kept for training).
    """
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": spec.num_classes}
    for key in ("global_pool", "drop_rate", "drop_path_rate"):
        if key in spec.options:
            kwargs[key] = spec.options[key]
    unknown = set(spec.options) - {"global_pool", "drop_rate", "drop_path_rate"}
    if unknown:
        raise ConfigError(f"member {spec.name}: unknown timm options {sorted(unknown)}")
    return timm.create_model(spec.backbone, **kwargs)


def calibrate_untrained(
    net: nn.Module, spec: MemberSpec, batches: int = 4, batch_size: int = 8
) -> nn.Module:
    """Set batch-norm statistics of an *untrained* network from smooth synthetic images.

    With timm's initial running statistics (mean 0, variance 1) deep untrained backbones blow up
    in eval mode (EfficientNetV2-M reaches logits of 1e7), which makes their outputs numerically
    meaningless and backends disagree wildly. Training would set these statistics; this does the
    same on deterministic synthetic inputs, so an untrained member behaves like a network rather
    than an overflow. It does not make its scores informative.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed(spec) + 1)
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the calibration batches
        net.train()
        mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        std = torch.tensor(spec.std).view(1, 3, 1, 1)
        with torch.no_grad():
            for _ in range(batches):
                # Smooth structure plus pixel noise: no channel may end up with a near-zero
                # variance, which eval mode would amplify by 1/sqrt(eps) and turn into chaos.
                size = (spec.input_size, spec.input_size)
                base = torch.rand(batch_size, 3, 6, 6)
                x = nn.functional.interpolate(base, size=size, mode="bilinear", align_corners=False)
                x = (x + 0.15 * torch.randn(batch_size, 3, *size)).clamp(0, 1)
                net((x - mean) / std)
    return net.eval()
