"""Adversarial robustness runs (paper 4.1.3 and 4.2.3): attack every face, re-score every video.

For each dataset row the run (i) extracts faces exactly as the clean analysis does (shots, at most
64 frames per shot, face tracks; :meth:`pipeline.analyze.Analyzer.analyze_file`) and keeps its
clean scores, (ii) attacks each kept face crop, frame by frame, with ART's Projected Gradient
Descent wrapped around the *whole* ensemble as a ``PyTorchClassifier`` (two classes built from
the ensemble probability, targeted towards "real" as in the paper: "all attacks try to fool the
detector into assessing that the input media are real"), (iii) re-scores the attacked crops with
the same members and re-aggregates them by the same rule (track mean -> shot max -> video max), so
clean and attacked video scores sit side by side in one Parquet file.

The attack works in the detectors' input space: each crop resized to the members' input size,
``(3, S, S)`` float in [0, 1] (``clip_values=(0, 1)``); normalisation happens inside the
wrapped model, so gradients and the ``eps`` ball live in pixel units. Attacked crops are
re-scored as floats (not re-quantised to 8 bits or re-encoded into a video), as in the paper.

Beyond the paper, each by option and each recorded in the run's ``attack.json``:

* ``transfer_from``: the perturbation is crafted on one member and scored by the whole ensemble.
* ``black_box``: ART's HopSkipJump (decision-based) or Square (score-based) attack on the
  ensemble's output only, counting the queries it needed (each face image sent = one query);
  the report sets them against the service's per-key rate limit. Results are projected onto the
  same ``eps`` ball as PGD (HopSkipJump minimises distance but does not bound it).
* ``defence``: ART's JPEG compression, spatial smoothing or feature squeezing applied to the
  detectors' input, scored on clean and on attacked crops (the attacker does not know about
  it): clean accuracy lost versus attacked accuracy regained.

Runs are Ray Data jobs (``map_batches`` over an actor pool, one row per call) writing Parquet part
files as results stream in; a rerun skips rows already written (``retry_errors`` retries failed
ones). Per-row failures become error rows, never a neutral score.

Shared with the evaluation run (``batch/evaluate.py``, written in parallel): the Parquet part
writing, resume, error-row and device helpers below (``_PartWriter``, ``_read_parts``,
``_error_fields``, ``_lost_row``, ``resolve_devices``) follow that module's rules (atomic parts,
newest part wins, ``worker-lost`` rows, one row per block) but are this module's own copies, to
be merged with ``RunFolder`` and friends there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from batch.datasets import VideoRow, iter_face_sequence
from dfd.version import __version__
from evaluation.robustness import amplify, perturbation_norms, psnr, ssim
from pipeline.aggregate import max_or_none, track_score
from pipeline.analyze import AnalysisSettings, Analyzer
from pipeline.artefacts import MemorySink
from pipeline.errors import ConfigError, DfdError
from pipeline.models import Ensemble, EnsemblePrediction, MemberInfo
from pipeline.models.ensemble import (
    EnsembleModule,
    combine,
    expected_infos,
    pin_ensemble,
    sigmoid,
)
from pipeline.models.preprocess import centre_crop_tensor, crops_to_unit_batch
from pipeline.result import Result
from pipeline.stages import LocalModels

log = logging.getLogger(__name__)

NormName = Literal["inf", "1", "2"]
BlackBoxName = Literal["hopskipjump", "square"]
DefenceName = Literal["jpeg", "smoothing", "squeeze"]

#: Crops per ensemble call (and per attack call) in a face sequence, as in the evaluation run:
#: bounds memory on long sequences.
SEQUENCE_CHUNK = 32
#: ``error_kind`` of a row whose worker process died (crash, out of memory) on every retry.
WORKER_LOST = "worker-lost"

#: Class indices of the two-class view of the detector given to ART.
REAL, FAKE = 0, 1

CONFIG_FILE = "attack.json"
PARTS_DIR = "parts"
SCORES_FILE = "scores.parquet"
EXAMPLES_DIR = "examples"


# ----------------------------------------------------------------------------------------------
# Settings


class AttackSettings(BaseModel):
    """What is done to each face (paper 4.1.3: PGD, eps 0.2, max_iter 5).

    ``eps`` and ``eps_step`` are in [0, 1] pixel units of the ``(3, S, S)`` crop, measured in the
    chosen norm over the whole crop. ``eps_step`` defaults to ART's 0.1 (the paper names only
    ``eps`` and ``max_iterations``).
    """

    model_config = ConfigDict(extra="forbid")

    norm: NormName = "inf"
    eps: float = Field(0.2, gt=0.0)
    eps_step: float = Field(0.1, gt=0.0)
    max_iter: int = Field(5, ge=1)
    #: ART's random restarts inside the eps ball (0: start from the clean crop, as ART's default).
    num_random_init: int = Field(0, ge=0)
    #: Faces per ART batch. Backpropagating through the five full-size members costs about
    #: 2.3 GB per face on CPU (`dfd bench attack`: 11.6 GB peak at 4 faces), hence 2.
    batch_size: int = Field(2, ge=1)
    #: Attack resolution; default: the largest member input size.
    input_size: int | None = Field(None, ge=16, le=1024)
    #: Craft on this member alone, score with the whole ensemble.
    transfer_from: str | None = None
    black_box: BlackBoxName | None = None
    #: Per-face query budget of the black-box attack: a hard cap for Square (whose ART version
    #: asks three times per iteration); HopSkipJump's iterations and gradient estimates are sized
    #: to about this many. Either way the count each face needed is recorded.
    max_queries: int = Field(1000, ge=10)
    #: The per-key rate limit the black-box query counts are set against (requests per minute).
    rate_per_min: int = Field(60, ge=1)
    defence: DefenceName | None = None
    jpeg_quality: int = Field(50, ge=1, le=95)
    smoothing_window: int = Field(3, ge=2)
    squeeze_bits: int = Field(4, ge=1, le=8)
    #: Faces with probability >= threshold count as "fake" for face-level success rates.
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    #: Seed of numpy's global generator before random parts of ART (random init, Square, HSJ).
    seed: int = 0

    @model_validator(mode="after")
    def _compatible(self) -> AttackSettings:
        if self.black_box is not None and self.transfer_from is not None:
            raise ValueError("a black-box attack has no surrogate member: drop transfer_from")
        if self.black_box == "hopskipjump" and self.norm == "1":
            raise ValueError("ART's HopSkipJump supports norm 2 or inf, not 1")
        return self

    def art_norm(self) -> float:
        return math.inf if self.norm == "inf" else float(self.norm)

    @property
    def kind(self) -> str:
        """``pgd``, ``transfer`` or the black-box attack's name."""
        if self.black_box is not None:
            return self.black_box
        return "transfer" if self.transfer_from else "pgd"

    def describe(self) -> str:
        what = self.black_box or "PGD"
        text = f"{what} norm-{self.norm} eps {self.eps:g}"
        if self.black_box is None:
            text += f" step {self.eps_step:g} x{self.max_iter}"
        else:
            text += f", <= {self.max_queries} queries/face"
        if self.transfer_from:
            text += f", crafted on {self.transfer_from}"
        if self.defence:
            text += f", defence {self.defence}"
        return text


