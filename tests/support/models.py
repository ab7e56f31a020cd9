"""Tiny model directories with checkpoints the tests create (no weights can be downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline.models.checkpoint import write_state_dict
from pipeline.models.manifest import ModelDirectory
from pipeline.models.networks import build_network
from pipeline.models.spec import MemberSpec


def spread_head(net: nn.Module, seed: int) -> nn.Module:
    """Give the final layer large random weights so scores vary from face to face.

    Randomly initialised members score every face almost the same, which would let a broken
    batching or backend pass an equality test by accident.
    """
    gen = torch.Generator().manual_seed(seed)
    # Calibrate batch-norm statistics on smooth random images, as training would: with the
    # initial running statistics the backbone's features hardly depend on the input.
    size = 64
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    net.train()
    with torch.no_grad():
        for _ in range(2):
            base = torch.rand((8, 3, 4, 4), generator=gen)
            x = nn.functional.interpolate(base, size=(size, size), mode="bilinear")
            net((x - 0.45) / 0.225)
    net.eval()
    with torch.no_grad():
        for name, module in net.named_modules():
            if isinstance(module, nn.Linear) and (
                name.endswith("classifier") or "class_embed" in name
            ):
                std = 0.5 / module.in_features**0.5
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std)
                module.bias.zero_()
    return net


def trained_checkpoint(spec: MemberSpec, path: Path, seed: int = 0) -> Path:
    write_state_dict(spread_head(build_network(spec), seed), path)
    return path


def make_model_dir(
    root: Path, *, input_size: int = 64, with_weights: bool = True
) -> ModelDirectory:
    """A tiny five-member model directory; with weights, each member gets a test-made checkpoint."""
    directory = ModelDirectory(root)
    manifest = directory.init("tiny", input_size)
    if with_weights:
        for i, spec in enumerate(manifest.members):
            src = trained_checkpoint(spec, root / "incoming" / f"{spec.name}.pt", seed=i)
            directory.import_checkpoint(spec.name, src, version="0.0.1", trained_on="test fixture")
    return directory
