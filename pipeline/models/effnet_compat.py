"""EfficientNets exactly as ``efficientnet_pytorch`` 0.7.1 builds them, on timm's modules.

SelfBlendedImages, icpr2020dfdc and DeepfakeBench all build their EfficientNet-B4 with lukemelas'
``efficientnet_pytorch`` (``EfficientNet.from_pretrained('efficientnet-b4')``). Its layers are
timm's ``tf_efficientnet_b4`` layers (same shapes, BN eps 1e-3, swish = SiLU), but its "same"
padding is not: ``Conv2dStaticSamePadding`` fixes each strided convolution's zero pad once, for
the model's nominal ``image_size`` (380 for B4), while timm's ``tf_*`` models pad each input
dynamically. The two agree at 380 only; at icpr2020dfdc's 224 and DeepfakeBench's 256 they
differ from stage 2 on (CHECKPOINTS.md section 0, "Padding trap"). :class:`EfficientNetPt` is
timm's network with efficientnet_pytorch's static pads, which also makes every pad a constant
for ONNX export.

``spec.options`` (all optional):

* ``static_pad_size`` (int, default ``spec.input_size``): the ``image_size`` the fixed pads are
  computed for. efficientnet_pytorch uses the model's own resolution (380 for B4) whatever the
  input, so icpr2020dfdc and DeepfakeBench need 380 here, not their input size.
* ``stem`` (``"same"`` | ``"unpadded"``, default ``"same"``): DeepfakeBench replaces the stem by
  ``nn.Conv2d(3, 48, 3, stride=2, bias=False)`` without padding (networks/efficientnetb4.py),
  after the blocks' pads were computed for the padded stem, so the pads do not change with it.
* ``attention_after_block`` (int): icpr2020dfdc's ``EfficientNetAutoAtt``: after the block of
  this flat index (9 for B4, the last of stage 2, 56 channels), the features are multiplied by
  ``sigmoid(attconv(features))``, ``attconv = Conv2d(C, 1, 1)`` (architectures/fornet.py
  ``extract_features``).
* ``siamese_head`` (bool, default false): icpr2020dfdc's ``SiameseTuning`` head,
  ``Sequential(BatchNorm1d(F), Linear(F, num_classes))`` on the pooled features, no dropout.

State-dict keys are timm's ``EfficientNet`` keys (``conv_stem``, ``bn1``, ``blocks.s.j.*``,
``conv_head``, ``bn2``, ``classifier``) plus ``attconv.*`` with attention, and ``classifier.0.*``
(batch norm) / ``classifier.1.*`` (linear) with the siamese head.
:func:`efficientnet_pytorch_names` maps them to efficientnet_pytorch's names:

====================  ==============================================================
timm (this module)    efficientnet_pytorch
====================  ==============================================================
``conv_stem``         ``_conv_stem``
``bn1``               ``_bn0``
``blocks.s.j``        ``_blocks.i``, ``i`` the flat index over the stage depths
``conv_head``         ``_conv_head``
``bn2``               ``_bn1``
====================  ==============================================================

Inside a block without expansion (timm ``DepthwiseSeparableConv``, stage 0): ``conv_dw ->
_depthwise_conv``, ``bn1 -> _bn1``, ``se.conv_reduce -> _se_reduce``, ``se.conv_expand ->
_se_expand``, ``conv_pw -> _project_conv``, ``bn2 -> _bn2``. Inside an inverted residual:
``conv_pw -> _expand_conv``, ``bn1 -> _bn0``, ``conv_dw -> _depthwise_conv``, ``bn2 -> _bn1``,
``se.* -> _se_*``, ``conv_pwl -> _project_conv``, ``bn3 -> _bn2``. Heads differ by project and
are named by the importers.

Dropout and drop-connect are left out: upstream applies them only in training, and members run
in eval mode.

The importers of these families (:mod:`pipeline.models.importers`) rename upstream's keys with
:func:`efficientnet_pytorch_names`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, cast

import timm
import torch
from timm.layers import Conv2dSame
from torch import Tensor, nn
from torch.nn import functional as F

from pipeline.errors import ConfigError
from pipeline.models.spec import MemberSpec

StemKind = Literal["same", "unpadded"]
_OPTIONS = ("static_pad_size", "stem", "attention_after_block", "siamese_head")
#: The timm backbone whose layers are efficientnet_pytorch's ``efficientnet-b4``.
B4_BACKBONE = "tf_efficientnet_b4"
#: efficientnet_pytorch's ``image_size`` for ``efficientnet-b4``, which fixes its pads whatever
#: the input size (``static_pad_size`` of every B4 member).
B4_PAD_SIZE = 380

#: timm block submodule -> efficientnet_pytorch name, for blocks without / with expansion.
_DS_NAMES = {
    "conv_dw": "_depthwise_conv",
    "bn1": "_bn1",
    "se.conv_reduce": "_se_reduce",
    "se.conv_expand": "_se_expand",
    "conv_pw": "_project_conv",
    "bn2": "_bn2",
}
_IR_NAMES = {
    "conv_pw": "_expand_conv",
    "bn1": "_bn0",
    "conv_dw": "_depthwise_conv",
    "bn2": "_bn1",
    "se.conv_reduce": "_se_reduce",
    "se.conv_expand": "_se_expand",
    "conv_pwl": "_project_conv",
    "bn3": "_bn2",
}
_TOP_NAMES = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1"}


@dataclass(frozen=True)
class EffNetPtOptions:
    """The validated ``spec.options`` of an ``effnet_pt`` member (see the module docstring)."""

    static_pad_size: int
    stem: StemKind = "same"
    attention_after_block: int | None = None
    siamese_head: bool = False

    @classmethod
    def from_spec(cls, spec: MemberSpec) -> EffNetPtOptions:
        opts = spec.options
        unknown = sorted(set(opts) - set(_OPTIONS))
        if unknown:
            raise ConfigError(
                f"member {spec.name}: unknown effnet_pt options {unknown}; known: {list(_OPTIONS)}"
            )
        pad_size = opts.get("static_pad_size", spec.input_size)
        stem = opts.get("stem", "same")
        attention = opts.get("attention_after_block")
        siamese = opts.get("siamese_head", False)
        # bool is an int subclass: check exact types so that `True` is not a pad size.
        if type(pad_size) is not int or pad_size < 16:
            raise ConfigError(
                f"member {spec.name}: static_pad_size must be an int >= 16, got {pad_size!r}"
            )
        if stem not in ("same", "unpadded"):
            raise ConfigError(
                f"member {spec.name}: stem must be 'same' or 'unpadded', got {stem!r}"
            )
        if attention is not None and (type(attention) is not int or attention < 0):
            raise ConfigError(
                f"member {spec.name}: attention_after_block must be an int >= 0, got {attention!r}"
            )
        if type(siamese) is not bool:
            raise ConfigError(f"member {spec.name}: siamese_head must be a bool, got {siamese!r}")
        return cls(
            static_pad_size=pad_size,
            stem=cast(StemKind, stem),
            attention_after_block=attention,
            siamese_head=siamese,
        )


class StaticPadConv2d(nn.Conv2d):
    """A convolution behind a fixed zero pad ``(left, right, top, bottom)``, as
    efficientnet_pytorch's ``Conv2dStaticSamePadding``; its keys are ``nn.Conv2d``'s."""

    def __init__(self, conv: nn.Conv2d, pad: tuple[int, int, int, int]) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            cast(tuple[int, int], conv.kernel_size),
            stride=cast(tuple[int, int], conv.stride),
            padding=0,
            dilation=cast(tuple[int, int], conv.dilation),
            groups=conv.groups,
            bias=conv.bias is not None,
        )
        # Keep the replaced convolution's parameters (timm's initialisation of untrained nets).
        self.weight = conv.weight
        self.bias = conv.bias
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad)
        return super().forward(x)


def same_pad(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF "same" pad (before, after) of one axis of ``size`` pixels: the output has
    ``ceil(size / stride)`` pixels; an odd total pad puts the extra pixel after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class EfficientNetPt(nn.Module):
    """An efficientnet_pytorch EfficientNet (see the module docstring) on timm's layers.

    Input ``(N, 3, S, S)`` float, normalised as the importing project does; output ``(N, C)``
    raw logits, ``C = num_classes``. Any ``S`` runs (the pads stay those of
    ``static_pad_size``, as upstream's do).
    """

    def __init__(self, backbone: str, num_classes: int, options: EffNetPtOptions) -> None:
        super().__init__()
        net = timm.create_model(backbone, pretrained=False, num_classes=num_classes)
        if not isinstance(net, timm.models.efficientnet.EfficientNet):
            raise ConfigError(
                f"effnet_pt needs a timm EfficientNet backbone (e.g. tf_efficientnet_b4), "
                f"not {backbone!r} ({type(net).__name__})"
            )
        _static_pads(net, options.static_pad_size, options.stem)
        self.conv_stem = net.conv_stem
        self.bn1 = net.bn1  # batch norm + SiLU
        self.blocks = net.blocks
        self.conv_head = net.conv_head
        self.bn2 = net.bn2  # batch norm + SiLU
        self.attention_after_block = options.attention_after_block
        self.attconv: nn.Conv2d | None = None
        if options.attention_after_block is not None:
            blocks = _flat_blocks(net)
            if options.attention_after_block >= len(blocks):
                raise ConfigError(
                    f"attention_after_block {options.attention_after_block} is past the last "
                    f"block of {backbone} ({len(blocks)} blocks)"
                )
            channels = _out_channels(blocks[options.attention_after_block])
            self.attconv = nn.Conv2d(channels, 1, kernel_size=1)
        features: int = net.num_features
        self.classifier: nn.Module
        if options.siamese_head:
            self.classifier = nn.Sequential(
                nn.BatchNorm1d(features), nn.Linear(features, num_classes)
            )
        else:
            self.classifier = nn.Linear(features, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """``(N, 3, S, S)`` -> ``(N, F, s, s)`` activations after the head convolution."""
        x = self.bn1(self.conv_stem(x))
        index = 0
        for stage in self.blocks:
            for block in cast(nn.Sequential, stage):
                x = block(x)
                if self.attconv is not None and index == self.attention_after_block:
                    x = x * torch.sigmoid(self.attconv(x))
                index += 1
        return cast(Tensor, self.bn2(self.conv_head(x)))

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 3, S, S)`` normalised -> ``(N, num_classes)`` raw logits."""
        pooled = F.adaptive_avg_pool2d(self.forward_features(x), 1).flatten(1)
        return cast(Tensor, self.classifier(pooled))


def _flat_blocks(net: nn.Module) -> list[nn.Module]:
    return [block for stage in cast(nn.Sequential, net.blocks) for block in stage.children()]


def _out_channels(block: nn.Module) -> int:
    # An inverted residual projects with `conv_pwl`; a block without expansion with `conv_pw`.
    last = block.conv_pwl if hasattr(block, "conv_pwl") else block.conv_pw
    return int(cast(nn.Conv2d, last).out_channels)


def _static_pads(net: nn.Module, pad_size: int, stem: StemKind) -> None:
    """Replace every strided convolution of ``net`` (timm's dynamic-pad ``Conv2dSame``) by a
    :class:`StaticPadConv2d` with the pad efficientnet_pytorch computes for ``pad_size``.

    efficientnet_pytorch follows the nominal size through the network: the stem and each block's
    depthwise convolution get the pad for the size at their input, then the size becomes
    ``ceil(size / stride)``. Stride-1 convolutions have odd kernels, where "same" is a symmetric
    pad independent of the size, which timm already uses.
    """
    size = pad_size
    strided = [
        (name, m)
        for name, m in net.named_modules()  # registration order = forward order here
        if isinstance(m, nn.Conv2d) and max(m.stride) > 1
    ]
    for name, conv in strided:
        kernel, stride, dilation = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
        before, after = same_pad(size, kernel, stride, dilation)
        if name == "conv_stem" and stem == "unpadded":
            replacement: nn.Conv2d = StaticPadConv2d(conv, (0, 0, 0, 0))
        else:
            replacement = StaticPadConv2d(conv, (before, after, before, after))
        parent, _, attr = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, attr, replacement)
        # The blocks' pads were computed before DeepfakeBench swapped the stem, i.e. for the
        # padded stem's output size: advance as if padded either way.
        size = math.ceil(size / stride)
    dynamic = [n for n, m in net.named_modules() if isinstance(m, Conv2dSame)]
    assert not dynamic, f"convolutions left with dynamic padding: {dynamic}"