class AttackRunSettings(BaseModel):
    """One attack run: the analysis as in the clean run, the attack, and the Ray layout."""

    model_config = ConfigDict(extra="forbid")

    analysis: AnalysisSettings = AnalysisSettings(galleries=False)
    attack: AttackSettings = AttackSettings()
    #: Actors in the pool (each holds every model).
    actors: int = Field(1, ge=1)
    #: Fractional CPUs per actor: leaves room for Ray Data's own tasks on small machines.
    num_cpus_per_actor: float = Field(0.5, gt=0.0)
    #: GPU fraction per actor (several actors can share one GPU).
    num_gpus_per_actor: float = Field(0.0, ge=0.0)
    #: torch intra-op threads per actor (0: torch's default, one per core).
    torch_threads: int = Field(1, ge=0)
    #: A Parquet part is written every ``flush_every`` rows or ``flush_s`` seconds (what a crash
    #: can lose, and what a resumed run redoes).
    flush_every: int = Field(8, ge=1)
    flush_s: float = Field(60.0, gt=0.0)
    #: Retries of a row whose worker process died before it becomes a ``worker-lost`` error row
    #: (Ray Data's default would retry it forever).
    max_task_retries: int = Field(1, ge=0)
    #: Rows (half fake, half real, first by video_id) whose most suspicious face is kept as an
    #: example for the report.
    examples: int = Field(8, ge=0)
    retry_errors: bool = False


