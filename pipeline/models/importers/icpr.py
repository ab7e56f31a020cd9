"""icpr2020dfdc (Bonettini et al., ICPR 2020, polimi-ispl/icpr2020dfdc) -> a member.

``architectures/fornet.py`` builds five networks, all with one output logit (label 1 = fake):

* ``EfficientNetB4``: efficientnet_pytorch ``efficientnet-b4`` as ``self.efficientnet`` (its
  ``_fc`` deleted) and ``classifier = Linear(1792, 1)``; keys ``efficientnet.*``,
  ``classifier.*`` (706);
* ``EfficientNetAutoAttB4``: the same plus ``efficientnet.attconv = Conv2d(56, 1, 1)``, whose
  sigmoid multiplies the features after block 9 (708 keys);
* ``EfficientNetB4ST`` / ``EfficientNetAutoAttB4ST`` (``SiameseTuning``): the network above as
  ``feat_ext`` and a head ``classifier = Sequential(BatchNorm1d(1792), Linear(1792, 1))`` on its
  pooled features (713 / 715 keys). ``feat_ext.classifier`` is saved but never called by
  ``SiameseTuning.forward``: it is dropped;
* ``Xception``: converted by :mod:`pipeline.models.importers.xception_family`.

Files: the Backblaze weights the notebooks load (``architectures/weights.py``,
``{Net}_{DFDC,FFPP}_bestval-<sha256>.pth``) are plain state dicts; training writes ``{'net',
'opt', 'train_loss', 'val_loss', 'iteration', 'batch_size', 'epoch'}`` (train_binclass.py
``save_model``, the Dropbox ``bestval.pth`` files). Both are read; the variant follows from the
keys. The efficientnet_pytorch networks were built for 380 and run at 224, so the member keeps
the pads for 380 (CHECKPOINTS.md section 0, "Padding trap").

Preprocessing: BlazeFace box with a margin (see ``ICPR_CROP_MARGIN``), ``scale`` policy (square
crop resized to 224x224), ImageNet mean/std; per frame ``expit(logit)``.
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
from pipeline.models.spec import IMAGENET_MEAN, IMAGENET_STD, MemberSpec, OptionValue

FAMILY = "icpr2020dfdc"
#: fornet.py class names of the published weights.
VARIANTS = (
    "EfficientNetB4",
    "EfficientNetB4ST",
    "EfficientNetAutoAttB4",
    "EfficientNetAutoAttB4ST",
    "Xception",
)
# icpr2020dfdc trains and tests every network at 224 (``get_transformer('scale', 224, ...)``,
# PadIfNeeded + Resize to 224x224) with ``FeatureExtractor.get_normalizer()``, i.e. ImageNet
# mean/std for Xception too, although Cadene's ImageNet Xception was trained with 0.5/0.5.
ICPR_INPUT_SIZE = 224
ICPR_MEAN = IMAGENET_MEAN
ICPR_STD = IMAGENET_STD
#: ``EfficientNetAutoAtt.init_att('efficientnet-b4', 0)``: ``att_block_idx = 9``.
B4_ATTENTION_BLOCK = 9
# blazeface/face_extract.py ``_add_margin_to_detections`` grows the BlazeFace box (h x w) by
# 0.2 h on each side and by 0.2 h more on top (BlazeFace boxes leave out the forehead): 1.6 h
# tall and (w + 0.4 h) wide. ``extract_bb(scale='scale')`` then cuts the square of its longer
# side, so the crop is 1.6 times the side of a square face box. The pipeline's crops are square
# and centred on the face box, so the extra 0.2 h on top (which moves upstream's crop 0.1 h up)
# is not reproduced.
ICPR_CROP_MARGIN = 1.6
ICPR_LICENCE = "GPL-3.0 (code; no separate weights licence)"
#: ``SiameseTuning`` saves its ``feat_ext``'s own head, which its forward bypasses.
ST_UNUSED_KEYS = ("feat_ext.classifier.weight", "feat_ext.classifier.bias")
_TRAINED_ON = {"DFDC": "DFDC (icpr2020dfdc split)", "FFPP": "FaceForensics++ (icpr2020dfdc split)"}


def import_icpr(path: Path, name: str, variant: str | None) -> ImportedMember:
    """The member for the icpr2020dfdc checkpoint at ``path`` (plain or training file).

    ``variant``: a fornet.py class name (:data:`VARIANTS`), or None to read it from the keys; a
    variant the keys contradict is refused. The member takes ``(N, 3, 224, 224)`` ImageNet-
    normalised crops and gives one logit whose sigmoid is P(fake). Raises
    :class:`CheckpointError` naming the file and keys for anything else.
    """
    if variant is not None and variant not in VARIANTS:
        raise CheckpointError(
            f"checkpoint {path}: unknown icpr2020dfdc variant {variant!r}; known: "
            f"{', '.join(VARIANTS)}"
        )
    state = state_dict_of(read_torch_file(path, FAMILY), path, FAMILY, entry="net")
    found, evidence = _variant_of(path, state)
    if variant is not None and variant != found:
        raise CheckpointError(
            f"checkpoint {path} holds an icpr2020dfdc {found} (key {evidence}), not the "
            f"{variant} asked for"
        )
    if found == "Xception":
        # The Xception conversion is the xception family's (shared with DeepfakeBench).
        from pipeline.models.importers.xception_family import icpr_xception_member

        return icpr_xception_member(path, name, state)
    return _efficientnet_member(path, name, state, found)


def icpr_spec(
    path: Path,
    name: str,
    variant: str,
    *,
    architecture: str,
    backbone: str,
    description: str,
    options: dict[str, OptionValue] | None = None,
) -> MemberSpec:
    """The spec of member ``name`` for fornet.py's ``variant`` read from ``path``: icpr2020dfdc's
    preprocessing (see the module docstring) and output, one logit whose sigmoid is P(fake)."""
    trained_on = next(
        (v for k, v in _TRAINED_ON.items() if k in path.name.upper()),
        "DFDC or FaceForensics++ (the file name does not say)",
    )
    return MemberSpec(
        name=name,
        architecture=architecture,
        backbone=backbone,
        options=options or {},
        input_size=ICPR_INPUT_SIZE,
        mean=ICPR_MEAN,
        std=ICPR_STD,
        resize="stretch",
        crop_margin=ICPR_CROP_MARGIN,
        output="fake-logit",
        num_classes=1,
        licence=ICPR_LICENCE,
        trained_on=trained_on,
        source=upstream_source(f"polimi-ispl/icpr2020dfdc fornet.{variant}", path),
        description=description,
    )


def _variant_of(path: Path, state: dict[str, Tensor]) -> tuple[str, str]:
    """The fornet.py class whose ``state_dict()`` ``state`` is, and the key that says so."""
    if "xception.conv1.weight" in state:
        return "Xception", "xception.conv1.weight"
    if "feat_ext.xception.conv1.weight" in state:
        raise CheckpointError(
            f"checkpoint {path} is an icpr2020dfdc XceptionST (key feat_ext.xception.conv1.weight),"
            " which has no published weights and is not supported"
        )
    for siamese, prefix in ((False, "efficientnet."), (True, "feat_ext.efficientnet.")):
        if prefix + "_conv_stem.weight" in state:
            attention = prefix + "attconv.weight" in state
            found = f"EfficientNet{'AutoAtt' if attention else ''}B4{'ST' if siamese else ''}"
            return found, prefix + ("attconv.weight" if attention else "_conv_stem.weight")
    raise CheckpointError(
        f"checkpoint {path} is not an icpr2020dfdc network: none of the keys "
        "efficientnet._conv_stem.weight, feat_ext.efficientnet._conv_stem.weight, "
        f"xception.conv1.weight; its keys begin {', '.join(list(state)[:3])}"
    )


def _efficientnet_member(
    path: Path, name: str, state: dict[str, Tensor], variant: str
) -> ImportedMember:
    siamese = variant.endswith("ST")
    attention = "AutoAtt" in variant
    options: dict[str, OptionValue] = {"static_pad_size": B4_PAD_SIZE}
    if attention:
        options["attention_after_block"] = B4_ATTENTION_BLOCK
    if siamese:
        options["siamese_head"] = True
    spec = icpr_spec(
        path,
        name,
        variant,
        architecture="effnet_pt",
        backbone=B4_BACKBONE,
        options=options,
        description=(
            f"icpr2020dfdc {variant} (Bonettini et al., ICPR 2020): EfficientNet-B4 "
            "(efficientnet_pytorch, pads for 380)"
            + (" with attention after block 9" if attention else "")
            + (", siamese-tuned head" if siamese else "")
            + ", 224x224 crops, ImageNet mean/std; sigmoid = P(fake)."
        ),
    )
    net = build_network(spec)
    expected = net.state_dict()
    body = "feat_ext.efficientnet." if siamese else "efficientnet."
    names = efficientnet_pytorch_names(net.body, prefix=body)
    for key in expected:
        if key not in names:
            # attconv sits inside upstream's EfficientNet; the head keeps its own name.
            names[key] = body + key if key.startswith("attconv.") else key
    state = rename_upstream_state(
        state,
        names,
        expected,
        f"icpr2020dfdc {variant} checkpoint {path}",
        dropped=ST_UNUSED_KEYS if siamese else (),
    )
    return ImportedMember(spec=spec, state=state)
