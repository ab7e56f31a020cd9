"""FSFM (Wang et al., CVPR 2025, wolo-wolo/FSFM-CVPR25) fine-tuned deepfake detectors -> members.

FSFM's ``models_vit.VisionTransformer`` subclasses timm 0.4.5's ViT (patch 16, LayerNorm eps 1e-6,
qkv bias) and, with its DfD default ``global_pool=True``, pools the mean of the patch tokens
(cls excluded) through ``fc_norm`` into ``head``: that is timm's current
``vit_base_patch16_224(global_pool="avg")``, the same 152 state-dict keys and the same logits
(``cls_token`` pooling, ``--cls_token``, is ``global_pool="token"``: ``norm``, no ``fc_norm``).
FSFM's own forward no longer runs on timm 1.x, which is why the member is the timm model.

The file is what ``util/misc.py save_model`` writes: ``{'model': state_dict, 'optimizer', 'epoch',
'scaler', 'args'}``, ``args`` being the run's ``argparse.Namespace``; a bare state dict is
accepted too. Preprocessing follows FSFM's evaluation (``util/datasets.py build_transform``):

* mean/std from ``pretrain_ds_mean_std.txt`` beside the checkpoint (the JSON object
  ``{"mean": [...], "std": [...]}`` on its first line), else the VGGFace2 statistics FSFM falls
  back to; ImageNet's where the run's ``args.normalize_from_IMN`` says so;
* without ``--apply_simple_augment``: ``Resize((224, 224), bicubic)`` of the face crop (dlib box x
  1.3, ``face_scale=1.3``), i.e. crop margin 1.3 stretched to 224. With it (the README's
  fine-tuning and test commands use it, and ``args`` records it): ``Resize(256)`` then
  ``CenterCrop(224)``, the centred 224/256 of that crop, i.e. crop margin 1.3 * 224 / 256;
* class order from ImageFolder over ``fake``/``real``: **fake = 0**. Upstream's own test code
  reports ``softmax[:, 1]``, which is P(real).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path, PosixPath
from typing import Any

from torch import Tensor

from pipeline.errors import CheckpointError
from pipeline.models.importers.base import (
    ImportedMember,
    check_member_state,
    read_torch_file,
    state_dict_of,
    upstream_source,
)
from pipeline.models.spec import IMAGENET_MEAN, IMAGENET_STD, PAPER_CROP_MARGIN, MemberSpec

#: The companion file FSFM writes beside its checkpoints and reads at evaluation.
MEAN_STD_FILE = "pretrain_ds_mean_std.txt"
#: FSFM's fallback when the companion file is absent: the VGGFace2 pre-training statistics
#: (util/datasets.py ``build_transform``).
VGGFACE2_MEAN: tuple[float, float, float] = (
    0.5482207536697388,
    0.42340534925460815,
    0.3654651641845703,
)
VGGFACE2_STD: tuple[float, float, float] = (
    0.2789176106452942,
    0.2438540756702423,
    0.23493893444538116,
)
FSFM_INPUT_SIZE = 224
#: ``--apply_simple_augment`` evaluation: ``Resize(int(224 / (224 / 256)))`` then
#: ``CenterCrop(224)`` keeps this fraction of the crop's side.
SIMPLE_AUGMENT_FRACTION = 224 / 256
#: FSFM's ``vit_base_patch16``; the only size with published fine-tuned DfD weights.
VIT_BASE = ("vit_base_patch16_224", 768, 12)
#: ImageFolder sorts ``fake`` before ``real`` (FSFM datasets/finetune/dataset_preprocess.py).
FSFM_FAKE_INDEX = 0
FSFM_LICENCE = "CC BY-NC 4.0"
#: What the ``source`` of every FSFM member starts with: the MeVer route's
#: ``faceswap_fsfm_report`` is computed from the members that carry it.
FSFM_SOURCE = "wolo-wolo/FSFM-CVPR25"
FAMILY = "FSFM"

# Globals the training file's pickled ``args`` needs besides tensors and builtins. torch's
# ``weights_only=True`` refuses them by default; loading with ``weights_only=False`` instead
# would run any code a downloaded pickle names. Rebuilding a Namespace only sets attributes, and
# a PosixPath only stores its parts. The path class is named as pickled by the Python FSFM ran
# on: ``output_dir`` is a ``pathlib.PosixPath`` when the run got no ``--output_dir``
# (main_finetune_DfD.py ``get_shared_folder() / str(os.getpgrp())``).
_SAFE_GLOBALS: list[Any] = [
    (argparse.Namespace, "argparse.Namespace"),
    (PosixPath, "pathlib.PosixPath"),
]


def import_fsfm(path: Path, name: str, variant: str | None) -> ImportedMember:
    """The member for the FSFM fine-tuned checkpoint at ``path``.

    The member takes ``(N, 3, 224, 224)`` crops normalised by the FSFM statistics (see the module
    docstring) and gives the two-class softmax with "fake" at index 0. Raises
    :class:`CheckpointError` naming the file (and keys) for anything that is not a two-class
    FSFM ViT-B/16 detector.
    """
    if variant is not None:
        raise CheckpointError(
            f"checkpoint {path}: FSFM files say their architecture; no variant is taken, "
            f"got {variant!r}"
        )
    state, args = _read(path)
    global_pool = _pooling(path, state)
    _check_head(path, state)
    mean, std, stats = _mean_std(path, args)
    simple_augment = bool(getattr(args, "apply_simple_augment", False))
    margin = PAPER_CROP_MARGIN * (SIMPLE_AUGMENT_FRACTION if simple_augment else 1.0)
    crop = (
        "Resize(256) + CenterCrop(224) (--apply_simple_augment)"
        if simple_augment
        else "Resize((224, 224))"
    )
    backbone, _, _ = VIT_BASE
    spec = MemberSpec(
        name=name,
        architecture="timm",
        backbone=backbone,
        options={"global_pool": global_pool},
        input_size=FSFM_INPUT_SIZE,
        mean=mean,
        std=std,
        resize="stretch",
        crop_margin=margin,
        output="softmax",
        num_classes=2,
        fake_index=FSFM_FAKE_INDEX,
        licence=FSFM_LICENCE,
        source=upstream_source(f"{FSFM_SOURCE} fine-tuned ViT-B/16", path),
        description=(
            f"FSFM (Wang et al., CVPR 2025) ViT-B/16 deepfake detector, {global_pool} pooling; "
            f"face box x 1.3, {crop}, bicubic upstream; mean/std {stats}; "
            "softmax index 0 = fake (FSFM's ImageFolder order)."
        ),
    )
    return check_member_state(spec, state, f"FSFM checkpoint {path}")


def _read(path: Path) -> tuple[dict[str, Tensor], argparse.Namespace | None]:
    """The model state dict and the training run's ``args`` (None for a bare state dict)."""
    raw = read_torch_file(path, FAMILY, _SAFE_GLOBALS)
    args = raw.get("args") if "model" in raw else None
    if args is not None and not isinstance(args, argparse.Namespace):
        raise CheckpointError(
            f"checkpoint {path}: 'args' is a {type(args).__name__}, FSFM saves an "
            "argparse.Namespace"
        )
    return state_dict_of(raw, path, FAMILY, entry="model"), args


