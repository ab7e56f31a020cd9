"""Face crops -> normalised tensors, on the device, from a member's spec."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.errors import BadInputError
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
        h, w = t.shape[-2:]
        th, tw = size, size
        if resize == "letterbox" and h != w:
            scale = size / max(h, w)
            th, tw = max(1, round(h * scale)), max(1, round(w * scale))
        if (h, w) != (th, tw):
            t = F.interpolate(
                t, size=(th, tw), mode="bilinear", antialias=True, align_corners=False
            )
        top, left = (size - th) // 2, (size - tw) // 2
        out[i, :, top : top + th, left : left + tw] = t[0].clamp_(0.0, 1.0)
    return out


def centre_window(h: int, w: int, fraction: float) -> tuple[slice, slice]:
    """Rows and columns of the centred ``fraction`` of an ``h x w`` image (at least one pixel).

    The one rounding rule for a member's own square inside the pipeline's wider crop, used on
    uint8 crops (:func:`pipeline.models.ensemble.member_crops`) and on tensors alike."""
    side_h, side_w = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = (h - side_h) // 2, (w - side_w) // 2
    return slice(top, top + side_h), slice(left, left + side_w)


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
