"""The DFDC winner (Seferbekov, selimsef/dfdc_deepfake_challenge) -> a member.

``DeepFakeClassifier("tf_efficientnet_b7_ns")`` (training/zoo/classifiers.py) runs timm's
``encoder.forward_features`` -> ``AdaptiveAvgPool2d(1)`` -> ``Dropout(0)`` -> ``fc =
Linear(2560, 1)``: timm's own ``tf_efficientnet_b7`` with one class does the same (timm 0.4.12's
``tf_efficientnet_b7_ns`` and timm 1.0.31's ``tf_efficientnet_b7`` have the same keys and
features, CHECKPOINTS.md section 0). The encoder keeps its unused ImageNet ``classifier``
(1000 x 2560), which is dropped here; ``fc`` becomes timm's ``classifier``.

The released files (``final_{111,555,777,888,999}_DeepFakeClassifier_tf_efficientnet_b7_ns_0_*``,
no extension) are ``{'epoch', 'state_dict', 'bce_best'}`` written by DataParallel/DDP training
(keys ``module.encoder.*``, ``module.fc.*``; train_classifier.py); a bare state dict is accepted
too, as predict_folder.py's ``checkpoint.get("state_dict", checkpoint)`` does.

Preprocessing as upstream's kernel_utils.py: MTCNN box padded by a third of its height above and
below and a third of its width on either side, longest side resized to 380 and zero-padded to
380x380 at the centre, ImageNet mean/std; score ``sigmoid(logit)``. Upstream runs the model in
fp16; this member runs in the precision the deployment picks.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import CheckpointError
from pipeline.models.importers.base import (
    ImportedMember,
    read_torch_file,
    rename_upstream_state,
    state_dict_of,
    upstream_source,
)
from pipeline.models.registry import build_network
from pipeline.models.spec import IMAGENET_MEAN, IMAGENET_STD, MemberSpec

FAMILY = "selimsef DFDC"
#: The encoder of the released weights (upstream's name); its zoo has others, never published.
VARIANTS = ("tf_efficientnet_b7_ns",)
SELIMSEF_BACKBONE = "tf_efficientnet_b7"
SELIMSEF_FEATURES = 2560
SELIMSEF_INPUT_SIZE = 380
# kernel_utils.py pads the MTCNN box by h // 3 above and below and w // 3 left and right: 1 + 2/3
# times each side. Upstream letterboxes that box-shaped crop; the member's square crop of 1 + 2/3
# times the longer side is the same crop wherever the box is square.
SELIMSEF_CROP_MARGIN = 1.0 + 2.0 / 3.0
SELIMSEF_LICENCE = "MIT (code; no separate weights licence)"
#: The encoder's ImageNet head, built by timm and saved, but never called by the forward.
UNUSED_KEYS = ("encoder.classifier.weight", "encoder.classifier.bias")
_MARKERS = ("encoder.conv_stem.weight", "fc.weight")


def _numpy_scalar_globals() -> list[Any]:
    """The globals of a pickled ``numpy.float64``, under both numpy 1 and numpy 2 names.

    ``bce_best`` is sklearn ``log_loss``'s result, a ``numpy.float64``, which torch's
    ``weights_only=True`` loader refuses by default. ``weights_only=False`` would run whatever
    code a downloaded pickle names; allow-listing the scalar constructor and the float64 dtype
    lets exactly that value through. Files written under numpy 1 name the constructor
    ``numpy.core.multiarray.scalar``, numpy 2 ``numpy._core.multiarray.scalar``.
    """
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2 without the ``_core`` alias
        multiarray = importlib.import_module("numpy.core.multiarray")
    scalar = multiarray.scalar
    return [
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
        type(np.dtype(np.float64)),  # numpy.dtypes.Float64DType
    ]


def import_selimsef(path: Path, name: str, variant: str | None) -> ImportedMember:
    """The member for one of selimsef's DFDC checkpoints at ``path``.

    The member takes ``(N, 3, 380, 380)`` letterboxed crops normalised by the ImageNet mean/std
    and gives one logit whose sigmoid is P(fake). Raises :class:`CheckpointError` naming the
    file and keys for a file that is not a ``DeepFakeClassifier`` on ``tf_efficientnet_b7_ns``.
    """
    if variant is not None and variant not in VARIANTS:
        raise CheckpointError(
            f"checkpoint {path}: selimsef's released weights are all {', '.join(VARIANTS)} "
            f"DeepFakeClassifiers, not {variant!r}"
        )
    raw = read_torch_file(path, FAMILY, _numpy_scalar_globals())
    state = state_dict_of(raw, path, FAMILY, entry="state_dict")
    absent = [k for k in _MARKERS if k not in state]
    if absent:
        raise CheckpointError(
            f"checkpoint {path} is not a selimsef DeepFakeClassifier: no key "
            f"{', '.join(absent)}; its keys begin {', '.join(list(state)[:3])}"
        )
    features = state["fc.weight"].shape[-1]
    if features != SELIMSEF_FEATURES:
        raise CheckpointError(
            f"checkpoint {path}: fc.weight has {features} input features; only the released "
            f"tf_efficientnet_b7_ns encoder ({SELIMSEF_FEATURES}) is supported"
        )
    spec = MemberSpec(
        name=name,
        architecture="timm",
        backbone=SELIMSEF_BACKBONE,
        input_size=SELIMSEF_INPUT_SIZE,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        resize="letterbox",
        crop_margin=SELIMSEF_CROP_MARGIN,
        output="fake-logit",
        num_classes=1,
        licence=SELIMSEF_LICENCE,
        trained_on="DFDC training set (Deepfake Detection Challenge, 2020)",
        source=upstream_source(
            "selimsef/dfdc_deepfake_challenge DeepFakeClassifier(tf_efficientnet_b7_ns)", path
        ),
        description=(
            "DFDC 1st place (Seferbekov, 2020): EfficientNet-B7 (noisy student) with a "
            "one-logit head, face box padded by 1/3 per side, longest side to 380 and "
            "zero-padded square, ImageNet mean/std; sigmoid = P(fake). Upstream averages 7 "
            "such checkpoints."
        ),
    )
    net = build_network(spec)
    expected = net.state_dict()
    names = {k: "encoder." + k for k in expected if not k.startswith("classifier.")}
    names |= {"classifier.weight": "fc.weight", "classifier.bias": "fc.bias"}
    converted = rename_upstream_state(
        state, names, expected, f"selimsef checkpoint {path}", dropped=UNUSED_KEYS
    )
    return ImportedMember(spec=spec, state=converted)