def _pooling(path: Path, state: dict[str, Tensor]) -> str:
    """timm ``global_pool`` of the checkpoint's head: ``avg`` (FSFM's DfD default) or ``token``;
    refuses other ViT sizes and pre-training checkpoints."""
    if "head.weight" not in state:
        raise CheckpointError(
            f"checkpoint {path} has no 'head.weight': it is not a fine-tuned FSFM detector "
            "(FSFM's pre-training checkpoints have no classification head)"
        )
    backbone, dim, depth = VIT_BASE
    blocks = {k.split(".")[1] for k in state if k.startswith("blocks.")}
    cls = state.get("cls_token")
    if cls is None or cls.shape[-1] != dim or len(blocks) != depth:
        found = "no cls_token" if cls is None else f"width {cls.shape[-1]}, {len(blocks)} blocks"
        # FSFM's ViT-S has 12 heads where timm's vit_small has 6, so it is not timm's model.
        raise CheckpointError(
            f"checkpoint {path}: only FSFM's ViT-B/16 (width {dim}, {depth} blocks, timm "
            f"{backbone}) is supported; found {found} (keys cls_token, blocks.*)"
        )
    if "fc_norm.weight" in state:
        return "avg"
    if "norm.weight" in state:
        return "token"
    raise CheckpointError(f"checkpoint {path} has neither 'fc_norm.weight' nor 'norm.weight'")


def _check_head(path: Path, state: dict[str, Tensor]) -> None:
    """Refuse heads other than FSFM's two-class DfD head (``head.weight`` ``(2, 768)``)."""
    classes = state["head.weight"].shape[0]
    if classes == 4:
        # Only third-party code names the 4 classes (Real, Deepfake, Diffusion, Spoofing);
        # FSFM's own code does not confirm the order, so no "fake" index can be trusted.
        raise CheckpointError(
            f"checkpoint {path}: head.weight has 4 classes (FSFM's 'Unified-detector'); its class "
            "order is not stated by FSFM's code, so it is not supported; use a 2-class DfD "
            "checkpoint (e.g. finetuned_models/FF++_c23_32frames)"
        )
    if classes != 2:
        raise CheckpointError(
            f"checkpoint {path}: head.weight has {classes} classes; FSFM's deepfake detectors "
            "have 2 (fake = 0, real = 1)"
        )


def _mean_std(
    path: Path, args: argparse.Namespace | None
) -> tuple[tuple[float, float, float], tuple[float, float, float], str]:
    """Normalisation as FSFM evaluates ``path``: mean, std and where they come from."""
    if args is not None and getattr(args, "normalize_from_IMN", False):
        return IMAGENET_MEAN, IMAGENET_STD, "ImageNet (args.normalize_from_IMN)"
    companion = path.with_name(MEAN_STD_FILE)
    if not companion.is_file():
        return VGGFACE2_MEAN, VGGFACE2_STD, f"VGGFace2 (FSFM's fallback: no {MEAN_STD_FILE})"
    # Upstream falls back to VGGFace2 on an unreadable file too (with a printed warning); a
    # member silently normalised with other statistics than its authors' is worse than an error.
    try:
        first = companion.read_text(encoding="utf-8").splitlines()[0]
        stats = json.loads(first)
        mean, std = _triple(stats["mean"]), _triple(stats["std"])
    except (OSError, IndexError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{companion} (beside checkpoint {path}) must hold a JSON object with 'mean' and "
            f"'std', 3 numbers each, on its first line: {type(exc).__name__}: {exc}; fix or "
            "remove it (without it FSFM uses the VGGFace2 statistics)"
        ) from exc
    if min(std) <= 0:
        raise CheckpointError(f"{companion}: std must be positive, got {std}")
    return mean, std, f"from {MEAN_STD_FILE}"


def _triple(values: object) -> tuple[float, float, float]:
    if not isinstance(values, list) or len(values) != 3:
        raise ValueError(f"expected 3 numbers, got {values!r}")
    a, b, c = (float(v) for v in values)
    if not all(math.isfinite(v) for v in (a, b, c)):
        raise ValueError(f"expected finite numbers, got {values!r}")
    return a, b, c
