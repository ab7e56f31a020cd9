"""Face crops -> normalised tensors, on the device, from a member's spec."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.errors import BadInputError


def crops_to_unit_batch(crops: Sequence[np.ndarray], size: int, device: torch.device) -> Tensor:
    """Resize each crop to ``size`` and stack: ``(N, 3, size, size)`` float32 in [0, 1].

    ``crops`` are ``(H, W, 3)`` uint8 RGB arrays of any size. Each crop is resized on its own
    (bilinear with antialiasing), so a face's tensor does not depend on the rest of the batch.
    """
    out = torch.empty((len(crops), 3, size, size), dtype=torch.float32, device=device)
    for i, crop in enumerate(crops):
        if (
            crop.dtype != np.uint8
            or crop.ndim != 3
            or crop.shape[2] != 3
            or min(crop.shape[:2]) < 1
        ):
            raise BadInputError(
                f"face crop {i} must be an (H, W, 3) uint8 array, got {crop.dtype} {crop.shape}"
            )
        # Crops may be read-only views (e.g. of a decoded frame): copy those rather than alias.
        t = torch.from_numpy(np.require(crop, requirements=["C", "W"])).to(device)
        t = t.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        if t.shape[-2:] != (size, size):
            t = F.interpolate(
                t, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        out[i] = t[0].clamp_(0.0, 1.0)
    return out


def normalise(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(x - mean) / std`` per channel; differentiable (used inside the ART wrapper too)."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s
