"""Attacking batches of face crops with ART and re-scoring them (paper 4.1.3 and 4.2.3).

:class:`FaceAttacker` runs Projected Gradient Descent through the whole ensemble (or, with
``transfer_from``, through one member), targeted towards "real" as in the paper ("all attacks
try to fool the detector into assessing that the input media are real"); or a black-box attack
(HopSkipJump, Square) on the ensemble's output only, counting the queries it needed and
projecting the result onto the same ``eps`` ball as PGD; and applies a defence (JPEG, smoothing,
feature squeezing) to clean and attacked crops when asked. Attacked crops are re-scored as
floats (not re-quantised to 8 bits), as in the paper.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from batch.attack_model import (
    REAL,
    Scorer,
    TwoClassLogits,
    attack_size,
    crafting_module,
    crafting_weights,
    ensemble_scorer,
)
from evaluation.attack_runs import AttackSettings, NormName
from evaluation.image_metrics import perturbation_norms, psnr, ssim
from pipeline.models import Ensemble
from pipeline.models.member import combine
from pipeline.models.preprocess import crops_to_unit_batch


@dataclass
class FaceAttackOutput:
    """Per-face results of one attack call; ``M`` = members of the scoring ensemble.

    ``clean``/``attacked`` are member probabilities ``(N, M)``; norms and visibility ``(N,)``;
    ``queries`` ``(N,)`` model queries per face (black-box only, else 0); ``defended_*`` the
    member probabilities after the defence, or None; ``x_clean``/``x_adv`` ``(N, 3, S, S)``
    float32 in [0, 1].
    """

    clean: np.ndarray
    attacked: np.ndarray
    l1: np.ndarray
    l2: np.ndarray
    linf: np.ndarray
    psnr: np.ndarray
    ssim: np.ndarray
    queries: np.ndarray
    x_clean: np.ndarray
    x_adv: np.ndarray
    defended_clean: np.ndarray | None = None
    defended_attacked: np.ndarray | None = None
    #: The scoring members' weights (``(M,)``; None: equal).
    weights: np.ndarray | None = None

    def rows(self, start: int, stop: int) -> FaceAttackOutput:
        """The faces ``start:stop`` (one shot's, of a batch attacked across shots)."""

        per_face = {
            f.name: getattr(self, f.name)[start:stop]
            for f in dataclasses.fields(self)
            if f.name != "weights" and getattr(self, f.name) is not None
        }
        return dataclasses.replace(self, **per_face)

    def combined(self, member_probs: np.ndarray) -> np.ndarray:
        """``(N, M)`` member probabilities -> ``(N,)`` ensemble probability."""
        weights = self.weights if self.weights is not None else np.ones(member_probs.shape[1])
        return combine(member_probs, weights)

    @property
    def clean_probability(self) -> np.ndarray:
        return self.combined(self.clean)

    @property
    def attacked_probability(self) -> np.ndarray:
        return self.combined(self.attacked)


class _QueryCounter:
    """The black-box view of the detector: images in, ``[1 - p, p]`` out, every image counted."""

    def __init__(self, scorer: Scorer, weights: Sequence[float] | np.ndarray | None = None) -> None:
        self.scorer = scorer
        self.weights = weights
        self.count = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.count += len(x)
        members = self.scorer(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        weights = self.weights if self.weights is not None else np.ones(members.shape[1])
        p = combine(members, weights)
        return np.stack([1.0 - p, p], axis=1).astype(np.float32)


class FaceAttacker:
    """Attacks batches of face crops and re-scores them. Holds no state between calls.

    Args:
        crafter: ``(N, 3, S, S)`` in [0, 1] -> ``(N, M')`` member logits, differentiable: the
            model the perturbation is computed on (the whole ensemble, or one member).
        scorer: the model the attacked crops are scored by (and the black-box attacks query).
        settings: the attack.
        input_size: ``S``.
        device: where ``crafter`` runs.
        crafter_weights: ``(M',)`` weights of the crafter's members (None: equal).
        scorer_weights: ``(M,)`` weights of the scorer's members (None: equal).
    """

    def __init__(
        self,
        crafter: nn.Module,
        scorer: Scorer,
        settings: AttackSettings,
        input_size: int,
        device: torch.device | str = "cpu",
        crafter_weights: Sequence[float] | None = None,
        scorer_weights: Sequence[float] | None = None,
    ) -> None:
        from art.estimators.classification import PyTorchClassifier

        self.settings = settings
        self.scorer = scorer
        self.scorer_weights = None if scorer_weights is None else np.asarray(scorer_weights)
        self.input_size = input_size
        self.device = torch.device(device)
        self.classifier = PyTorchClassifier(
            model=TwoClassLogits(crafter, crafter_weights).eval(),
            loss=nn.CrossEntropyLoss(),
            input_shape=(3, input_size, input_size),
            nb_classes=2,
            clip_values=(0.0, 1.0),
            device_type="gpu" if self.device.type == "cuda" else "cpu",
        )
        self.defence = _build_defence(settings)

    @classmethod
    def for_ensemble(cls, ensemble: Ensemble, settings: AttackSettings) -> FaceAttacker:
        return cls(
            crafting_module(ensemble, settings),
            ensemble_scorer(ensemble),
            settings,
            attack_size(ensemble, settings),
            ensemble.device,
            crafter_weights=crafting_weights(ensemble, settings),
            scorer_weights=ensemble.weights,
        )

    def attack_crops(
        self, crops: Sequence[np.ndarray], clean: np.ndarray | None = None
    ) -> FaceAttackOutput:
        """Face crops ``(H, W, 3)`` uint8 RGB, any size -> results at ``S x S``."""
        return self.attack(crops_to_unit_batch(crops, self.input_size, torch.device("cpu")), clean)

    def attack(self, x: Tensor, clean: np.ndarray | None = None) -> FaceAttackOutput:
        """``x``: ``(N, 3, S, S)`` float in [0, 1]. ``clean``: known ``(N, M)`` clean member
        probabilities (saves a forward pass), else computed."""
        s = self.settings
        x_np = x.detach().cpu().numpy().astype(np.float32)
        n = len(x_np)
        if clean is None:
            clean = self.scorer(x)
        queries = np.zeros(n, dtype=np.int64)
        if n == 0:
            x_adv = x_np
        elif s.black_box is None:
            x_adv = self._pgd(x_np)
        else:
            x_adv, queries = self._black_box(x_np)
        attacked = self.scorer(torch.from_numpy(x_adv))
        norms = perturbation_norms(x_np, x_adv)
        out = FaceAttackOutput(
            clean=np.asarray(clean, dtype=np.float64),
            attacked=attacked,
            l1=norms["l1"],
            l2=norms["l2"],
            linf=norms["linf"],
            psnr=psnr(x_np, x_adv),
            ssim=ssim(x_np, x_adv) if n else np.zeros(0),
            queries=queries,
            x_clean=x_np,
            x_adv=x_adv,
            weights=self.scorer_weights,
        )
        if self.defence is not None and n:
            out.defended_clean = self.scorer(torch.from_numpy(self._defend(x_np)))
            out.defended_attacked = self.scorer(torch.from_numpy(self._defend(x_adv)))
        return out

    def _pgd(self, x: np.ndarray) -> np.ndarray:
        from art.attacks.evasion import ProjectedGradientDescent

        s = self.settings
        np.random.seed(s.seed)  # ART draws random starts from numpy's global generator
        attack = ProjectedGradientDescent(
            self.classifier,
            norm=s.art_norm(),
            eps=s.eps,
            eps_step=s.eps_step,
            max_iter=s.max_iter,
            targeted=True,
            num_random_init=s.num_random_init,
            batch_size=s.batch_size,
            verbose=False,
        )
        # Paper 4.2.3: every attack pushes towards "real", whatever the face's label.
        target = np.full(len(x), REAL, dtype=np.int64)
        return attack.generate(x, y=target).astype(np.float32)

    def _black_box(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One face at a time, so each face's query count is its own."""
        from art.attacks.evasion import HopSkipJump, SquareAttack
        from art.estimators.classification import BlackBoxClassifierNeuralNetwork

        s = self.settings
        adv = np.empty_like(x)
        queries = np.zeros(len(x), dtype=np.int64)
        for i in range(len(x)):
            counter = _QueryCounter(self.scorer, self.scorer_weights)
            model = BlackBoxClassifierNeuralNetwork(
                counter, (3, self.input_size, self.input_size), 2, clip_values=(0.0, 1.0)
            )
            np.random.seed(s.seed + i)
            xi = x[i : i + 1]
            if s.black_box == "square":
                # Untargeted away from "fake" is targeted towards "real" with two classes.
                # ART's Square asks the model three times per iteration (it re-scores points it
                # has scored before), plus three times to start: the budget is set by that.
                attack = SquareAttack(
                    model,
                    norm=s.art_norm(),
                    eps=s.eps,
                    max_iter=max(1, (s.max_queries - 3) // 3),
                    nb_restarts=1,
                    batch_size=1,
                    verbose=False,
                )
                out = attack.generate(xi, y=np.array([[0.0, 1.0]], dtype=np.float32))
            else:
                # Budget: gradient estimates dominate (init_eval, growing with sqrt(iteration)).
                iterations = 8
                per_iter = max(4, s.max_queries // (3 * iterations))
                attack = HopSkipJump(
                    model,
                    targeted=True,
                    norm=s.art_norm(),
                    max_iter=iterations,
                    max_eval=2 * per_iter,
                    init_eval=per_iter,
                    init_size=min(100, per_iter),
                    batch_size=64,
                    verbose=False,
                )
                out = attack.generate(xi, y=np.array([REAL]))
                out = xi + _project(out - xi, s.eps, s.norm)
            adv[i] = np.clip(out[0], 0.0, 1.0)
            queries[i] = counter.count
        return adv, queries

    def _defend(self, x: np.ndarray) -> np.ndarray:
        assert self.defence is not None
        return np.asarray(self.defence(x)[0], dtype=np.float32)


def _project(delta: np.ndarray, eps: float, norm: NormName) -> np.ndarray:
    """Project ``(N, ...)`` perturbations onto the ``eps`` ball of ``norm`` (rescaling for 1, 2)."""
    if norm == "inf":
        return np.clip(delta, -eps, eps)
    flat = delta.reshape(len(delta), -1)
    size = np.linalg.norm(flat, ord=int(norm), axis=1, keepdims=True)
    scale = np.where(size > eps, eps / np.maximum(size, 1e-30), 1.0)
    # A hair inside the ball: float32 rounding must not put the result on the wrong side.
    return (flat * scale * np.where(size > eps, 1.0 - 1e-6, 1.0)).reshape(delta.shape)


def _build_defence(settings: AttackSettings) -> Any:
    """ART's input-purification preprocessor for ``(N, 3, S, S)`` in [0, 1], or None."""
    if settings.defence is None:
        return None
    from art.defences.preprocessor import FeatureSqueezing, JpegCompression, SpatialSmoothing

    if settings.defence == "jpeg":
        return JpegCompression(
            clip_values=(0.0, 1.0),
            quality=settings.jpeg_quality,
            channels_first=True,
            apply_fit=False,
            apply_predict=True,
        )
    if settings.defence == "smoothing":
        return SpatialSmoothing(
            window_size=settings.smoothing_window,
            channels_first=True,
            clip_values=(0.0, 1.0),
        )
    return FeatureSqueezing(clip_values=(0.0, 1.0), bit_depth=settings.squeeze_bits)
