"""Shared pieces of the importer tests: real face crops, and random weights that cannot hide errors.

No trained checkpoint of these families can be downloaded here, so each test builds the upstream
network with random weights. With default initialisation (BN mean 0, variance 1) a deep
EfficientNet's output hardly depends on its input, and a wrong pad or a swapped key would still
give the "same" score; :func:`randomise` therefore randomises every parameter and sets the
batch-norm statistics from real faces, then perturbs them, so every layer matters.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from pipeline.models.preprocess import crops_to_unit_batch

REPO_ROOT = Path(__file__).resolve().parents[4]
# The golden inputs sit beside the shared media (``../shared/weights`` next to ``../shared/data``).
SHARED_DATA = Path(os.environ.get("DFD_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
GOLDEN_INPUTS = SHARED_DATA.parent / "weights" / "golden" / "inputs"
#: Two 256x256 real faces (a DFDC fake and a DFDC real frame's face crop).
FACES = ("dfdc_fake_abqwwspghj-001-00.png", "dfdc_real_abarnvbtwb-000-00.png")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def faces(size: int, count: int = 2) -> Tensor:
    """The first ``count`` golden faces at ``size``: ``(count, 3, size, size)`` in [0, 1]."""
    crops = []
    for name in FACES[:count]:
        path = GOLDEN_INPUTS / name
        if not path.is_file():
            raise FileNotFoundError(f"golden input {path} missing; set DFD_SHARED_DATA")
        crops.append(np.asarray(Image.open(path).convert("RGB")))
    return crops_to_unit_batch(crops, size, torch.device("cpu"))


def calibration_batch(size: int) -> Tensor:
    """``(8, 3, size, size)`` in [0, 1]: the two faces and their mirror images, each also at
    gamma 0.8.

    Batch-norm statistics measured on two faces only are degenerate (a ``BatchNorm1d`` maps
    two samples to +-1 in every feature); eight views of them are enough to keep scores
    moderate.
    """
    x = faces(size)
    views = torch.cat([x, x.flip(-1)])
    return torch.cat([views, views.pow(0.8)])


def normalise(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Written out here, not taken from the pipeline: the reference side's own normalisation."""
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def randomise(model: nn.Module, calibration: Tensor, seed: int) -> nn.Module:
    """Random weights everywhere, batch-norm statistics from ``calibration`` and then perturbed.

    ``calibration``: ``(N, 3, S, S)`` inputs as the model expects them, N >= 2 (see
    :func:`calibration_batch`). Every affine
    parameter, bias and weight is redrawn; the running mean and variance are measured on
    ``calibration`` (so activations stay in a sane range at any depth) and then shifted and
    scaled at random per channel (so statistics copied to the wrong layer or not at all show).
    Returns ``model`` in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    batch_norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=gen))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                w = torch.randn(module.weight.shape, generator=gen) * (1.0 / fan_in) ** 0.5
                module.weight.copy_(w)
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
        # Only the batch norms in training mode: dropout and drop-connect stay off.
        model.eval()
        for bn in batch_norms:
            bn.reset_running_stats()
            bn.momentum = None  # the plain average over the calibration pass
            bn.train()
        model(calibration)
        model.eval()
        for bn in batch_norms:
            assert bn.running_mean is not None and bn.running_var is not None
            sd = bn.running_var.sqrt()
            bn.running_mean.add_(0.02 * sd * torch.randn(sd.shape, generator=gen))
            bn.running_var.mul_(0.95 + 0.1 * torch.rand(sd.shape, generator=gen))
            assert bn.num_batches_tracked is not None
            bn.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (1,), generator=gen)))
    return model


def assert_close_probabilities(reference: Tensor, ours: Tensor, atol: float = 1e-5) -> float:
    """``(N,)`` P(fake) of both sides equal within ``atol``, and informative (not saturated,
    different per face), so that equality means something. Returns the largest difference."""
    assert reference.shape == ours.shape, (reference.shape, ours.shape)
    diff = float((reference - ours).abs().max())
    assert diff <= atol, f"P(fake) differs by {diff:.3g}: reference {reference}, ours {ours}"
    assert bool(((reference > 1e-3) & (reference < 1 - 1e-3)).all()), f"saturated: {reference}"
    if reference.numel() > 1:
        assert float(reference.max() - reference.min()) > 1e-3, f"input-blind: {reference}"
    return diff
