"""Self-Blended Images (Shiohara & Yamasaki, CVPR 2022, mapooon/SelfBlendedImages) -> a member.

SBI's detector is ``EfficientNet.from_pretrained("efficientnet-b4", advprop=True,
num_classes=2)`` of efficientnet_pytorch as ``self.net`` (src/inference/model.py; advprop only
picks the ImageNet initialisation), so its keys are ``net._conv_stem.weight`` ... ``net._fc.bias``
(706 entries). Training saves ``{"model": state_dict, "optimizer": ..., "epoch": ...}`` as
``*.tar`` (src/train_sbi.py), published as ``FFraw.tar`` and ``FFc23.tar``; a bare state dict is
accepted too. The member is :mod:`pipeline.models.effnet_compat`'s network with the pads for
380, SBI's input size, where they equal timm's.

Preprocessing as upstream's inference (src/inference/preprocess.py, inference_video.py):
RetinaFace box grown by a quarter of its width and height (w/8 on each side, ``crop_face(...,
margin=False, phase='test')``), resized to 380x380, RGB / 255 with no mean/std; score
``softmax(logits)[:, 1]`` (label 1 = fake).
"""

from __future__ import annotations

from pathlib import Path

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
from pipeline.models.spec import MemberSpec

FAMILY = "SelfBlendedImages"
#: SBI publishes one architecture.
VARIANTS = ("efficientnet-b4",)
SBI_INPUT_SIZE = 380
# The box grows by w/8 left and right and h/8 above and below: 1.25 times each side. Upstream
# stretches that (box-shaped) crop to 380x380; a square crop of 1.25 times the longer side is the
# same wherever the RetinaFace box is square, and keeps the face's aspect ratio where it is not.
SBI_CROP_MARGIN = 1.25
SBI_LICENCE = "SBI academic/non-profit non-commercial research licence (see upstream LICENSE)"
#: Upstream's weight file names (README) -> the training data they name.
_WEIGHTS = {"ffraw": "FF-raw", "ffc23": "FF-c23"}
_MARKER = "net._conv_stem.weight"


def import_sbi(path: Path, name: str, variant: str | None) -> ImportedMember:
    """The member for the SBI checkpoint at ``path``.

    The member takes ``(N, 3, 380, 380)`` RGB crops in [0, 1] (mean 0, std 1) and gives the
    two-class softmax with "fake" at index 1. Raises :class:`CheckpointError` naming the file and
    keys for a file that is not SBI's EfficientNet-B4.
    """
    if variant is not None and variant not in VARIANTS:
        raise CheckpointError(
            f"checkpoint {path}: SBI publishes only {', '.join(VARIANTS)} detectors, "
            f"not {variant!r}"
        )
    state = state_dict_of(read_torch_file(path, FAMILY), path, FAMILY, entry="model")
    if _MARKER not in state:
        raise CheckpointError(
            f"checkpoint {path} is not an SBI detector: no key {_MARKER!r} (SBI's "
            f"efficientnet_pytorch net); its keys begin {', '.join(list(state)[:3])}"
        )
    weights = _WEIGHTS.get(path.stem.lower())
    trained_on = (
        f"FaceForensics++ ({weights}) real videos + self-blended images"
        if weights
        else "FaceForensics++ real videos + self-blended images (raw or c23: the file name "
        "does not say)"
    )
    spec = MemberSpec(
        name=name,
        architecture="effnet_pt",
        backbone=B4_BACKBONE,
        options={"static_pad_size": B4_PAD_SIZE},
        input_size=SBI_INPUT_SIZE,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        resize="stretch",
        crop_margin=SBI_CROP_MARGIN,
        output="softmax",
        num_classes=2,
        fake_index=1,
        licence=SBI_LICENCE,
        trained_on=trained_on,
        source=upstream_source(f"mapooon/SelfBlendedImages ({weights or 'unnamed'} weights)", path),
        description=(
            "Self-Blended Images (Shiohara & Yamasaki, CVPR 2022): EfficientNet-B4 "
            "(efficientnet_pytorch), 380x380 crops of the face box grown by 1/8 per side, "
            "RGB / 255 with no mean/std; softmax index 1 = fake."
        ),
    )
    net = build_network(spec)
    names = efficientnet_pytorch_names(net.body, prefix="net.")
    names |= {"classifier.weight": "net._fc.weight", "classifier.bias": "net._fc.bias"}
    state = rename_upstream_state(state, names, net.state_dict(), f"SBI checkpoint {path}")
    return ImportedMember(spec=spec, state=state)
