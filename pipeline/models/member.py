"""One detector (paper section 3.2) and the ensemble's rules, without torch.

``Member`` is one detector, used alone by a per-model Serve deployment or Ray Data actor, or as
part of an :class:`~pipeline.models.ensemble.Ensemble`. A member that runs an exported file
(ONNX Runtime, OpenVINO) prepares its inputs with numpy and needs no torch at all: a Serve member
replica then holds one copy of the member's weights and none of torch's own memory (about
600 MB of resident memory per process here). Torch is loaded where a member needs it: the torch
runner, a network for gradients or training, a first export.

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
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from pipeline.errors import CheckpointError, UntrainedWeightsError
from pipeline.memory import release_free_memory
from pipeline.models.backends import (
    OnnxRunner,
    OpenVinoRunner,
    Runner,
    TorchRunner,
    export_key,
    export_onnx,
    weights_path,
)
from pipeline.models.checkpoint import file_sha256, verify_checkpoint
from pipeline.models.manifest import ModelDirectory, resolve_model_dir
from pipeline.models.resize import centre_window, unit_batch
from pipeline.models.settings import InferenceSettings
from pipeline.models.spec import PAPER_CROP_MARGIN, MemberSpec

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

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


def member_network(spec: MemberSpec, checkpoint: Path | None) -> nn.Module:
    """``spec``'s torch network on the CPU in eval mode: ``checkpoint`` (a file whose sha256 the
    caller has checked) loaded with strict keys, or without one the seeded random initialisation
    with its batch-norm statistics calibrated
    (:func:`~pipeline.models.networks.calibrate_untrained`)."""
    from pipeline.models.checkpoint import load_verified
    from pipeline.models.networks import build_network, calibrate_untrained

    net = build_network(spec)
    if checkpoint is None:
        calibrate_untrained(net, spec)
    else:
        load_verified(net, checkpoint)
    return net.eval()


class Member:
    """One detector: the runner that executes it, its provenance, and its torch network.

    A member that runs an exported file (ONNX Runtime, OpenVINO) holds its weights once, in the
    runtime: its torch network is built only when something asks for :attr:`net` (gradients for
    an attack, training, a fresh export), from the same checkpoint or the same seeded
    initialisation, so it equals the one the file was exported from.
    """

    def __init__(
        self,
        spec: MemberSpec,
        net: nn.Module | None,
        runner: Runner,
        weights: WeightsStatus,
        sha256: str | None,
        checkpoint: Path | None = None,
    ) -> None:
        """``net`` may be None when ``runner`` runs an exported file; it is then built from
        ``checkpoint`` (trained weights) or the seeded initialisation on first use."""
        self.spec = spec
        self.runner = runner
        self.info = member_info(spec, weights, sha256, runner.name)
        self._net = net
        self._checkpoint = checkpoint if weights == "trained" else None
        self._net_lock = threading.Lock()

    @classmethod
    def load(
        cls, spec: MemberSpec, directory: ModelDirectory, settings: InferenceSettings
    ) -> Member:
        """Verify the member's checkpoint (sha256), pick a runner and load it into the runner.

        Without a checkpoint the member is randomly initialised (deterministically, see
        :func:`~pipeline.models.networks.init_seed`) and says so loudly, unless
        ``settings.require_trained_weights`` turns that into an error. The torch network is
        built here only for the torch runner or to export a file the cache lacks (strict keys,
        :func:`~pipeline.models.checkpoint.load_verified`), and dropped once exported; the
        checkpoint is hashed once.
        """
        path = directory.checkpoint_path(spec)
        checkpoint: Path | None = None
        if path is None or weights_status(spec, directory) == "random-init":
            if settings.require_trained_weights:
                where = path or directory.root
                raise UntrainedWeightsError(
                    f"member {spec.name} has no trained checkpoint ({where}) and "
                    "require_trained_weights is set"
                )
            log.warning(RANDOM_INIT_WARNING.format(name=spec.name, root=directory.root))
            weights: WeightsStatus = "random-init"
            sha256 = None
            weights_id = f"random-init-v3-{spec.architecture_digest()}"
        else:
            checkpoint = path
            sha256 = verify_checkpoint(path, spec.sha256)
            weights, weights_id = "trained", sha256
        net: nn.Module | None = None
        runner: Runner
        backend = settings.resolved_backend()
        if backend in ("onnx", "openvino"):
            onnx_path = directory.cache_dir / f"{spec.name}-{export_key(spec, weights_id)}.onnx"
            if not onnx_path.exists():
                export_onnx(
                    member_network(spec, checkpoint),
                    spec,
                    onnx_path,
                    separate_weights=True,
                )
            if backend == "onnx":
                runner = OnnxRunner(onnx_path, threads=settings.onnx_threads)
            else:
                runner = OpenVinoRunner(
                    onnx_path,
                    threads=settings.onnx_threads,
                    cache_dir=directory.cache_dir / "openvino",
                )
        else:
            net = member_network(spec, checkpoint)
            runner = TorchRunner(
                net, settings.torch_device(), settings.precision, settings.channels_last
            )
        # Reading a model leaves its file's bytes and the runtime's intermediate copies in the
        # freed heap, which glibc keeps: 270 MB of 490 MB for EfficientNetV2-M's session.
        release_free_memory()
        return cls(spec, net, runner, weights, sha256, checkpoint)

    @property
    def net(self) -> nn.Module:
        """The torch network (CPU, eval mode unless a caller changed it), built on first use
        for a member that runs an exported file, then kept."""
        with self._net_lock:
            if self._net is None:
                if self._checkpoint is not None:  # unchanged since the runtime loaded it?
                    verify_checkpoint(self._checkpoint, self.info.sha256)
                self._net = member_network(self.spec, self._checkpoint)
            return self._net

    @property
    def has_network(self) -> bool:
        """Whether the torch network is in memory (always for the torch runner)."""
        return self._net is not None

    @property
    def weight_bytes(self) -> int:
        """Bytes of the member's weights: its exported file's size, else its parameters'."""
        path = getattr(self.runner, "path", None)
        if isinstance(path, Path):
            data = weights_path(path)
            return path.stat().st_size + (data.stat().st_size if data.exists() else 0)
        return int(sum(p.numel() * p.element_size() for p in self.net.parameters()))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def exported(self) -> bool:
        """Whether the member runs an exported file (ONNX Runtime, OpenVINO): its inputs are
        then prepared with numpy, and torch need not be loaded."""
        return self.runner.name != "torch"

    def unit_batch(
        self, crops: Sequence[np.ndarray], device: torch.device | None = None
    ) -> Tensor | np.ndarray:
        """Face crops ``(H, W, 3)`` uint8 RGB -> ``(N, 3, S, S)`` float32 in [0, 1] at the
        member's input size and resize rule: a numpy array for an exported member, else a tensor
        on ``device`` (the two agree to 1e-6: :mod:`pipeline.models.resize`)."""
        spec = self.spec
        if self.exported:
            return unit_batch(crops, spec.input_size, spec.resize)
        import torch

        from pipeline.models.preprocess import crops_to_unit_batch

        return crops_to_unit_batch(
            crops, spec.input_size, device or torch.device("cpu"), spec.resize
        )

    def logits(self, x: Tensor | np.ndarray) -> np.ndarray:
        """``x``: ``(N, 3, S, S)`` float in [0, 1] at the member's input size -> ``(N,)`` logits."""
        if isinstance(x, np.ndarray):
            return self.runner(normalise_array(x, self.spec.mean, self.spec.std))
        from pipeline.models.preprocess import normalise

        return self.runner(normalise(x, self.spec.mean, self.spec.std))

    def predict(
        self, crops: Sequence[np.ndarray], device: torch.device | None = None
    ) -> np.ndarray:
        """Face crops ``(H, W, 3)`` uint8 RGB -> ``(N,)`` float64 probabilities in (0, 1)."""
        if not crops:
            return np.zeros(0, dtype=np.float64)
        return sigmoid(self.logits(self.unit_batch(crops, device)))


def normalise_array(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(x - mean) / std`` per channel of ``(N, 3, S, S)`` float32, as
    :func:`pipeline.models.preprocess.normalise` computes it on a tensor (same float32 steps)."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return (x - m) / s
