"""The five-model ensemble of paper section 3.2: face crops in, DeepFake probabilities out.

``Member`` is one detector (used alone by a per-model Serve deployment or Ray Data actor);
``Ensemble`` holds several and averages their sigmoid probabilities (paper 3.1, "Inference").
Neither keeps state between calls.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.errors import UntrainedWeightsError
from pipeline.models.backends import (
    OnnxRunner,
    OpenVinoRunner,
    Runner,
    TorchRunner,
    export_key,
    export_onnx,
)
from pipeline.models.checkpoint import load_checkpoint
from pipeline.models.manifest import ModelDirectory, resolve_model_dir
from pipeline.models.networks import build_network, calibrate_untrained
from pipeline.models.preprocess import crops_to_unit_batch, normalise
from pipeline.models.settings import InferenceSettings
from pipeline.models.spec import MemberSpec

log = logging.getLogger(__name__)

WeightsStatus = Literal["trained", "random-init"]

RANDOM_INIT_WARNING = (
    "member {name} runs with RANDOM weights (no checkpoint in {root}): its scores carry no "
    "information about manipulation; import trained weights with `dfd models import`"
)


@dataclass(frozen=True)
class MemberInfo:
    """What a result records about a member."""

    name: str
    version: str
    weights: WeightsStatus
    sha256: str | None
    backend: str
    trained_on: str
    input_size: int


def sigmoid(x: np.ndarray) -> np.ndarray:
    # exp(-logaddexp(0, -x)) is 1 / (1 + exp(-x)) without overflow for large |x|.
    return np.exp(-np.logaddexp(0.0, -x.astype(np.float64)))


class Member:
    """One detector: a network plus the runner that executes it, and its provenance."""

    def __init__(
        self,
        spec: MemberSpec,
        net: nn.Module,
        runner: Runner,
        weights: WeightsStatus,
        sha256: str | None,
    ) -> None:
        self.spec = spec
        self.net = net
        self.runner = runner
        self.info = MemberInfo(
            name=spec.name,
            version=spec.version,
            weights=weights,
            sha256=sha256,
            backend=runner.name,
            trained_on=spec.trained_on if weights == "trained" else "untrained (random init)",
            input_size=spec.input_size,
        )

    @classmethod
    def load(
        cls, spec: MemberSpec, directory: ModelDirectory, settings: InferenceSettings
    ) -> Member:
        """Build the network, load its checkpoint (strict, sha256-checked) and pick a runner.

        Without a checkpoint the member is randomly initialised (deterministically, see
        :func:`~pipeline.models.networks.init_seed`) and says so loudly, unless
        ``settings.require_trained_weights`` turns that into an error.
        """
        net = build_network(spec)
        path = directory.checkpoint_path(spec)
        if path is None or (not path.exists() and spec.sha256 is None):
            if settings.require_trained_weights:
                where = path or directory.root
                raise UntrainedWeightsError(
                    f"member {spec.name} has no trained checkpoint ({where}) and "
                    "require_trained_weights is set"
                )
            log.warning(RANDOM_INIT_WARNING.format(name=spec.name, root=directory.root))
            calibrate_untrained(net, spec)
            weights: WeightsStatus = "random-init"
            sha256 = None
            weights_id = f"random-init-v3-{spec.architecture_digest()}"
        else:
            sha256 = load_checkpoint(net, path, spec.sha256)
            weights, weights_id = "trained", sha256
        runner: Runner
        backend = settings.resolved_backend()
        if backend in ("onnx", "openvino"):
            onnx_path = directory.cache_dir / f"{spec.name}-{export_key(spec, weights_id)}.onnx"
            if not onnx_path.exists():
                export_onnx(net, spec, onnx_path)
            if backend == "onnx":
                runner = OnnxRunner(onnx_path, threads=settings.onnx_threads)
            else:
                runner = OpenVinoRunner(
                    onnx_path,
                    threads=settings.onnx_threads,
                    cache_dir=directory.cache_dir / "openvino",
                )
        else:
            runner = TorchRunner(
                net, settings.torch_device(), settings.precision, settings.channels_last
            )
        return cls(spec, net, runner, weights, sha256)

    @property
    def name(self) -> str:
        return self.spec.name

    def logits(self, x: Tensor) -> np.ndarray:
        """``x``: ``(N, 3, S, S)`` float in [0, 1] at the member's input size -> ``(N,)`` logits."""
        return self.runner(normalise(x, self.spec.mean, self.spec.std))

    def predict(
        self, crops: Sequence[np.ndarray], device: torch.device | None = None
    ) -> np.ndarray:
        """Face crops ``(H, W, 3)`` uint8 RGB -> ``(N,)`` float64 probabilities in (0, 1)."""
        if not crops:
            return np.zeros(0, dtype=np.float64)
        device = device or torch.device("cpu")
        return sigmoid(self.logits(crops_to_unit_batch(crops, self.spec.input_size, device)))


