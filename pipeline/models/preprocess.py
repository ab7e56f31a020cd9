"""Face crops -> normalised tensors, on the device, from a member's spec."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.models.resize import centre_window, fitted_size
from pipeline.models.spec import ResizeRule


def crops_to_unit_batch(
    crops: Sequence[np.ndarray],
    size: int,
    device: torch.device,
    resize: ResizeRule = "stretch",
) -> Tensor:
    """Resize each crop to ``size`` and stack: ``(N, 3, size, size)`` float32 in [0, 1].

    ``crops`` are ``(H, W, 3)`` uint8 RGB arrays of any size. Each crop is resized on its own
    (bilinear with antialiasing), so a face's tensor does not depend on the rest of the batch.
    ``resize="letterbox"`` keeps a crop's aspect ratio (longest side to ``size``) and centres it
    on zeros; ``"stretch"`` fills the square.
    """
    out = torch.zeros((len(crops), 3, size, size), dtype=torch.float32, device=device)
    for i, crop in enumerate(crops):
        th, tw, top, left = fitted_size(i, crop, size, resize)
        # Crops may be read-only views (e.g. of a decoded frame): copy those rather than alias.
        t = torch.from_numpy(np.require(crop, requirements=["C", "W"])).to(device)
        t = t.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        if crop.shape[:2] != (th, tw):
            t = F.interpolate(
                t, size=(th, tw), mode="bilinear", antialias=True, align_corners=False
            )
        out[i, :, top : top + th, left : left + tw] = t[0].clamp_(0.0, 1.0)
    return out


def centre_crop_tensor(x: Tensor, fraction: float) -> Tensor:
    """The centred ``fraction`` of ``x`` ``(N, C, H, W)`` along both sides (differentiable;
    ``x`` itself when ``fraction >= 1``)."""
    if fraction >= 1.0:
        return x
    rows, cols = centre_window(x.shape[-2], x.shape[-1], fraction)
    return x[..., rows, cols]


def normalise(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(x - mean) / std`` per channel; differentiable (used inside the ART wrapper too)."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s
