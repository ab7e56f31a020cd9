"""Face crops -> ``(N, 3, size, size)`` float32 in [0, 1], in numpy alone (no torch).

The same numbers as :func:`pipeline.models.preprocess.crops_to_unit_batch` (to 1e-6), for
runtimes that carry no torch (ONNX Runtime, OpenVINO). Torch's antialiased bilinear resize
(``F.interpolate(..., mode="bilinear", antialias=True, align_corners=False)`` on CPU) is
separable, width first, then height; an axis whose size does not change is skipped. Along an
axis, output pixel ``i`` is a normalised triangle filter centred on ``scale * (i + 0.5)``
(``scale = in / out``), widened to ``scale`` input pixels on each side when shrinking
(``HelperInterpBase::_compute_indices_min_size_weights_aa`` in ATen's
``native/cpu/UpSampleKernel.cpp``). Torch computes those weights in float32, and the float32
rounding of a centre far from the origin moves a weight by up to ~2e-5, so the taps below repeat
torch's float32 arithmetic step by step (they equal torch's bit for bit); the sums run in float64
(torch's float32 sums differ from them by ~2e-7 at most, measured).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import BadInputError

if TYPE_CHECKING:
    # The type alone: at runtime this module needs numpy and the standard library only.
    from pipeline.models.spec import ResizeRule

_F32 = np.float32
#: Gathered tap values per block of output rows (float32: 256 KiB).
_BLOCK = 1 << 16


def centre_window(h: int, w: int, fraction: float) -> tuple[slice, slice]:
    """Rows and columns of the centred ``fraction`` of an ``h x w`` image (at least one pixel).

    The one rounding rule for a member's own square inside the pipeline's wider crop, used on
    uint8 crops (:func:`pipeline.models.member.member_crops`) and on tensors
    (:func:`pipeline.models.preprocess.centre_crop_tensor`) alike."""
    side_h, side_w = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = (h - side_h) // 2, (w - side_w) // 2
    return slice(top, top + side_h), slice(left, left + side_w)


@lru_cache(maxsize=256)
def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Torch's antialiased bilinear taps from ``n_in`` to ``n_out`` pixels along one axis.

    Returns ``(index, weight)``, both ``(n_out, K)``: output pixel ``i`` is
    ``sum_k weight[i, k] * input[index[i, k]]``. Weights are torch's float32 values held in
    float64; padding taps have weight 0 and a valid index. Read-only, since the cache shares them.
    """
    scale = _F32(n_in) / _F32(n_out)
    support = scale if scale >= 1.0 else _F32(1.0)
    invscale = _F32(1.0 / float(scale)) if scale >= 1.0 else _F32(1.0)
    max_taps = int(np.ceil(support)) * 2 + 1
    # float(scale) * (i + 0.5) is a double product, rounded once to float32 (as in torch).
    center = (float(scale) * (np.arange(n_out, dtype=np.float64) + 0.5)).astype(_F32)
    xmin = np.maximum(np.trunc((center - support).astype(np.float64) + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc((center + support).astype(np.float64) + 0.5), n_in)
    xsize = np.clip(xmax.astype(np.int64) - xmin, 0, max_taps)
    j = np.arange(max_taps, dtype=np.int64)
    d = (xmin[:, None] + j).astype(_F32) - center[:, None]  # float32 difference
    x = np.abs(((d.astype(np.float64) + 0.5) * float(invscale)).astype(_F32))
    w = np.where((x < 1.0) & (j < xsize[:, None]), _F32(1.0) - x, _F32(0.0)).astype(_F32)
    # Torch adds the weights one by one in float32 (cumsum is sequential; sum is pairwise).
    total = np.cumsum(w, axis=1, dtype=_F32)[:, -1:]
    w = np.divide(w, total, out=w, where=total != 0.0)
    index = np.minimum(xmin[:, None] + j, n_in - 1)
    weight = w.astype(np.float64)
    index.flags.writeable = False
    weight.flags.writeable = False
    return index, weight


def _resize_rows(x: np.ndarray, n_out: int) -> np.ndarray:
    """``x`` ``(n_in, M)`` float32 resized along its first axis to ``(n_out, M)`` float32.

    Summed in float64 (torch sums in float32), rounded to float32 as torch's result is. Along the
    first axis, so that each tap gathers whole contiguous rows; a block of output rows at a time,
    so that the gathered taps stay small (fresh megabytes cost more in page faults here than the
    arithmetic does).
    """
    index, weight = _taps(x.shape[0], n_out)
    out = np.empty((n_out, x.shape[1]), dtype=_F32)
    step = max(1, _BLOCK // (index.shape[1] * x.shape[1]))
    for start in range(0, n_out, step):
        rows = slice(start, start + step)
        taps = x[index[rows]]  # (rows, K, M)
        out[rows] = np.einsum("okm,ok->om", taps, weight[rows], dtype=np.float64)
    return out


def _resize(crop: np.ndarray, th: int, tw: int) -> np.ndarray:
    """``crop`` ``(H, W, 3)`` uint8 -> ``(th, tw, 3)`` float32 in [0, 1], as torch resizes it:
    width first, then height, each only when it changes."""
    h, w, _ = crop.shape
    if tw != w:
        by_column = np.ascontiguousarray(crop.transpose(1, 0, 2), dtype=_F32).reshape(w, h * 3)
        by_column /= _F32(255.0)  # in float32, as torch divides
        image = _resize_rows(by_column, tw).reshape(tw, h, 3).transpose(1, 0, 2)
    else:
        image = crop.astype(_F32)
        image /= _F32(255.0)
    if th != h:
        image = _resize_rows(image.reshape(h, tw * 3), th).reshape(th, tw, 3)
        if tw == 1:
            # Torch (CPU, seen on 2.14) fills a one-pixel-wide output's every row with the first
            # row's value when the height changes; repeated so the two agree on such crops.
            image[1:] = image[:1]
    return image


def unit_batch(
    crops: Sequence[np.ndarray], size: int, resize: ResizeRule = "stretch"
) -> np.ndarray:
    """Resize each crop to ``size`` and stack: ``(N, 3, size, size)`` float32 in [0, 1].

    ``crops`` are ``(H, W, 3)`` uint8 RGB arrays of any size. Each crop is resized on its own
    (bilinear with antialiasing, as torch does it), so a face's array does not depend on the rest
    of the batch. ``resize="letterbox"`` keeps a crop's aspect ratio (longest side to ``size``)
    and centres it on zeros; ``"stretch"`` fills the square. Equal to
    :func:`pipeline.models.preprocess.crops_to_unit_batch` to 1e-6.
    """
    out = np.zeros((len(crops), 3, size, size), dtype=np.float32)
    for i, crop in enumerate(crops):
        th, tw, top, left = fitted_size(i, crop, size, resize)
        if crop.shape[:2] == (th, tw):
            image = crop.astype(_F32)
            image /= _F32(255.0)  # in float32, as torch divides
        else:
            image = _resize(crop, th, tw)
        np.clip(image, 0.0, 1.0, out=image)
        out[i, :, top : top + th, left : left + tw] = image.transpose(2, 0, 1)
    return out


def fitted_size(
    i: int, crop: np.ndarray, size: int, resize: ResizeRule
) -> tuple[int, int, int, int]:
    """Where crop ``i`` goes in its ``size x size`` square: ``(height, width, top, left)`` of
    the resized crop (``letterbox``: aspect ratio kept, longest side ``size``; ``stretch``: the
    whole square). Raises :class:`BadInputError` unless the crop is ``(H, W, 3)`` uint8."""
    if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3 or min(crop.shape[:2]) < 1:
        raise BadInputError(
            f"face crop {i} must be an (H, W, 3) uint8 array, got {crop.dtype} {crop.shape}"
        )
    h, w = crop.shape[:2]
    th, tw = size, size
    if resize == "letterbox" and h != w:
        scale = size / max(h, w)
        th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    return th, tw, (size - th) // 2, (size - tw) // 2