@dataclass(frozen=True)
class EnsemblePrediction:
    """``probability`` ``(N,)`` in (0, 1): the mean of ``member_probabilities`` ``(N, M)``."""

    probability: np.ndarray
    member_probabilities: np.ndarray
    member_names: tuple[str, ...]

    def member_dict(self, i: int) -> dict[str, float]:
        return {
            n: float(p)
            for n, p in zip(self.member_names, self.member_probabilities[i], strict=True)
        }


class Ensemble:
    """Members whose sigmoid probabilities are averaged (paper 3.1)."""

    def __init__(
        self, members: Sequence[Member], settings: InferenceSettings | None = None
    ) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        self.settings = settings or InferenceSettings()
        self.device = self.settings.torch_device()
        self.workers = self.settings.member_workers_for(len(self.members))
        # Longest first (parameter count stands in for cost: EfficientNetV2-M, the multi-scale
        # DETR, the two DETRs, plain B4), so the last member to start is a short one.
        self._order = sorted(
            range(len(self.members)),
            key=lambda j: -sum(p.numel() for p in self.members[j].net.parameters()),
        )
        self._pool = (
            ThreadPoolExecutor(self.workers, thread_name_prefix="dfd-member")
            if self.workers > 1
            else None
        )

    @classmethod
    def load(cls, settings: InferenceSettings | None = None) -> Ensemble:
        settings = settings or InferenceSettings()
        directory = resolve_model_dir(settings.model_dir)
        manifest = directory.load()
        specs = manifest.members
        if settings.members is not None:
            specs = [manifest.member(n) for n in settings.members]
        # Members that run side by side share the cores instead of each taking all of them.
        member_settings = settings.model_copy(
            update={"onnx_threads": settings.runtime_threads_for(len(specs))}
        )
        return cls([Member.load(s, directory, member_settings) for s in specs], settings)

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
        if not self.untrained:
            return []
        return [
            f"{len(self.untrained)} of {len(self.members)} models run with random, untrained "
            f"weights ({', '.join(self.untrained)}): scores are not meaningful"
        ]

    def predict(self, crops: Sequence[np.ndarray]) -> EnsemblePrediction:
        """Face crops ``(H, W, 3)`` uint8 RGB, any size -> ensemble and member probabilities.

        Crops are processed in chunks of ``settings.batch_size``; members sharing input size
        share one resized batch. With several workers (``settings.member_workers``; CPU runtimes
        only) the members of a chunk run side by side, each on its share of the cores, as the
        paper's five models "operating in parallel": on a 2-core CPU this beat running each
        member on both cores in turn, whose per-operator threading leaves cores idle.
        """
        n, m = len(crops), len(self.members)
        member_probs = np.zeros((n, m), dtype=np.float64)
        step = self.settings.batch_size
        for start in range(0, n, step):
            chunk = crops[start : start + step]
            unit: dict[int, Tensor] = {}
            for member in self.members:
                size = member.spec.input_size
                if size not in unit:
                    unit[size] = crops_to_unit_batch(chunk, size, self.device)

            def score(j: int, unit: dict[int, Tensor] = unit) -> np.ndarray:
                member = self.members[j]
                return sigmoid(member.logits(unit[member.spec.input_size]))

            scored = (self._pool.map if self._pool is not None else map)(score, self._order)
            for j, probs in zip(self._order, scored, strict=True):
                member_probs[start : start + len(chunk), j] = probs
        prob = member_probs.mean(axis=1) if n else np.zeros(0, dtype=np.float64)
        return EnsemblePrediction(prob, member_probs, self.member_names)

    def torch_module(self, input_size: int | None = None) -> EnsembleModule:
        """A differentiable ``nn.Module`` of the whole ensemble (for ART and training)."""
        return EnsembleModule(
            [m.net for m in self.members], [m.spec for m in self.members], input_size
        )


class EnsembleModule(nn.Module):
    """``(N, 3, S, S)`` float in [0, 1] -> ``(N,)`` ensemble probability, differentiable end to end.

    Resizing to each member's input size and normalisation happen inside, so gradients reach the
    unnormalised face crop (paper 4.1.3 attacks the ensemble through ART).
    """

    def __init__(
        self, nets: Sequence[nn.Module], specs: Sequence[MemberSpec], input_size: int | None = None
    ) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.specs = list(specs)
        self.input_size = input_size or self.specs[0].input_size

    def member_logits(self, x: Tensor) -> Tensor:
        """``(N, M)`` logits."""
        outs = []
        for net, spec in zip(self.nets, self.specs, strict=True):
            xi = x
            if xi.shape[-1] != spec.input_size or xi.shape[-2] != spec.input_size:
                xi = nn.functional.interpolate(
                    xi,
                    size=(spec.input_size, spec.input_size),
                    mode="bilinear",
                    align_corners=False,
                )
            outs.append(net(normalise(xi, spec.mean, spec.std)))
        return torch.stack(outs, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.member_logits(x)).mean(dim=1)
