"""DeepfakeBench (Yan et al., NeurIPS 2023 D&B, SCLBD/DeepfakeBench) detector weights -> a member.

DeepfakeBench saves a detector's plain ``model.state_dict()`` (trainer.py; ``module.`` where
trained with DDP) and loads it strictly into the unwrapped detector (test.py), so every key
starts with ``backbone.`` (or ``head.`` etc. for detectors with more parts). Two of its
published detectors (release v1.0.1) are supported:

* ``efficientnetb4`` (``effnb4_best.pth``): networks/efficientnetb4.py, efficientnet_pytorch
  ``efficientnet-b4`` as ``backbone.efficientnet`` with its stem replaced by an unpadded
  ``Conv2d(3, 48, 3, stride=2, bias=False)`` and ``_fc`` by ``Identity``, and ``backbone.
  last_layer = Linear(1792, 2)`` on the pooled features (config ``mode: Original``, no dropout).
  The blocks keep the pads efficientnet_pytorch computed for 380 while running at 256
  (CHECKPOINTS.md section 0);
* ``xception`` (``xception_best.pth``): converted by
  :mod:`pipeline.models.importers.xception_family`.

Preprocessing (config/detector/efficientnetb4.yaml, preprocessing/preprocess.py): faces aligned
on dlib landmarks at scale 1.3, resized to 256x256, mean = std = 0.5; score ``softmax[:, 1]``.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from pipeline.errors import CheckpointError
from pipeline.models.effnet_compat import B4_BACKBONE, B4_PAD_SIZE, efficientnet_pytorch_names
from pipeline.models.importers.base import (
    ImportedMember,
    read_torch_file,
    rename_upstream_state,
    state_dict_of,
    upstream_source,
)
from pipeline.models.registry import build_network
from pipeline.models.spec import MemberSpec, OptionValue

FAMILY = "DeepfakeBench"
#: DeepfakeBench detector names (``model_name`` in its configs).
VARIANTS = ("efficientnetb4", "xception")
# config/detector/{efficientnetb4,xception}.yaml: ``resolution: 256``, mean = std = 0.5; the
# faces are aligned crops at dlib scale 1.3 (preprocessing/preprocess.py), cv2-resized to 256.
DFB_INPUT_SIZE = 256
DFB_MEAN_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
DFB_CROP_MARGIN = 1.3
DFB_LICENCE = "CC BY-NC 4.0"
#: The data every published DeepfakeBench detector is trained on (its benchmark protocol).
DFB_TRAINED_ON = "FaceForensics++ c23 (DeepfakeBench protocol)"
_MARKERS = {
    "efficientnetb4": "backbone.efficientnet._conv_stem.weight",
    "xception": "backbone.conv1.weight",
}


def import_deepfakebench(path: Path, name: str, variant: str | None) -> ImportedMember:
    """The member for the DeepfakeBench detector checkpoint at ``path``.

    ``variant``: ``efficientnetb4`` or ``xception``, or None to read it from the keys; a variant
    the keys contradict is refused. The effnb4 member takes ``(N, 3, 256, 256)`` crops normalised
    by mean = std = 0.5 and gives the two-class softmax, "fake" at index 1. Raises
    :class:`CheckpointError` naming the file and keys for other detectors or broken files.
    """
    if variant is not None and variant not in VARIANTS:
        raise CheckpointError(
            f"checkpoint {path}: DeepfakeBench detector {variant!r} is not supported; "
            f"supported: {', '.join(VARIANTS)}"
        )
    state = state_dict_of(read_torch_file(path, FAMILY), path, FAMILY)
    found = [v for v, marker in _MARKERS.items() if marker in state]
    if len(found) != 1:
        raise CheckpointError(
            f"checkpoint {path} is not a supported DeepfakeBench detector: expected one of the "
            f"keys {', '.join(_MARKERS.values())}; its keys begin {', '.join(list(state)[:3])}"
        )
    if variant is not None and variant != found[0]:
        raise CheckpointError(
            f"checkpoint {path} holds a DeepfakeBench {found[0]} detector (key "
            f"{_MARKERS[found[0]]}), not the {variant} asked for"
        )
    if found[0] == "xception":
        # The Xception conversion is the xception family's (shared with icpr2020dfdc).
        from pipeline.models.importers.xception_family import dfb_xception_member

        return dfb_xception_member(path, name, state)
    return _effnb4_member(path, name, state)


def dfb_spec(
    path: Path,
    name: str,
    variant: str,
    *,
    architecture: str,
    backbone: str,
    description: str,
    options: dict[str, OptionValue] | None = None,
) -> MemberSpec:
    """The spec of member ``name`` for DeepfakeBench's ``variant`` detector read from ``path``:
    DeepfakeBench's preprocessing (see the module docstring) and output, the two-class softmax
    with "fake" at index 1 (``prob = softmax(pred)[:, 1]``)."""
    return MemberSpec(
        name=name,
        architecture=architecture,
        backbone=backbone,
        options=options or {},
        input_size=DFB_INPUT_SIZE,
        mean=DFB_MEAN_STD,
        std=DFB_MEAN_STD,
        resize="stretch",
        crop_margin=DFB_CROP_MARGIN,
        output="softmax",
        num_classes=2,
        fake_index=1,
        licence=DFB_LICENCE,
        trained_on=DFB_TRAINED_ON,
        source=upstream_source(f"SCLBD/DeepfakeBench {variant} detector", path),
        description=description,
    )


def _effnb4_member(path: Path, name: str, state: dict[str, Tensor]) -> ImportedMember:
    spec = dfb_spec(
        path,
        name,
        "efficientnetb4",
        architecture="effnet_pt",
        backbone=B4_BACKBONE,
        options={"static_pad_size": B4_PAD_SIZE, "stem": "unpadded"},
        description=(
            "DeepfakeBench EfficientNet-B4 (Yan et al., NeurIPS 2023 D&B): efficientnet_pytorch "
            "B4 with an unpadded stem and a two-class head, 256x256 aligned face crops, "
            "mean = std = 0.5; softmax index 1 = fake."
        ),
    )
    net = build_network(spec)
    expected = net.state_dict()
    names = efficientnet_pytorch_names(net.body, prefix="backbone.efficientnet.")
    names |= {
        "classifier.weight": "backbone.last_layer.weight",
        "classifier.bias": "backbone.last_layer.bias",
    }
    state = rename_upstream_state(
        state, names, expected, f"DeepfakeBench efficientnetb4 checkpoint {path}"
    )
    return ImportedMember(spec=spec, state=state)
