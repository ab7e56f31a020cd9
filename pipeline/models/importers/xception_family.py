"""Xception checkpoints of icpr2020dfdc and DeepfakeBench -> members on timm ``legacy_xception``.

Both projects wrap Cadene's ``pretrainedmodels`` Xception (see :mod:`pipeline.models.xception`),
so their state dicts are timm's after three renames: the wrapper's attribute prefix goes
(``xception.`` in icpr2020dfdc's ``fornet.Xception``, ``backbone.`` in DeepfakeBench's
``XceptionDetector``), ``last_linear`` becomes ``fc``, and DeepfakeBench's seven
``adjust_channel.*`` entries, a 1x1 conv + batch norm that its ``mode: original`` xception never
calls, are dropped. Anything else is refused with the file and the keys named.

The family importers (:mod:`pipeline.models.importers.icpr`,
:mod:`pipeline.models.importers.deepfakebench`) read and unwrap the file, then call
:func:`icpr_xception_member` or :func:`dfb_xception_member` with the bare state dict; the
member's preprocessing, output convention and licence are the family's own
(:func:`~pipeline.models.importers.icpr.icpr_spec`,
:func:`~pipeline.models.importers.deepfakebench.dfb_spec`).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from pipeline.errors import CheckpointError
from pipeline.models.checkpoint import format_keys
from pipeline.models.importers.base import ImportedMember, check_member_state
from pipeline.models.importers.deepfakebench import dfb_spec
from pipeline.models.importers.icpr import icpr_spec
from pipeline.models.spec import MemberSpec
from pipeline.models.xception import XCEPTION_BACKBONE

#: icpr2020dfdc ``fornet.Xception``: Cadene's net as ``self.xception``, its ``last_linear``
#: replaced by ``Linear(2048, 1)``.
ICPR_PREFIX = "xception."
#: DeepfakeBench ``XceptionDetector``: its own Cadene-style net as ``self.backbone``.
DFB_PREFIX = "backbone."
#: The ``adjust_channel = Sequential(Conv2d(2048, 512, 1), BatchNorm2d(512), ReLU())`` entries of
#: DeepfakeBench's xception (networks/xception.py), built always, used only in its
#: ``adjust_channel`` modes, never by the ``original`` mode of the published xception detector.
DFB_UNUSED_KEYS: tuple[str, ...] = (
    "adjust_channel.0.weight",
    "adjust_channel.0.bias",
    "adjust_channel.1.weight",
    "adjust_channel.1.bias",
    "adjust_channel.1.running_mean",
    "adjust_channel.1.running_var",
    "adjust_channel.1.num_batches_tracked",
)


def icpr_xception_member(path: Path, name: str, state: dict[str, Tensor]) -> ImportedMember:
    """The member for icpr2020dfdc's ``Xception`` weights ``state`` (read from ``path``).

    ``state`` is ``net.state_dict()`` of ``architectures.fornet.Xception`` (276 entries
    ``xception.*``, ``xception.last_linear`` a ``Linear(2048, 1)``), already unwrapped from the
    training file's ``{'net': ..., 'opt': ..., ...}`` where there was one. The member takes
    ``(N, 3, 224, 224)`` ImageNet-normalised crops and its one logit's sigmoid is P(fake)
    (upstream label 1 = fake; per frame ``expit(logit)``).
    """
    spec = icpr_spec(
        path,
        name,
        "Xception",
        architecture="xception",
        backbone=XCEPTION_BACKBONE,
        description=(
            "icpr2020dfdc Xception (Bonettini et al., ICPR 2020): Cadene's Xception with a "
            "one-logit head, 224x224 face crops, ImageNet mean/std; sigmoid = P(fake)."
        ),
    )
    timm_state = _to_timm(path, state, "icpr2020dfdc Xception", ICPR_PREFIX, ())
    return _checked(path, spec, timm_state, "icpr2020dfdc Xception", ICPR_PREFIX)


def dfb_xception_member(path: Path, name: str, state: dict[str, Tensor]) -> ImportedMember:
    """The member for DeepfakeBench's ``xception`` detector weights ``state`` (read from ``path``).

    ``state`` is the detector's plain ``model.state_dict()`` as DeepfakeBench saves it
    (``backbone.*``, with ``backbone.last_linear`` a ``Linear(2048, 2)`` and the seven unused
    ``backbone.adjust_channel.*`` entries). The member takes ``(N, 3, 256, 256)`` crops normalised
    by mean = std = 0.5 and gives the two-class softmax, "fake" at index 1 (DeepfakeBench's
    ``prob = softmax(pred)[:, 1]``).
    """
    spec = dfb_spec(
        path,
        name,
        "xception",
        architecture="xception",
        backbone=XCEPTION_BACKBONE,
        description=(
            "DeepfakeBench Xception (FaceForensics++ baseline as benchmarked by Yan et al., "
            "NeurIPS 2023 D&B): Cadene's Xception with a two-class head, 256x256 aligned face "
            "crops, mean = std = 0.5; softmax index 1 = fake."
        ),
    )
    timm_state = _to_timm(path, state, "DeepfakeBench xception", DFB_PREFIX, DFB_UNUSED_KEYS)
    return _checked(path, spec, timm_state, "DeepfakeBench xception", DFB_PREFIX)


def _to_timm(
    path: Path, state: dict[str, Tensor], family: str, prefix: str, unused: tuple[str, ...]
) -> dict[str, Tensor]:
    """Upstream keys -> timm ``legacy_xception`` keys: drop ``prefix`` and the ``unused`` entries
    (which must all be there: they mark the family), rename ``last_linear`` to ``fc``."""
    outside = [k for k in state if not k.startswith(prefix)]
    if outside:
        raise CheckpointError(
            f"checkpoint {path} is not a {family} state dict: every key starts with {prefix!r} "
            f"there, these do not: {format_keys(outside)}"
        )
    body = {k.removeprefix(prefix): v for k, v in state.items()}
    absent = [prefix + k for k in unused if k not in body]
    if absent:
        raise CheckpointError(
            f"checkpoint {path} is not a {family} state dict as upstream saves it: missing keys: "
            f"{format_keys(absent)}"
        )
    renamed: dict[str, Tensor] = {}
    for key, value in body.items():
        if key in unused:
            continue
        head, dot, rest = key.partition(".")
        renamed[("fc" if head == "last_linear" else head) + dot + rest] = value
    return renamed


def _checked(
    path: Path, spec: MemberSpec, state: dict[str, Tensor], family: str, prefix: str
) -> ImportedMember:
    """``ImportedMember(spec, state)`` once ``state`` loads strictly into ``spec``'s network."""
    what = (
        f"{family} checkpoint {path} (key names below are timm's: {prefix!r} dropped, "
        "'last_linear' renamed 'fc')"
    )
    return check_member_state(spec, state, what)
