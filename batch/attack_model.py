"""The detector as ART sees it: the ensemble as a two-class classifier with gradients, and the
scorer that re-scores attacked crops exactly as the clean run does.

The attack works in the detectors' input space: each crop resized to the members' input size,
``(3, S, S)`` float in [0, 1]; normalisation happens inside the wrapped model, so gradients and
the ``eps`` ball live in pixel units.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evaluation.attack_runs import AttackSettings
from pipeline.errors import ConfigError
from pipeline.models import Ensemble
from pipeline.models.ensemble import EnsembleModule
from pipeline.models.member import sigmoid
from pipeline.models.preprocess import centre_crop_tensor

#: Class indices of the two-class view of the detector given to ART.
REAL, FAKE = 0, 1

#: ``(N, 3, S, S)`` float in [0, 1] -> ``(N, M)`` member probabilities, float64, no gradients.
Scorer = Callable[[Tensor], np.ndarray]


class TwoClassLogits(nn.Module):
    """Member logits ``(N, M)`` -> two-class logits ``(N, 2)`` = ``[log(1 - p), log(p)]``.

    ``p`` is the ensemble probability, the members' sigmoids combined by their weights
    (paper 3.1: the mean; :func:`pipeline.models.ensemble.combine`), so the
    softmax of the output is exactly ``[1 - p, p]`` (class 0 = real, 1 = fake) and ART's
    cross-entropy is the log-loss of the ensemble. Both terms are computed with ``logsumexp`` of
    log-sigmoids, so gradients survive saturated members (``p`` within 1e-7 of 0 or 1), where
    ``log(p)`` of a clamped probability would give none.
    """

    def __init__(self, member_logits: nn.Module, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.member_logits = member_logits
        if weights is None:
            self.log_w: Tensor | None = None
        else:
            w = torch.tensor(list(weights), dtype=torch.float64)
            self.log_w = (w / w.sum()).log().float()

    def forward(self, x: Tensor) -> Tensor:
        z = self.member_logits(x)
        if z.ndim == 1:
            z = z[:, None]
        if self.log_w is None:
            log_w = torch.full((z.shape[1],), -math.log(z.shape[1]), dtype=z.dtype)
        else:
            log_w = self.log_w.to(z.dtype)
        log_w = log_w.to(z.device)
        log_p = torch.logsumexp(F.logsigmoid(z) + log_w, dim=1)
        log_q = torch.logsumexp(F.logsigmoid(-z) + log_w, dim=1)
        return torch.stack([log_q, log_p], dim=1)


class _EnsembleLogits(nn.Module):
    """:class:`EnsembleModule` as ``(N, 3, S, S) -> (N, M)`` member logits."""

    def __init__(self, module: EnsembleModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module.member_logits(x)


def attack_size(ensemble: Ensemble, settings: AttackSettings) -> int:
    return settings.input_size or max(m.spec.input_size for m in ensemble.members)


def crafting_module(ensemble: Ensemble, settings: AttackSettings) -> nn.Module:
    """Member logits of the model the perturbation is crafted on (all members, or one)."""
    members = ensemble.members
    if settings.transfer_from is not None:
        members = [m for m in members if m.name == settings.transfer_from]
        if not members:
            raise ConfigError(
                f"transfer_from {settings.transfer_from!r} is not a member; members: "
                f"{', '.join(ensemble.member_names)}"
            )
    size = attack_size(ensemble, settings)
    # One member's activations alive at a time during the backward pass (each member's forward
    # runs twice): `dfd bench attack --presets paper --faces 4` peaked at 4.9 GB instead of
    # 11.6 GB (PGD batches of 2 faces), at the same faces/s (0.059 against 0.057, one run each).
    module = EnsembleModule(
        [m.net for m in members],
        [m.spec for m in members],
        size,
        context=ensemble.crop_margin,
        recompute=True,
    )
    return _EnsembleLogits(module.eval())


def crafting_weights(ensemble: Ensemble, settings: AttackSettings) -> list[float]:
    """The members' weights in the model the perturbation is crafted on."""
    if settings.transfer_from is not None:
        return [1.0]
    return list(ensemble.weights)


def ensemble_scorer(ensemble: Ensemble) -> Scorer:
    """Scores unit batches with the ensemble's own runners, as the clean run does.

    Each member takes the centred square of its own crop margin, as in :meth:`Ensemble.predict`;
    crops at the member's input size go through the same runner, so an unperturbed crop scores
    exactly as in the clean analysis; other sizes are resized as inside
    :class:`EnsembleModule` (bilinear).
    """
    step = ensemble.settings.batch_size

    def score(x: Tensor) -> np.ndarray:
        n, m = x.shape[0], len(ensemble.members)
        out = np.zeros((n, m), dtype=np.float64)
        for start in range(0, n, step):
            chunk = x[start : start + step].detach().to(ensemble.device, torch.float32)
            for j, member in enumerate(ensemble.members):
                size = member.spec.input_size
                xi = centre_crop_tensor(chunk, member.spec.crop_margin / ensemble.crop_margin)
                if xi.shape[-1] != size or xi.shape[-2] != size:
                    xi = F.interpolate(xi, size=(size, size), mode="bilinear", align_corners=False)
                out[start : start + len(chunk), j] = sigmoid(member.logits(xi))
        return out

    return score
