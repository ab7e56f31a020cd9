"""How visible an attack is, per face: perturbation norms, PSNR and SSIM, and the perturbation
made visible (paper 4.2.3).

Crops are ``(N, 3, H, W)`` float in [0, 1] (the detectors' input space, where the attack works),
so norms are in those units: a norm-inf of 0.2 is 51 grey levels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: SSIM constants of Wang et al. (2004) for a data range of 1.
_SSIM_K1, _SSIM_K2 = 0.01, 0.03
_SSIM_WINDOW, _SSIM_SIGMA = 11, 1.5


def _as_tensor(x: Any) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.detach().to(torch.float64)


def _check_pair(clean: torch.Tensor, attacked: torch.Tensor) -> None:
    if clean.shape != attacked.shape or clean.ndim != 4:
        raise ValueError(
            f"clean and attacked must be (N, C, H, W) of equal shape, got "
            f"{tuple(clean.shape)} and {tuple(attacked.shape)}"
        )


def perturbation_norms(clean: Any, attacked: Any) -> dict[str, np.ndarray]:
    """L1, L2 and Linf norms of ``attacked - clean`` per face.

    Args:
        clean, attacked: ``(N, C, H, W)`` float in [0, 1] (tensor or array).

    Returns:
        ``{"l1": (N,), "l2": (N,), "linf": (N,)}`` float64, over all ``C*H*W`` values of a face.
    """
    a, b = _as_tensor(clean), _as_tensor(attacked)
    _check_pair(a, b)
    delta = (b - a).reshape(len(a), -1)
    return {
        "l1": delta.abs().sum(dim=1).numpy(),
        "l2": delta.pow(2).sum(dim=1).sqrt().numpy(),
        "linf": delta.abs().amax(dim=1).numpy() if delta.shape[1] else np.zeros(len(a)),
    }


def psnr(clean: Any, attacked: Any) -> np.ndarray:
    """Peak signal-to-noise ratio per face, in dB, for a peak of 1.0; ``inf`` when identical.

    Args:
        clean, attacked: ``(N, C, H, W)`` float in [0, 1].

    Returns:
        ``(N,)`` float64.
    """
    a, b = _as_tensor(clean), _as_tensor(attacked)
    _check_pair(a, b)
    mse = (b - a).pow(2).reshape(len(a), -1).mean(dim=1).numpy()
    with np.errstate(divide="ignore"):
        return np.where(mse > 0, -10.0 * np.log10(np.maximum(mse, 1e-300)), np.inf)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def ssim(clean: Any, attacked: Any) -> np.ndarray:
    """Structural similarity per face (Wang et al. 2004), mean over channels, in [-1, 1].

    The reference formulation: an 11x11 Gaussian window with sigma 1.5, ``K1 = 0.01``,
    ``K2 = 0.03``, data range 1, and statistics only where the window fits inside the image
    ("valid", as in the authors' MATLAB code). Images smaller than 11 pixels use the largest odd
    window that fits. 1.0 means identical.

    Args:
        clean, attacked: ``(N, C, H, W)`` float in [0, 1].

    Returns:
        ``(N,)`` float64.
    """
    a, b = _as_tensor(clean), _as_tensor(attacked)
    _check_pair(a, b)
    n, c, h, w = a.shape
    size = min(_SSIM_WINDOW, h, w)
    size -= 1 - size % 2  # odd
    g = _gaussian_window(size, _SSIM_SIGMA if size == _SSIM_WINDOW else size / 7.0)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, size, size).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)

    c1, c2 = _SSIM_K1**2, _SSIM_K2**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return value.reshape(n, -1).mean(dim=1).numpy()


def amplify(delta: np.ndarray) -> tuple[np.ndarray, float]:
    """A perturbation made visible: ``(H, W, 3)`` float -> uint8 image and the factor used.

    Grey (128) is no change; the largest change in either direction reaches 0 or 255. Returns
    the image and the amplification factor (how many times larger than life it is shown).
    """
    peak = float(np.abs(delta).max()) if delta.size else 0.0
    factor = 0.5 / peak if peak > 0 else 1.0
    image = np.clip(0.5 + delta * factor, 0.0, 1.0)
    return (image * 255.0 + 0.5).astype(np.uint8), factor
