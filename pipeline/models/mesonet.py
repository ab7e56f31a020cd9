"""MesoNet (Afchar et al., "MesoNet: a Compact Facial Video Forgery Detection Network", WIFS 2018).

The two published architectures, Meso4 and MesoInception4, rebuilt in torch so that the authors'
Keras weights (``DariusAf/MesoNet`` ``weights/``, converted by
:mod:`pipeline.models.importers.mesonet`) give the same numbers as the Keras originals. Each
choice below that differs from a torch default is forced by a Keras 2 default the authors used:

* ``padding='same'`` convolutions: all kernels are odd, so 'same' is a symmetric pad of
  ``dilation * (k // 2)``;
* ``BatchNormalization()`` has ``epsilon=1e-3`` (torch's default is 1e-5) and momentum 0.99
  (torch's 0.01 in its own convention), after the ReLU, as upstream applies it;
* ``MaxPooling2D(padding='same')`` with stride = pool size pads only at the bottom/right and never
  picks the padding; ``ceil_mode=True`` takes the same windows (identical at 256x256, where every
  side divides evenly, and still right at other input sizes);
* ``Flatten`` reads the channels-last (NHWC) tensor, see :meth:`_MesoTail.classify`.

Input: ``(N, 3, S, S)`` RGB in ``[0, 1]`` (pixel / 255, no mean/std), ``S`` = 256 for the
published weights. Output: ``(N, 1)``, the pre-sigmoid value of the last Dense layer, whose
sigmoid is P(real) (upstream's training folders sorted ``df`` = 0, ``real`` = 1); the member spec
says ``output="real-logit"`` so :class:`~pipeline.models.outputs.DetectorNet` negates it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pipeline.errors import ConfigError
from pipeline.models.spec import MemberSpec

#: Variant name (= registry architecture name) -> the class name upstream uses.
VARIANTS: dict[str, str] = {"meso4": "Meso4", "mesoinception4": "MesoInception4"}
#: The input side of the published weights (upstream ``IMGWIDTH``).
MESONET_INPUT_SIZE = 256
#: Keras ``BatchNormalization`` defaults (epsilon, and momentum in torch's convention).
KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.01
#: Upstream ``LeakyReLU(alpha=0.1)`` after the first Dense layer. The published Meso4 files list
#: no ``leaky_re_lu`` layer in their ``layer_names`` (MesoInception's do), so the model that saved
#: them may have differed here; the Keras reference outputs (``shared/weights/golden``) follow
#: ``classifiers.py``, and with it every value matches to 2e-7.
LEAKY_SLOPE = 0.1


def _same_conv(in_ch: int, out_ch: int, kernel: int, dilation: int = 1) -> nn.Conv2d:
    """A stride-1 convolution with Keras ``padding='same'`` (odd kernels: a symmetric pad)."""
    assert kernel % 2 == 1, "'same' is a symmetric pad only for odd kernels"
    return nn.Conv2d(in_ch, out_ch, kernel, padding=dilation * (kernel // 2), dilation=dilation)


def _keras_bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


def _same_pool(size: int) -> nn.MaxPool2d:
    """Keras ``MaxPooling2D(pool_size=size, padding='same')`` (stride = size)."""
    return nn.MaxPool2d(size, ceil_mode=True)


def _pooled_side(input_size: int) -> int:
    """Side of the last feature map: four 'same' poolings of 2, 2, 2 and 4 (256 -> 8)."""
    side = input_size
    for size in (2, 2, 2, 4):
        side = math.ceil(side / size)
    return side


class _MesoTail(nn.Module):
    """What Meso4 and MesoInception4 share from the third convolution on: two 5x5 16-channel
    conv-ReLU-BN-pool blocks, then Dropout, Dense 16, LeakyReLU 0.1, Dropout, Dense 1."""

    def _add_tail(self, in_ch: int, input_size: int) -> None:
        """Create the shared layers, after the subclass's own (so modules list in build order)."""
        self.conv3 = _same_conv(in_ch, 16, 5)
        self.bn3 = _keras_bn(16)
        self.pool3 = _same_pool(2)
        self.conv4 = _same_conv(16, 16, 5)
        self.bn4 = _keras_bn(16)
        self.pool4 = _same_pool(4)
        side = _pooled_side(input_size)
        self.dropout = nn.Dropout(0.5)
        self.fc1 = nn.Linear(16 * side * side, 16)
        self.fc2 = nn.Linear(16, 1)

    def classify(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` features after the second block -> ``(N, 1)`` logit of P(real)."""
        x = self.pool3(self.bn3(F.relu(self.conv3(x))))
        x = self.pool4(self.bn4(F.relu(self.conv4(x))))
        # Keras flattens channels-last (index h, w, c). Permuting here rather than permuting
        # fc1's columns in the importer keeps the checkpoint a plain transpose of the Keras file
        # (each weight traceable to its Keras layer), at the cost of one Transpose of a
        # (N, 16, 8, 8) tensor in the exported graph.
        x = x.permute(0, 2, 3, 1).flatten(1)
        x = F.leaky_relu(self.fc1(self.dropout(x)), LEAKY_SLOPE)
        return self.fc2(self.dropout(x))


class Meso4(_MesoTail):
    """Meso4: four conv blocks (3x3 8ch, 5x5 8ch, 5x5 16ch, 5x5 16ch), then the Dense head.

    ``(N, 3, S, S)`` float in ``[0, 1]`` -> ``(N, 1)`` logit of P(real).
    """

    def __init__(self, input_size: int = MESONET_INPUT_SIZE) -> None:
        super().__init__()
        self.conv1 = _same_conv(3, 8, 3)
        self.bn1 = _keras_bn(8)
        self.pool1 = _same_pool(2)
        self.conv2 = _same_conv(8, 8, 5)
        self.bn2 = _keras_bn(8)
        self.pool2 = _same_pool(2)
        self._add_tail(8, input_size)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.bn1(F.relu(self.conv1(x))))
        x = self.pool2(self.bn2(F.relu(self.conv2(x))))
        return self.classify(x)


class InceptionLayer(nn.Module):
    """Upstream ``InceptionLayer(a, b, c, d)``: four ReLU branches concatenated on channels.

    Branch 1 is a 1x1 conv (``a`` channels); branches 2-4 a 1x1 reduction then a 3x3 conv of
    dilation 1, 2 and 3 (``b``, ``c``, ``d`` channels). ``(N, in_ch, H, W)`` ->
    ``(N, a + b + c + d, H, W)``.
    """

    def __init__(self, in_ch: int, a: int, b: int, c: int, d: int) -> None:
        super().__init__()
        self.branch1 = _same_conv(in_ch, a, 1)
        self.branch2_reduce = _same_conv(in_ch, b, 1)
        self.branch2 = _same_conv(b, b, 3)
        self.branch3_reduce = _same_conv(in_ch, c, 1)
        self.branch3 = _same_conv(c, c, 3, dilation=2)
        self.branch4_reduce = _same_conv(in_ch, d, 1)
        self.branch4 = _same_conv(d, d, 3, dilation=3)
        self.out_channels = a + b + c + d

    def forward(self, x: Tensor) -> Tensor:
        y1 = F.relu(self.branch1(x))
        y2 = F.relu(self.branch2(F.relu(self.branch2_reduce(x))))
        y3 = F.relu(self.branch3(F.relu(self.branch3_reduce(x))))
        y4 = F.relu(self.branch4(F.relu(self.branch4_reduce(x))))
        return torch.cat([y1, y2, y3, y4], dim=1)


class MesoInception4(_MesoTail):
    """MesoInception4: Inception blocks (1, 4, 4, 2) and (2, 4, 4, 2), each followed by BN and
    a 2x2 pooling, then Meso4's layers from the third convolution on.

    ``(N, 3, S, S)`` float in ``[0, 1]`` -> ``(N, 1)`` logit of P(real).
    """

    def __init__(self, input_size: int = MESONET_INPUT_SIZE) -> None:
        super().__init__()
        self.inception1 = InceptionLayer(3, 1, 4, 4, 2)
        self.bn1 = _keras_bn(self.inception1.out_channels)
        self.pool1 = _same_pool(2)
        self.inception2 = InceptionLayer(self.inception1.out_channels, 2, 4, 4, 2)
        self.bn2 = _keras_bn(self.inception2.out_channels)
        self.pool2 = _same_pool(2)
        self._add_tail(self.inception2.out_channels, input_size)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.bn1(self.inception1(x)))
        x = self.pool2(self.bn2(self.inception2(x)))
        return self.classify(x)


def check_variant(variant: str) -> str:
    """``variant`` if it names a MesoNet architecture, else :class:`ConfigError`."""
    if variant not in VARIANTS:
        raise ConfigError(
            f"unknown MesoNet variant {variant!r}; known: {', '.join(VARIANTS)} "
            "(upstream Meso4 and MesoInception4)"
        )
    return variant


def mesonet_spec(name: str, variant: str) -> MemberSpec:
    """The spec of a MesoNet member named ``name`` (no weights, provenance or training set yet).

    Preprocessing is upstream's: the face crop stretched to 256x256, pixel / 255 with no mean or
    std; the network's logit is that of P(real).
    """
    from pipeline.models.catalog import MESONET_CAVEAT, MESONET_NOTE

    check_variant(variant)
    return MemberSpec(
        name=name,
        architecture=variant,
        backbone="",
        input_size=MESONET_INPUT_SIZE,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        resize="stretch",
        # Upstream crops with its own face_recognition margin; at 256 pixels the exact rule
        # matters little, so MesoNet shares the paper's 1.3 crop and the pipeline's one cut.
        crop_margin=1.3,
        output="real-logit",
        num_classes=1,
        licence="Apache-2.0",
        description=f"{MESONET_NOTE}. This member is the {VARIANTS[variant]} architecture.",
        caveat=MESONET_CAVEAT,
    )


def build_meso4(spec: MemberSpec) -> nn.Module:
    """Raw Meso4 for ``spec``: ``(N, 3, S, S)`` in ``[0, 1]`` -> ``(N, 1)`` logit of P(real)."""
    return Meso4(spec.input_size)


def build_mesoinception4(spec: MemberSpec) -> nn.Module:
    """Raw MesoInception4 for ``spec``: ``(N, 3, S, S)`` in ``[0, 1]`` -> ``(N, 1)`` logit of
    P(real)."""
    return MesoInception4(spec.input_size)