# ----------------------------------------------------------------------------------------------
# The detector as ART sees it

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
    module = EnsembleModule(
        [m.net for m in members], [m.spec for m in members], size, context=ensemble.crop_margin
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


# ----------------------------------------------------------------------------------------------
# Attacking face crops


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


# ----------------------------------------------------------------------------------------------
# One row: faces as in the clean run, attacked, re-aggregated


@dataclass
class _ShotRecord:
    clean: EnsemblePrediction
    out: FaceAttackOutput


@dataclass
class _Example:
    clean_score: float
    attacked_score: float
    clean: np.ndarray  # (S, S, 3) float in [0, 1]
    adv: np.ndarray


class _AttackingModels:
    """The clean run's models, plus an attack of every batch of faces they score.

    :class:`Analyzer` scores the kept faces of one shot per ``score_faces`` call (all of an
    image's faces in one call); wrapping that call attacks the same crops the clean run scores,
    one shot at a time, so a shot's crops are released as soon as it is done (bounded memory).
    The clean prediction is returned unchanged: the analysis and its clean scores are exactly
    those of an evaluation run.
    """

    def __init__(self, inner: LocalModels, attacker: FaceAttacker, keep_example: bool) -> None:
        self.inner = inner
        self.attacker = attacker
        self.keep_example = keep_example
        self.records: list[_ShotRecord] = []
        self.example: _Example | None = None
        self.attack_seconds = 0.0
        self.segmentation_method = inner.segmentation_method
        self.segmentation_threshold = inner.segmentation_threshold
        self.face_detector_name = inner.face_detector_name
        self.has_embedder = inner.has_embedder
        self.crop_margin = inner.crop_margin
        self.ensemble_name = inner.ensemble_name

    def region_features(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.inner.region_features(frames)

    def detect_faces(self, frames: Sequence[np.ndarray]) -> Any:
        return self.inner.detect_faces(frames)

    def embed_faces(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        return self.inner.embed_faces(crops)

    def model_infos(self) -> list[MemberInfo]:
        return self.inner.model_infos()

    def warnings(self) -> list[str]:
        return self.inner.warnings()

    def score_faces(self, crops: Sequence[np.ndarray]) -> EnsemblePrediction:
        pred = self.inner.score_faces(crops)
        if len(crops):
            t0 = time.perf_counter()
            out = self.attacker.attack_crops(crops, pred.member_probabilities)
            self.attack_seconds += time.perf_counter() - t0
            if self.keep_example:
                self._consider_example(pred, out)
            # Keep scores and sizes only: the crops of every shot would grow with the video.
            empty = np.zeros((0, 3, 0, 0), dtype=np.float32)
            self.records.append(
                _ShotRecord(pred, dataclasses.replace(out, x_clean=empty, x_adv=empty))
            )
        return pred

    def _consider_example(self, pred: EnsemblePrediction, out: FaceAttackOutput) -> None:
        """Keep the most suspicious clean face: where an attack towards "real" matters most."""
        i = int(np.argmax(pred.probability))
        if self.example is None or pred.probability[i] > self.example.clean_score:
            self.example = _Example(
                float(pred.probability[i]),
                float(out.attacked_probability[i]),
                out.x_clean[i].transpose(1, 2, 0).copy(),
                out.x_adv[i].transpose(1, 2, 0).copy(),
            )


#: Faces of a medium as shots -> tracks -> indices into the medium's face arrays.
Structure = list[list[list[int]]]


def video_score(structure: Structure, face_scores: np.ndarray) -> float | None:
    """Paper 3.1: track = mean of its faces, shot = max of its tracks, video = max of shots."""
    shots = [
        max_or_none([track_score([float(face_scores[i]) for i in track]) for track in shot])
        for shot in structure
    ]
    return max_or_none(shots)


def _structure(result: Result, records: Sequence[_ShotRecord]) -> Structure:
    """Match the analysis's tracks to the attacked shot batches, checking they line up.

    Each shot with at least one track was scored in exactly one non-empty ``score_faces`` call,
    in shot order, its faces in track order.
    """
    structure: Structure = []
    shots = [shot for shot in result.shots if shot.clusters]
    if len(shots) != len(records):
        raise RuntimeError(f"{len(shots)} scored shots but {len(records)} attacked face batches")
    offset = 0
    for shot, record in zip(shots, records, strict=True):
        tracks, k = [], 0
        for cluster in shot.clusters:
            tracks.append(list(range(offset + k, offset + k + len(cluster.faces))))
            for face in cluster.faces:
                if face.score != float(record.clean.probability[k]):
                    raise RuntimeError("attacked faces do not line up with the analysis's faces")
                k += 1
        if k != len(record.clean.probability):
            raise RuntimeError(
                f"shot {shot.index}: {k} faces in tracks, {len(record.clean.probability)} attacked"
            )
        structure.append(tracks)
        offset += k
    return structure


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _chunks(items: Iterator[np.ndarray], n: int) -> Iterator[list[np.ndarray]]:
    while chunk := list(itertools.islice(items, n)):
        yield chunk


def _error_fields(exc: BaseException) -> dict[str, Any]:
    """An error row's ``error_kind`` and one-line ``error`` (typed errors keep their kind)."""
    if isinstance(exc, DfdError):
        return {"error_kind": exc.kind, "error": exc.detail}
    return {"error_kind": "internal", "error": f"{type(exc).__name__}: {exc}"}


def _member_column(prefix: str, name: str) -> str:
    return f"{prefix}_member__{name}"


class VideoAttacker:
    """Attack one dataset row at a time with one set of loaded models (plain Python, no Ray)."""

    def __init__(self, models: LocalModels, settings: AttackRunSettings) -> None:
        self.models = models
        self.settings = settings
        self.analysis = settings.analysis.model_copy(update={"galleries": False})
        self.attacker = FaceAttacker.for_ensemble(models.ensemble, settings.attack)

    @classmethod
    def load(cls, settings: AttackRunSettings) -> VideoAttacker:
        a = settings.analysis
        models = LocalModels.load(a.inference, a.faces, a.segmentation, a.embedder_weights)
        return cls(models, settings)

    @property
    def member_names(self) -> tuple[str, ...]:
        return self.models.ensemble.member_names

    def columns(self) -> list[str]:
        """Every output column, in order (error rows have them all, as None)."""
        members = [
            _member_column(prefix, name)
            for prefix in ("clean", "attacked")
            for name in self.member_names
        ]
        return [*ROW_COLUMNS, *RESULT_COLUMNS, *members, *EXAMPLE_COLUMNS, *TAIL_COLUMNS]

    def process(self, row: VideoRow, dataset: str, with_example: bool = False) -> dict[str, Any]:
        """One output row: clean and attacked scores side by side, or an error row."""
        record: dict[str, Any] = dict.fromkeys(self.columns())
        record.update(
            video_id=row.video_id,
            dataset=dataset,
            label=row.label,
            manipulation=row.manipulation,
            split=row.split,
            kind=row.kind,
        )
        t0 = time.perf_counter()
        models = _AttackingModels(self.models, self.attacker, with_example)
        try:
            if row.kind == "face_sequence":
                structure, n_shots = self._face_sequence(row, models), 1
                clean_score = None
            else:
                analyzer = Analyzer(models, self.analysis)
                result = analyzer.analyze_file(Path(row.path), MemorySink())
                structure, n_shots = _structure(result, models.records), len(result.shots)
                clean_score = result.score
            fields = self._scores(structure, models, clean_score)
            fields["n_shots"] = n_shots
            if models.example is not None:
                fields.update(_example_fields(models.example))
        except Exception as exc:  # one row fails, never the actor
            if not isinstance(exc, DfdError):
                log.error("row %s failed:\n%s", row.video_id, traceback.format_exc())
            fields = _error_fields(exc)
        record.update(fields)
        record["attack_seconds"] = round(models.attack_seconds, 4)
        record["seconds"] = round(time.perf_counter() - t0, 4)
        return record

    def _face_sequence(self, row: VideoRow, models: _AttackingModels) -> Structure:
        """Pre-cropped faces (WildDeepfake), as the evaluation run scores them: every face of the
        sequence, in chunks of ``SEQUENCE_CHUNK``, one shot holding one track."""
        n = 0
        for chunk in _chunks(iter_face_sequence(row), SEQUENCE_CHUNK):
            models.score_faces(chunk)
            n += len(chunk)
        return [[list(range(n))]] if n else []

    def _scores(
        self, structure: Structure, models: _AttackingModels, clean_score: float | None
    ) -> dict[str, Any]:
        records = models.records
        n = sum(len(r.clean.probability) for r in records)
        out: dict[str, Any] = {"n_faces": n, "n_tracks": sum(len(s) for s in structure)}
        if n == 0:
            out.update(clean_score=clean_score, attacked_score=None)
            return out
        cat = np.concatenate
        clean_members = cat([r.clean.member_probabilities for r in records])
        attacked_members = cat([r.out.attacked for r in records])
        clean = cat([r.clean.probability for r in records])
        weights = self.models.ensemble.weights
        attacked = combine(attacked_members, weights)
        threshold = self.settings.attack.threshold
        fake_clean = clean >= threshold
        out.update(
            clean_score=clean_score if clean_score is not None else video_score(structure, clean),
            attacked_score=video_score(structure, attacked),
            face_clean_mean=float(clean.mean()),
            face_attacked_mean=float(attacked.mean()),
            n_faces_fake_clean=int(fake_clean.sum()),
            n_faces_flipped=int((fake_clean & (attacked < threshold)).sum()),
            queries_total=int(cat([r.out.queries for r in records]).sum()),
        )
        for key in ("l1", "l2", "linf", "psnr", "ssim"):
            out[f"{key}_mean"] = _mean(cat([getattr(r.out, key) for r in records]))
        out["n_unchanged"] = int((cat([r.out.linf for r in records]) == 0).sum())
        for j, name in enumerate(self.member_names):
            out[_member_column("clean", name)] = video_score(structure, clean_members[:, j])
            out[_member_column("attacked", name)] = video_score(structure, attacked_members[:, j])
        if records[0].out.defended_clean is not None:
            d_clean = combine(cat([r.out.defended_clean for r in records]), weights)
            d_adv = combine(cat([r.out.defended_attacked for r in records]), weights)
            out["defended_clean_score"] = video_score(structure, d_clean)
            out["defended_attacked_score"] = video_score(structure, d_adv)
        return out


def _example_fields(example: _Example) -> dict[str, Any]:
    delta, factor = amplify(example.adv - example.clean)
    return {
        "example_clean_score": example.clean_score,
        "example_attacked_score": example.attacked_score,
        "example_amplification": factor,
        "example_clean_png": _png((example.clean * 255.0 + 0.5).astype(np.uint8)),
        "example_perturbation_png": _png(delta),
        "example_attacked_png": _png((np.clip(example.adv, 0, 1) * 255.0 + 0.5).astype(np.uint8)),
    }


ROW_COLUMNS = ("video_id", "dataset", "label", "manipulation", "split", "kind")
RESULT_COLUMNS = (
    "clean_score",
    "attacked_score",
    "n_faces",
    "n_shots",
    "n_tracks",
    "face_clean_mean",
    "face_attacked_mean",
    "n_faces_fake_clean",
    "n_faces_flipped",
    "l1_mean",
    "l2_mean",
    "linf_mean",
    "psnr_mean",
    "ssim_mean",
    "n_unchanged",
    "queries_total",
    "defended_clean_score",
    "defended_attacked_score",
)
EXAMPLE_COLUMNS = (
    "example_clean_score",
    "example_attacked_score",
    "example_amplification",
    "example_clean_png",
    "example_perturbation_png",
    "example_attacked_png",
)
TAIL_COLUMNS = ("seconds", "attack_seconds", "error_kind", "error")
#: Example images go to files; the Parquet row keeps their path prefix in ``example``.
_PNG_COLUMNS = ("example_clean_png", "example_perturbation_png", "example_attacked_png")


# ----------------------------------------------------------------------------------------------
# Ray Data actor


class AttackActor:
    """``map_batches`` callable: one :class:`VideoAttacker` per actor, reused for every row.

    Input batches are pandas frames of :class:`VideoRow` fields plus ``dataset`` and ``example``;
    output batches hold one result row per input row (see :meth:`VideoAttacker.columns`).
    """

    def __init__(self, settings_json: str) -> None:
        settings = AttackRunSettings.model_validate_json(settings_json)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        settings = settings.model_copy(update={"analysis": resolve_devices(settings.analysis)})
        self.attacker = VideoAttacker.load(settings)

    def __call__(self, batch: Any) -> Any:
        import pandas as pd

        out = []
        for item in batch.to_dict("records"):
            row = _row_from_record(item)
            out.append(self.attacker.process(row, str(item["dataset"]), bool(item["example"])))
        return pd.DataFrame(out, columns=self.attacker.columns())


def resolve_devices(settings: AnalysisSettings) -> AnalysisSettings:
    """``device="auto"``: CUDA when this process sees a GPU (Ray hides the GPUs from actors that
    reserved none), and MTCNN follows the ensemble there. Same rule as the evaluation run."""
    if settings.inference.device != "auto":
        return settings
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inference = settings.inference.model_copy(update={"device": device})
    faces = settings.faces
    if device == "cuda" and faces.device == "cpu":
        faces = faces.model_copy(update={"device": "cuda"})
    return settings.model_copy(update={"inference": inference, "faces": faces})


def _row_from_record(item: dict[str, Any]) -> VideoRow:
    sequence = item.get("sequence")
    if sequence is not None and not isinstance(sequence, str):  # pandas NaN for a missing value
        sequence = None
    return VideoRow(
        str(item["video_id"]),
        str(item["path"]),
        int(item["label"]),
        str(item["manipulation"]),
        str(item["split"]),
        str(item["kind"]),
        sequence,
    )


# ----------------------------------------------------------------------------------------------
# The run folder: config, Parquet parts, resume, the consolidated file


@dataclass
class AttackRunOutcome:
    """What one invocation did. ``scores`` is the consolidated Parquet file."""

    out: Path
    scores: Path
    total: int
    skipped: int
    processed: int
    errors: int
    seconds: float
    member_names: list[str] = field(default_factory=list)


def _config_record(
    settings: AttackRunSettings, dataset: str, root: str, models: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "service_version": __version__,
        "dataset": dataset,
        "root": root,
        "attack": settings.attack.model_dump(mode="json"),
        "analysis": settings.analysis.model_dump(mode="json", exclude={"galleries"}),
        "models": models,
    }


def _check_or_write_config(out: Path, config: dict[str, Any]) -> None:
    """A run folder holds one attack: a rerun must ask for the same one to resume it."""
    path = out / CONFIG_FILE
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        fixed = ("dataset", "attack", "analysis", "models")
        changed = [k for k in fixed if old.get(k) != config.get(k)]
        if changed:
            raise ConfigError(
                f"{out} holds a run with different {', '.join(changed)}; resume it with the same "
                "options or choose another --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    config = {**config, "created_at": datetime.now(UTC).isoformat()}
    _atomic_write(path, (json.dumps(config, indent=2) + "\n").encode())


def read_config(out: Path) -> dict[str, Any]:
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        from pipeline.errors import MissingFileError

        raise MissingFileError(f"{path} not found: {out} is not an attack run folder")
    config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return config


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _slug(video_id: str) -> str:
    digest = hashlib.sha1(video_id.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', video_id)[-80:]}-{digest}"


class _PartWriter:
    """Buffers result rows and writes them as atomically renamed Parquet parts."""

    def __init__(self, out: Path, flush_every: int, flush_s: float = math.inf) -> None:
        self.parts = out / PARTS_DIR
        self.examples = out / EXAMPLES_DIR
        self.parts.mkdir(parents=True, exist_ok=True)
        self.flush_every = flush_every
        self.flush_s = flush_s
        self.last_flush = time.perf_counter()
        self.ids: set[str] = set()
        self.buffer: list[dict[str, Any]] = []
        self.written = 0
        self.errors = 0

    def add(self, record: dict[str, Any]) -> None:
        record = dict(record)
        pngs = {c: record.pop(c, None) for c in _PNG_COLUMNS}
        record["example"] = None
        if pngs["example_clean_png"] is not None:
            self.examples.mkdir(parents=True, exist_ok=True)
            slug = _slug(str(record["video_id"]))
            for column, data in pngs.items():
                suffix = column.removeprefix("example_").removesuffix("_png")
                _atomic_write(self.examples / f"{slug}-{suffix}.png", data)
            record["example"] = f"{EXAMPLES_DIR}/{slug}"
        self.errors += record.get("error") is not None
        self.ids.add(str(record["video_id"]))
        self.buffer.append(record)
        if (
            len(self.buffer) >= self.flush_every
            or time.perf_counter() - self.last_flush >= self.flush_s
        ):
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.perf_counter()
        if not self.buffer:
            return
        import pandas as pd

        frame = pd.DataFrame(self.buffer)
        name = f"part-{time.time_ns():020d}-{os.getpid()}.parquet"
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        _atomic_write(self.parts / name, buffer.getvalue())
        self.written += len(self.buffer)
        self.buffer.clear()


def _read_parts(out: Path) -> Any:
    """All part files as one pandas frame, the newest row per ``video_id`` (retries win)."""
    import pandas as pd

    files = sorted((Path(out) / PARTS_DIR).glob("part-*.parquet"))
    if not files:
        return pd.DataFrame()
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return frame.drop_duplicates("video_id", keep="last").sort_values("video_id", ignore_index=True)


def consolidate(out: Path) -> Path:
    """Write ``scores.parquet``: one row per video, sorted by ``video_id``."""
    frame = _read_parts(out)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    path = Path(out) / SCORES_FILE
    _atomic_write(path, buffer.getvalue())
    return path


def read_scores(out: Path) -> Any:
    """The run's rows as a pandas frame (from the part files, so also mid-run)."""
    return _read_parts(out)


def _pick_examples(rows: Sequence[VideoRow], n: int) -> set[str]:
    """The first ``n`` rows by id, half of them fake (more of one class when the other lacks)."""
    ordered = sorted(rows, key=lambda r: r.video_id)
    fakes = [r.video_id for r in ordered if r.label == 1]
    reals = [r.video_id for r in ordered if r.label == 0]
    n_fake = min(len(fakes), n - min(len(reals), n // 2))
    n_real = min(len(reals), n - n_fake)
    return set(fakes[:n_fake] + reals[:n_real])


def _todo(rows: Sequence[VideoRow], out: Path, retry_errors: bool) -> tuple[list[VideoRow], int]:
    done = _read_parts(out)
    if done.empty:
        return list(rows), 0
    finished = done if not retry_errors else done[done["error"].isna()]
    skip = set(finished["video_id"])
    todo = [r for r in rows if r.video_id not in skip]
    return todo, len(rows) - len(todo)


def run_attack(
    rows: Sequence[VideoRow],
    out: Path,
    settings: AttackRunSettings | None = None,
    *,
    dataset: str,
    root: str | Path = "",
    use_ray: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> AttackRunOutcome:
    """Attack ``rows`` into the run folder ``out``; resumes what an earlier call left.

    Args:
        rows: dataset rows (:func:`batch.datasets.read_dataset`).
        out: run folder: ``attack.json``, ``parts/*.parquet``, ``scores.parquet``,
            ``examples/*.png``.
        settings: analysis, attack and actor-pool settings.
        dataset: dataset name written in every row (the report groups by it).
        root: dataset root, recorded in ``attack.json``.
        use_ray: False runs the same actor class in this process (no Ray), e.g. for debugging.
        progress: ``progress(done, total)`` after each row.

    Raises:
        ConfigError: ``out`` holds a different attack, or ``transfer_from`` names no member.
    """
    settings = settings or AttackRunSettings()
    # Every actor runs the ensemble resolved here, whatever its environment says.
    inference = pin_ensemble(settings.analysis.inference)
    settings = settings.model_copy(
        update={"analysis": settings.analysis.model_copy(update={"inference": inference})}
    )
    out = Path(out)
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    todo, skipped = _todo(rows, out, settings.retry_errors)
    examples = _pick_examples(rows, settings.examples)
    items = [
        {**dataclasses.asdict(r), "dataset": dataset, "example": r.video_id in examples}
        for r in todo
    ]
    writer = _PartWriter(out, settings.flush_every, settings.flush_s)
    report = progress or (lambda done, total: None)
    settings_json = settings.model_dump_json()

    def consume(frames: Iterable[Any]) -> None:
        done = 0
        for frame in frames:
            for record in frame.to_dict("records"):
                writer.add({k: _plain(v) for k, v in record.items()})
                done += 1
                report(skipped + done, len(rows))
        writer.flush()

    models = _model_records(settings)
    _check_or_write_config(out, _config_record(settings, dataset, str(root), models))
    if items and not use_ray:
        actor = AttackActor(settings_json)
        consume(actor(_frame(item)) for item in items)
    elif items:
        consume(_ray_stream(items, settings, settings_json))
        for row in todo:
            if row.video_id not in writer.ids:
                writer.add(_lost_row(row, dataset))
        writer.flush()
    scores = consolidate(out)
    return AttackRunOutcome(
        out=out,
        scores=scores,
        total=len(rows),
        skipped=skipped,
        processed=writer.written,
        errors=writer.errors,
        seconds=time.perf_counter() - t0,
        member_names=[m["name"] for m in models],
    )


def _model_records(settings: AttackRunSettings) -> list[dict[str, Any]]:
    """Member identity for ``attack.json``, read from the manifest (no model is loaded here),
    by the ensemble's own rules (:func:`pipeline.models.ensemble.expected_infos`).

    Raises:
        ConfigError: ``transfer_from`` names no member.
        CheckpointError: a checkpoint the manifest names is missing.
    """
    infos = expected_infos(settings.analysis.inference)
    names = [i.name for i in infos]
    transfer = settings.attack.transfer_from
    if transfer is not None and transfer not in names:
        raise ConfigError(
            f"transfer_from {transfer!r} is not a member; members: {', '.join(names)}"
        )
    keys = ("name", "version", "sha256", "weights", "trained_on", "input_size", "licence")
    return [{k: getattr(i, k) for k in keys} for i in infos]


def _frame(item: dict[str, Any]) -> Any:
    import pandas as pd

    return pd.DataFrame([item])


def _plain(value: Any) -> Any:
    """pandas/numpy scalars -> Python values; NaN -> None (missing, not a number)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _lost_row(row: VideoRow, dataset: str) -> dict[str, Any]:
    """An error row for a video whose worker died on every retry (never left unscored)."""
    log.error("%s: the worker died on every retry; written as an error row", row.video_id)
    return {
        "video_id": row.video_id,
        "dataset": dataset,
        "label": row.label,
        "manipulation": row.manipulation,
        "split": row.split,
        "kind": row.kind,
        "error_kind": WORKER_LOST,
        "error": "the worker process died while attacking this video (crash or out of memory) "
        "on every retry; see the Ray worker logs",
    }


def _ray_stream(
    items: list[dict[str, Any]], settings: AttackRunSettings, settings_json: str
) -> Iterator[Any]:
    """Result frames as the actor pool produces them (order not kept; rows are keyed by id).

    One row per block, so the pool balances long and short videos. Errored blocks do not stop
    the run (``max_errored_blocks=-1``): their rows come back as ``worker-lost`` error rows.
    """
    import ray
    from ray.data import DataContext

    if not ray.is_initialized():
        ray.init()
    ctx = DataContext.get_current()
    saved = ctx.max_errored_blocks
    ctx.max_errored_blocks = -1
    try:
        ds: Any = ray.data.from_items(items, override_num_blocks=len(items))
        with warnings.catch_warnings():
            # Ray 2.60 deprecates remote options as extra keywords but has no named parameter
            # for max_task_retries; without it a video that kills its worker retries forever.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            ds = ds.map_batches(
                AttackActor,
                fn_constructor_kwargs={"settings_json": settings_json},
                batch_size=1,
                batch_format="pandas",
                compute=ray.data.ActorPoolStrategy(size=settings.actors),
                num_cpus=settings.num_cpus_per_actor,
                num_gpus=settings.num_gpus_per_actor or None,
                max_task_retries=settings.max_task_retries,
            )
        yield from ds.iter_batches(batch_size=None, batch_format="pandas")
    finally:
        ctx.max_errored_blocks = saved
