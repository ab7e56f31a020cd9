"""Xception (Chollet, CVPR 2017) as the deepfake projects that publish Xception weights build it.

Both polimi-ispl/icpr2020dfdc (``architectures/externals/xception.py``) and SCLBD/DeepfakeBench
(``training/networks/xception.py``) use Cadene's ``pretrainedmodels`` port of the Keras Xception
(itself tstandley's port), the FaceForensics++ baseline. timm keeps exactly that network as
``legacy_xception``: same modules in the same order, same state-dict keys except the classifier
(``fc`` in timm, ``last_linear`` in Cadene's), same forward (features -> ReLU -> global average
pool -> linear). The importers in :mod:`pipeline.models.importers.xception_family` rename the keys;
this module only builds the network.

The Cadene port's first two convolutions are unpadded (``padding=0``), so the network runs at any
input side (icpr2020dfdc uses 224, DeepfakeBench 256, ImageNet 299); the spec's ``input_size``
is preprocessing only and does not shape the network.
"""

from __future__ import annotations

import timm
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models.spec import MemberSpec

#: The timm name of the Cadene Xception.
XCEPTION_BACKBONE = "legacy_xception"


def build_xception(spec: MemberSpec) -> nn.Module:
    """Raw Cadene-style Xception for ``spec``, randomly initialised (weights come from import).

    Input ``(N, 3, S, S)`` float normalised by the spec's mean/std (``S = spec.input_size``);
    output ``(N, C)`` raw logits, ``C = spec.num_classes`` (1 for icpr2020dfdc's one fake logit,
    2 for DeepfakeBench's softmax). State-dict keys are timm's (``conv1.weight`` ... ``fc.bias``).
    """
    if spec.backbone not in ("", XCEPTION_BACKBONE):
        raise ConfigError(
            f"member {spec.name}: architecture 'xception' is timm's {XCEPTION_BACKBONE!r}; "
            f"backbone {spec.backbone!r} is not supported"
        )
    if spec.options:
        raise ConfigError(
            f"member {spec.name}: architecture 'xception' takes no options, got "
            f"{sorted(spec.options)}"
        )
    # pretrained=False: nothing is downloaded at run time; trained weights arrive by import.
    return timm.create_model(XCEPTION_BACKBONE, pretrained=False, num_classes=spec.num_classes)