def efficientnet_pytorch_names(net: nn.Module, prefix: str = "") -> dict[str, str]:
    """This network's backbone keys -> efficientnet_pytorch's keys, each after ``prefix``.

    ``net``: an :class:`EfficientNetPt` (or timm ``EfficientNet``). Covers the stem, the blocks
    and the head convolution (see the module docstring); the keys of ``attconv`` and
    ``classifier`` are left to the importer, whose projects name them differently.
    """
    names: dict[str, str] = {}
    flat = 0
    for s, stage in enumerate(cast(nn.Sequential, net.blocks)):
        for j, block in enumerate(stage.children()):
            table = _IR_NAMES if hasattr(block, "conv_pwl") else _DS_NAMES
            for key in block.state_dict():
                module, _, param = key.rpartition(".")
                names[f"blocks.{s}.{j}.{key}"] = f"{prefix}_blocks.{flat}.{table[module]}.{param}"
            flat += 1
    for top, upstream in _TOP_NAMES.items():
        for key in getattr(net, top).state_dict():
            names[f"{top}.{key}"] = f"{prefix}{upstream}.{key}"
    return names


def build_effnet_pt(spec: MemberSpec) -> nn.Module:
    """The raw ``effnet_pt`` network of ``spec``: ``(N, 3, S, S)`` -> ``(N, num_classes)``."""
    return EfficientNetPt(spec.backbone, spec.num_classes, EffNetPtOptions.from_spec(spec))
