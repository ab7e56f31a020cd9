"""Ensembles of detectors (paper section 3.2): face crops in, DeepFake probabilities out.

``Member`` is one detector (used alone by a per-model Serve deployment or Ray Data actor);
``Ensemble`` holds several and averages their sigmoid probabilities (paper 3.1, "Inference"),
weighted by each member's ``weight``. Neither keeps state between calls.

The ensemble's rules live here and nowhere else: which members run (:func:`resolve_ensemble`),
whether a member counts as trained (:func:`weights_status`), what a result records about it
(:func:`member_info`), how member probabilities combine (:func:`combine`), the untrained-weights
warning (:func:`untrained_warning`), the digest that identifies the models of a run
(:func:`models_digest`) and each member's face crop (:func:`member_crops`). The Serve application,
Ray Data runs and attack runs call these.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.errors import CheckpointError, UntrainedWeightsError
from pipeline.models.backends import (
    OnnxRunner,
    OpenVinoRunner,
    Runner,
    TorchRunner,
    export_key,
    export_onnx,
)
from pipeline.models.checkpoint import file_sha256, load_checkpoint
from pipeline.models.manifest import ModelDirectory, resolve_model_dir
from pipeline.models.networks import build_network, calibrate_untrained
from pipeline.models.preprocess import (
    centre_crop_tensor,
    centre_window,
    crops_to_unit_batch,
    normalise,
)
from pipeline.models.settings import InferenceSettings
from pipeline.models.spec import PAPER_CROP_MARGIN, MemberSpec

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
    architecture: str = ""
    licence: str = ""
    source: str = ""
    description: str = ""
    weight: float = 1.0
    crop_margin: float = PAPER_CROP_MARGIN
    caveat: str = ""


# ----------------------------------------------------------------------------------------------
# The ensemble's rules


def resolve_ensemble(settings: InferenceSettings) -> tuple[ModelDirectory, str, list[MemberSpec]]:
    """The model directory, the ensemble's name and its members' specs for ``settings``
    (see :meth:`pipeline.models.manifest.Manifest.resolve` for the order of precedence)."""
    directory = resolve_model_dir(settings.model_dir)
    name, specs = directory.load().resolve(directory, settings.ensemble, settings.members)
    return directory, name, specs


def pin_ensemble(settings: InferenceSettings) -> InferenceSettings:
    """``settings`` with the ensemble resolved here written in (name and member list), so that
    every process a run starts (Ray actors, Serve replicas) runs the same members whatever its
    environment (``$DFD_ENSEMBLE``) or the disk (``auto``) would say."""
    _, name, specs = resolve_ensemble(settings)
    return settings.model_copy(update={"ensemble": name, "members": [s.name for s in specs]})


def weights_status(spec: MemberSpec, directory: ModelDirectory) -> WeightsStatus:
    """``trained`` when the manifest names a checkpoint that is on disk, or that it pins by
    sha256 (then a missing file is an error, not a silent fall-back to random weights)."""
    path = directory.checkpoint_path(spec)
    if path is None or (not path.exists() and spec.sha256 is None):
        return "random-init"
    return "trained"


def member_info(
    spec: MemberSpec, weights: WeightsStatus, sha256: str | None, backend: str
) -> MemberInfo:
    return MemberInfo(
        name=spec.name,
        version=spec.version,
        weights=weights,
        sha256=sha256,
        backend=backend,
        trained_on=spec.trained_on if weights == "trained" else "untrained (random init)",
        input_size=spec.input_size,
        architecture=spec.architecture,
        licence=spec.licence,
        source=spec.source,
        description=spec.description,
        weight=spec.weight,
        crop_margin=spec.crop_margin,
        caveat=spec.caveat,
    )


def expected_infos(settings: InferenceSettings) -> list[MemberInfo]:
    """The :class:`MemberInfo` of every member ``settings`` selects, read from the manifest
    without building a network: lets a driver refuse a bad model directory before it starts
    workers.

    Raises:
        ConfigError: no manifest, or an unknown ensemble or member selected.
        CheckpointError: a checkpoint the manifest names is missing.
        UntrainedWeightsError: trained weights are required and a member has none.
    """
    directory, _, specs = resolve_ensemble(settings)
    infos: list[MemberInfo] = []
    for spec in specs:
        if weights_status(spec, directory) == "random-init":
            if settings.require_trained_weights:
                raise UntrainedWeightsError(
                    f"member {spec.name} has no trained checkpoint "
                    f"({directory.checkpoint_path(spec) or directory.root}) and "
                    "require_trained_weights is set"
                )
            infos.append(member_info(spec, "random-init", None, ""))
            continue
        path = directory.checkpoint_path(spec)
        assert path is not None
        if not path.exists():
            raise CheckpointError(
                f"member {spec.name}: checkpoint {path} named in {directory.manifest_path} "
                "is missing; restore it or re-import the weights"
            )
        infos.append(member_info(spec, "trained", spec.sha256 or file_sha256(path), ""))
    return infos


def combine(member_probs: np.ndarray, weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """``(N, M)`` member probabilities -> ``(N,)`` ensemble probability: their mean weighted by
    each member's ``weight`` (paper 3.1: the plain mean, all weights 1)."""
    w = np.asarray(weights, dtype=np.float64)
    if member_probs.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    return (member_probs @ w) / w.sum()


