"""Ensembles of detectors (paper section 3.2): face crops in, DeepFake probabilities out.

``Ensemble`` holds several :class:`~pipeline.models.member.Member` and averages their sigmoid
probabilities (paper 3.1, "Inference"), weighted by each member's ``weight``; ``EnsembleModule``
is the same ensemble as one differentiable torch module (attacks, training). Neither keeps state
between calls. The rules they follow (which members, how probabilities combine, ...) are in
:mod:`pipeline.models.member`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from pipeline.models.member import (
    Member,
    MemberInfo,
    combine,
    context_margin,
    member_crops,
    resolve_ensemble,
    sigmoid,
    untrained_warning,
)
from pipeline.models.preprocess import centre_crop_tensor, normalise
from pipeline.models.settings import InferenceSettings
from pipeline.models.spec import MemberSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnsemblePrediction:
    """``probability`` ``(N,)`` in (0, 1): :func:`combine` of ``member_probabilities``
    ``(N, M)``."""

    probability: np.ndarray
    member_probabilities: np.ndarray
    member_names: tuple[str, ...]

    def member_dict(self, i: int) -> dict[str, float]:
        return {
            n: float(p)
            for n, p in zip(self.member_names, self.member_probabilities[i], strict=True)
        }


class Ensemble:
    """Members whose sigmoid probabilities are averaged (paper 3.1), weighted by ``weight``.

    Face crops given to :meth:`predict` are cut at :attr:`crop_margin` (the largest margin of
    the members); each member scores the centred square of its own margin.
    """

    def __init__(
        self,
        members: Sequence[Member],
        settings: InferenceSettings | None = None,
        name: str = "custom",
    ) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.name = name
        self.members = list(members)
        self.weights = [m.spec.weight for m in self.members]
        self.crop_margin = context_margin(m.spec for m in self.members)
        self.settings = settings or InferenceSettings()
        self.device = self.settings.torch_device()
        self.workers = self.settings.member_workers_for(len(self.members))
        # Longest first (weight bytes stand in for cost: EfficientNetV2-M, the multi-scale
        # DETR, the two DETRs, plain B4), so the last member to start is a short one.
        self._order = sorted(
            range(len(self.members)),
            key=lambda j: -self.members[j].weight_bytes,
        )
        self._pool = (
            ThreadPoolExecutor(self.workers, thread_name_prefix="dfd-member")
            if self.workers > 1
            else None
        )

    @classmethod
    def load(cls, settings: InferenceSettings | None = None) -> Ensemble:
        settings = settings or InferenceSettings()
        directory, name, specs = resolve_ensemble(settings)
        # Members that run side by side share the cores instead of each taking all of them.
        member_settings = settings.model_copy(
            update={"onnx_threads": settings.runtime_threads_for(len(specs))}
        )
        members = [Member.load(s, directory, member_settings) for s in specs]
        return cls(members, settings, name)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    @property
    def member_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)

    @property
    def infos(self) -> list[MemberInfo]:
        return [m.info for m in self.members]

    @property
    def untrained(self) -> list[str]:
        return [m.name for m in self.members if m.info.weights != "trained"]

    def warnings(self) -> list[str]:
        """Plain-language warnings every output must carry."""
        return untrained_warning(self.infos)

    def predict(self, crops: Sequence[np.ndarray]) -> EnsemblePrediction:
        """Face crops ``(H, W, 3)`` uint8 RGB, any size, cut at :attr:`crop_margin` ->
        ensemble and member probabilities.

        Crops are processed in chunks of ``settings.batch_size``; members sharing input size,
        resize rule and crop margin share one resized batch. With several workers
        (``settings.member_workers``; CPU runtimes only) the members of a chunk run side by
        side, each on its share of the cores, as the paper's five models "operating in
        parallel": on a 2-core CPU this beat running each member on both cores in turn, whose
        per-operator threading leaves cores idle.
        """
        n, m = len(crops), len(self.members)
        member_probs = np.zeros((n, m), dtype=np.float64)
        step = self.settings.batch_size
        for start in range(0, n, step):
            chunk = crops[start : start + step]
            unit: dict[tuple[int, str, float], Tensor | np.ndarray] = {}
            for member in self.members:
                spec = member.spec
                if spec.unit_key not in unit:
                    own = member_crops(chunk, spec.crop_margin, self.crop_margin)
                    unit[spec.unit_key] = member.unit_batch(own, self.device)

            def score(
                j: int, unit: dict[tuple[int, str, float], Tensor | np.ndarray] = unit
            ) -> np.ndarray:
                member = self.members[j]
                return sigmoid(member.logits(unit[member.spec.unit_key]))

            scored = (self._pool.map if self._pool is not None else map)(score, self._order)
            for j, probs in zip(self._order, scored, strict=True):
                member_probs[start : start + len(chunk), j] = probs
        prob = combine(member_probs, self.weights)
        return EnsemblePrediction(prob, member_probs, self.member_names)

    def torch_module(self, input_size: int | None = None) -> EnsembleModule:
        """A differentiable ``nn.Module`` of the whole ensemble (for ART and training)."""
        return EnsembleModule(
            [m.net for m in self.members],
            [m.spec for m in self.members],
            input_size,
            context=self.crop_margin,
        )


class EnsembleModule(nn.Module):
    """``(N, 3, S, S)`` float in [0, 1] -> ``(N,)`` ensemble probability, differentiable end to end.

    The input is the face crop at margin ``context``; each member's centred square, resizing to
    its input size and normalisation happen inside, so gradients reach the unnormalised face
    crop (paper 4.1.3 attacks the ensemble through ART). Probabilities combine by the members'
    weights as in :func:`combine`.

    ``recompute``: when gradients are on, keep no member's activations from the forward pass and
    run each member's forward again as the backward pass reaches it (activation checkpointing),
    so only one member's activations are alive at a time instead of all of them. Gradients are
    the same; each member runs its forward twice. Attacks use it (see
    :func:`batch.attack_model.crafting_module` for what it saves and costs).
    """

    def __init__(
        self,
        nets: Sequence[nn.Module],
        specs: Sequence[MemberSpec],
        input_size: int | None = None,
        context: float | None = None,
        *,
        recompute: bool = False,
    ) -> None:
        super().__init__()
        self.recompute = recompute
        self.nets = nn.ModuleList(nets)
        self.specs = list(specs)
        self.input_size = input_size or max(s.input_size for s in self.specs)
        self.context = context if context is not None else context_margin(self.specs)
        weights = torch.tensor([s.weight for s in self.specs], dtype=torch.float32)
        self.register_buffer("weights", weights / weights.sum(), persistent=False)

    def member_logits(self, x: Tensor) -> Tensor:
        """``(N, M)`` logits of "fake"."""
        outs = []
        for net, spec in zip(self.nets, self.specs, strict=True):
            xi = centre_crop_tensor(x, spec.crop_margin / self.context)
            if xi.shape[-1] != spec.input_size or xi.shape[-2] != spec.input_size:
                xi = nn.functional.interpolate(
                    xi,
                    size=(spec.input_size, spec.input_size),
                    mode="bilinear",
                    align_corners=False,
                )
            xi = normalise(xi, spec.mean, spec.std)
            if self.recompute and torch.is_grad_enabled():
                outs.append(torch.utils.checkpoint.checkpoint(net, xi, use_reentrant=False))
            else:
                outs.append(net(xi))
        return torch.stack(outs, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        weights: Tensor = self.weights  # type: ignore[assignment]  # a registered buffer
        return torch.sigmoid(self.member_logits(x)) @ weights.to(x.dtype)