def untrained_warning(infos: Sequence[MemberInfo]) -> list[str]:
    """The plain-language warnings every output carries: members running untrained, and the
    caveats of the members that run (each once)."""
    out = []
    untrained = [i.name for i in infos if i.weights != "trained"]
    if untrained:
        out.append(
            f"{len(untrained)} of {len(infos)} models run with random, untrained "
            f"weights ({', '.join(untrained)}): scores are not meaningful"
        )
    caveats = dict.fromkeys(i.caveat for i in infos if i.caveat and i.weights == "trained")
    return out + list(caveats)


def models_digest(infos: Iterable[MemberInfo]) -> str:
    """Short hash of the members (name, version, weights status, checkpoint sha256, input
    size, and weight and crop margin where not the defaults).

    Two sessions of a run, or the actor-pool and Serve options, scored with the same models
    when their digests are equal.
    """
    key = []
    for i in infos:
        item: list[object] = [i.name, i.version, i.weights, i.sha256 or "", int(i.input_size)]
        if i.weight != 1.0 or i.crop_margin != PAPER_CROP_MARGIN:
            item += [i.weight, i.crop_margin]
        key.append(item)
    key.sort()
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def context_margin(infos: Iterable[MemberInfo | MemberSpec]) -> float:
    """The margin the pipeline cuts face crops at: the largest of the members' margins, so
    that every member can take its own centred square from the one crop."""
    return max((i.crop_margin for i in infos), default=PAPER_CROP_MARGIN)


def member_crops(
    crops: Sequence[np.ndarray], crop_margin: float, context: float
) -> Sequence[np.ndarray]:
    """Each crop (cut at margin ``context``) reduced to the centred square of ``crop_margin``
    (views, no copies); the crops themselves when the margins are equal."""
    if crop_margin >= context:
        return crops
    fraction = crop_margin / context
    out = []
    for c in crops:
        rows, cols = centre_window(c.shape[0], c.shape[1], fraction)
        out.append(c[rows, cols])
    return out


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
        self.info = member_info(spec, weights, sha256, runner.name)

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
        if path is None or weights_status(spec, directory) == "random-init":
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
        spec = self.spec
        return sigmoid(
            self.logits(crops_to_unit_batch(crops, spec.input_size, device, spec.resize))
        )


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
            unit: dict[tuple[int, str, float], Tensor] = {}
            for member in self.members:
                spec = member.spec
                if spec.unit_key not in unit:
                    own = member_crops(chunk, spec.crop_margin, self.crop_margin)
                    unit[spec.unit_key] = crops_to_unit_batch(
                        own, spec.input_size, self.device, spec.resize
                    )

            def score(j: int, unit: dict[tuple[int, str, float], Tensor] = unit) -> np.ndarray:
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
    """

    def __init__(
        self,
        nets: Sequence[nn.Module],
        specs: Sequence[MemberSpec],
        input_size: int | None = None,
        context: float | None = None,
    ) -> None:
        super().__init__()
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
            outs.append(net(normalise(xi, spec.mean, spec.std)))
        return torch.stack(outs, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        weights: Tensor = self.weights  # type: ignore[assignment]  # a registered buffer
        return torch.sigmoid(self.member_logits(x)) @ weights.to(x.dtype)
