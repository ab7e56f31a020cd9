"""FSFM fine-tuned ViT checkpoints, imported onto timm ``vit_base_patch16_224``.

The reference restates FSFM's ``models_vit.VisionTransformer`` forward (patch embedding, cls
token, position embedding, blocks, then for ``global_pool``: mean of the patch tokens without
cls -> ``fc_norm`` -> ``head``; for ``--cls_token``: ``norm`` -> cls token -> ``head``) over
timm 1.0.31's ``Block``. It is not FSFM's class on its pinned timm 0.4.5: that class calls
0.4.5's ``forward_features`` internals and crashes on timm 1.x, and tests install nothing; the
shared blocks were checked against timm 0.4.5 once (1.9e-9 logit difference, CHECKPOINTS.md
section 0), so what this test checks is what the importer decides: keys, pooling, head, class
order and normalisation. Weights are random (no FSFM checkpoint can be downloaded here) and saved
as ``util/misc.py save_model`` does, ``args`` namespace included.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from collections.abc import Iterator
from pathlib import Path, PosixPath
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torchvision.transforms import functional as TF

from pipeline.errors import CheckpointError
from pipeline.models.importers.base import ImportedMember
from pipeline.models.importers.fsfm import import_fsfm
from pipeline.models.preprocess import crops_to_unit_batch, normalise
from pipeline.models.registry import build_network

TOLERANCE = 1e-5
# FSFM util/datasets.py build_transform: the fallback when pretrain_ds_mean_std.txt is absent.
VGGFACE2_MEAN = [0.5482207536697388, 0.42340534925460815, 0.3654651641845703]
VGGFACE2_STD = [0.2789176106452942, 0.2438540756702423, 0.23493893444538116]
# Statistics of another pre-training set, as a companion file would hold them.
OTHER_MEAN = [0.532625138759613, 0.4048449993133545, 0.3708747327327728]
OTHER_STD = [0.25850796699523926, 0.21054500341415405, 0.20785294473171234]
DIM, DEPTH, HEADS = 768, 12, 12


class LayerNorm6(nn.LayerNorm):
    """FSFM's ``partial(nn.LayerNorm, eps=1e-6)``."""

    def __init__(self, dim: int, **kwargs: Any) -> None:  # timm passes device and dtype
        super().__init__(dim, eps=1e-6, **kwargs)


class PatchEmbed(nn.Module):
    """timm 0.4.5 ``PatchEmbed``: ``(N, 3, 224, 224)`` -> ``(N, 196, 768)``."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, DIM, 16, 16)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class FsfmViT(nn.Module):
    """FSFM ``models_vit.vit_base_patch16(global_pool=..., num_classes=2)``, its forward
    restated: ``(N, 3, 224, 224)`` normalised -> ``(N, 2)`` logits, fake = 0."""

    def __init__(self, global_pool: bool = True) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
        self.pos_embed = nn.Parameter(torch.zeros(1, 197, DIM))
        self.blocks = nn.ModuleList(
            Block(DIM, HEADS, mlp_ratio=4.0, qkv_bias=True, norm_layer=LayerNorm6)
            for _ in range(DEPTH)
        )
        self.global_pool = global_pool
        if global_pool:
            self.fc_norm = LayerNorm6(DIM)  # FSFM deletes timm's ``norm`` then
        else:
            self.norm = LayerNorm6(DIM)
        self.head = nn.Linear(DIM, 2)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        if self.global_pool:
            return self.fc_norm(x[:, 1:, :].mean(dim=1))
        return self.norm(x)[:, 0]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def golden_faces(shared_data: Path, count: int = 6) -> list[np.ndarray]:
    """The first ``count`` golden face crops, bicubic-resized to 224 as FSFM's eval transform
    resizes: ``(224, 224, 3)`` uint8 each."""
    paths = sorted((shared_data.parent / "weights" / "golden" / "inputs").glob("*.png"))[:count]
    assert len(paths) == count, paths
    faces = []
    for p in paths:
        with Image.open(p) as img:
            rgb = img.convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
            faces.append(np.asarray(rgb, dtype=np.uint8).copy())
    return faces


def upstream_p_fake(
    net: FsfmViT, faces: list[np.ndarray], mean: list[float], std: list[float]
) -> Tensor:
    """FSFM evaluation: ``ToTensor`` + ``Normalize(mean, std)``, ``softmax(output)[:, 0]``."""
    with torch.no_grad():
        return torch.softmax(net(_upstream_input(faces, mean, std)), dim=1)[:, 0]


def _upstream_input(faces: list[np.ndarray], mean: list[float], std: list[float]) -> Tensor:
    return torch.stack([TF.normalize(TF.to_tensor(f), mean, std) for f in faces])


def randomised(global_pool: bool, faces: list[np.ndarray], seed: int) -> tuple[FsfmViT, Tensor]:
    """A reference with random weights whose head spreads P(fake) over ``faces``, and that
    P(fake) ``(N,)`` as FSFM evaluates it with the VGGFace2 statistics."""
    gen = torch.Generator().manual_seed(seed)
    net = FsfmViT(global_pool).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.normal_(0.0, 0.05, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.add_(1.0)
        features = net.forward_features(_upstream_input(faces, VGGFACE2_MEAN, VGGFACE2_STD))
        # Centre and scale the fake-minus-real logit: faces differ and none saturates.
        z = net.head(features)
        d = z[:, 0] - z[:, 1]
        scale = 1.5 / d.std().clamp_min(1e-6)
        w, b = net.head.weight, net.head.bias
        w[0] = w[1] + scale * (w[0] - w[1])
        b[0] = b[1] + scale * (b[0] - b[1] - d.mean())
        # FSFM's forward: head(forward_features(x)); test code: softmax over the 2 classes.
        p_fake = torch.softmax(net.head(features), dim=1)[:, 0]
    return net, p_fake


def save_like_fsfm(net: nn.Module, path: Path, **args: object) -> Path:
    """``util/misc.py save_model``: model, optimizer, epoch, scaler and the run's ``args``."""
    namespace = argparse.Namespace(
        model="vit_base_patch16",
        input_size=224,
        nb_classes=2,
        global_pool=True,
        normalize_from_IMN=False,
        apply_simple_augment=False,
        finetune="../../checkpoint/pretrained_models/VF2_ViT-B/checkpoint-400.pth",
        data_path=["../../datasets/finetune_datasets/deepfakes_detection/FaceForensics"],
        blr=5e-4,
        lr=1e-3,
        # Without --output_dir FSFM sets a PosixPath here (get_shared_folder() / pgrp).
        output_dir=PosixPath("checkpoint/user/experiments_finetune/4242"),
        log_dir=PosixPath("checkpoint/user/experiments_finetune/4242"),
        distributed=True,
        gpu=0,
    )
    for key, value in args.items():
        setattr(namespace, key, value)
    # A fresh AdamW's state: the real file also holds per-parameter moments (3x the weights).
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    scaler = {
        "scale": 65536.0,
        "growth_factor": 2.0,
        "backoff_factor": 0.5,
        "growth_interval": 2000,
        "_growth_tracker": 117,
    }
    torch.save(
        {
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": 9,
            "scaler": scaler,
            "args": namespace,
        },
        path,
    )
    return path


def ours(member: ImportedMember, faces: list[np.ndarray]) -> Tensor:
    """P(fake) ``(N,)`` of the imported member on ``faces``, preprocessed from its spec."""
    spec = member.spec
    # The network of build_network on the meta device, taking the imported tensors: the same
    # code and strict load minus a random initialisation the load overwrites (2 s for ViT-B).
    with torch.device("meta"):
        net = build_network(spec)
    net.load_state_dict(member.state, strict=True, assign=True)
    x = crops_to_unit_batch(faces, spec.input_size, torch.device("cpu"), spec.resize)
    with torch.no_grad():
        return torch.sigmoid(net(normalise(x, spec.mean, spec.std)))


def _max_diff(a: Tensor, b: Tensor) -> float:
    assert float(b.max() - b.min()) > 0.05, b  # a constant score would let a wrong import pass
    return float((a - b).abs().max())


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path``, emptied of checkpoints afterwards: a ViT-B file is 344 MB and pytest keeps
    the temporary folders of the last three runs."""
    yield tmp_path
    for path in tmp_path.glob("*.pth"):
        path.unlink()


@pytest.fixture(scope="module")
def reference(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FsfmViT, list[np.ndarray], Tensor, Path]]:
    """The global-pool reference, the six faces, its P(fake) on them with the VGGFace2
    statistics, and its FSFM training file (no companion)."""
    faces = golden_faces(shared_data)
    net, p_fake = randomised(True, faces, seed=0)
    path = save_like_fsfm(net, tmp_path_factory.mktemp("fsfm") / "checkpoint-min_val_loss.pth")
    yield net, faces, p_fake, path
    path.unlink()


def test_fsfm_training_file_matches_upstream(
    reference: tuple[FsfmViT, list[np.ndarray], Tensor, Path],
) -> None:
    _, faces, expected, path = reference
    member = import_fsfm(path, "fsfm_ffpp", None)

    spec = member.spec
    assert (spec.architecture, spec.backbone, dict(spec.options)) == (
        "timm",
        "vit_base_patch16_224",
        {"global_pool": "avg"},
    )
    assert (spec.input_size, spec.resize, spec.crop_margin) == (224, "stretch", 1.3)
    assert (spec.output, spec.num_classes, spec.fake_index) == ("softmax", 2, 0)
    assert list(spec.mean) == VGGFACE2_MEAN and list(spec.std) == VGGFACE2_STD
    assert spec.licence == "CC BY-NC 4.0" and path.name in spec.source
    assert "fc_norm.weight" in member.state and "norm.weight" not in member.state
    diff = _max_diff(ours(member, faces), expected)
    assert diff <= TOLERANCE, f"max |P(fake) diff| {diff:.3g}"


def test_companion_mean_std_file_is_used(
    reference: tuple[FsfmViT, list[np.ndarray], Tensor, Path], scratch: Path
) -> None:
    net, faces, _, original = reference
    path = scratch / original.name
    os.link(original, path)
    # FSFM appends one JSON line per run (mode "a") and reads the first.
    (scratch / "pretrain_ds_mean_std.txt").write_text(
        json.dumps({"mean": OTHER_MEAN, "std": OTHER_STD})
        + "\n"
        + json.dumps({"mean": VGGFACE2_MEAN, "std": VGGFACE2_STD})
        + "\n"
    )
    member = import_fsfm(path, "fsfm_ffpp", None)

    assert list(member.spec.mean) == OTHER_MEAN and list(member.spec.std) == OTHER_STD
    faces = faces[1:3]  # one fake, one real: two faces keep the test short
    diff = _max_diff(ours(member, faces), upstream_p_fake(net, faces, OTHER_MEAN, OTHER_STD))
    assert diff <= TOLERANCE, f"max |P(fake) diff| {diff:.3g}"


def test_a_plain_state_dict_imports(
    reference: tuple[FsfmViT, list[np.ndarray], Tensor, Path], scratch: Path
) -> None:
    net, faces, expected, _ = reference
    path = scratch / "model.pth"
    torch.save(net.state_dict(), path)
    member = import_fsfm(path, "fsfm_plain", None)

    assert list(member.spec.mean) == VGGFACE2_MEAN and member.spec.crop_margin == 1.3
    diff = _max_diff(ours(member, faces[1:3]), expected[1:3])
    assert diff <= TOLERANCE, f"max |P(fake) diff| {diff:.3g}"


def test_cls_token_pooling_matches_upstream(shared_data: Path, scratch: Path) -> None:
    faces = golden_faces(shared_data)[1:3]
    net, expected = randomised(False, faces, seed=1)
    path = save_like_fsfm(net, scratch / "checkpoint-9.pth", global_pool=False)
    member = import_fsfm(path, "fsfm_cls", None)

    assert dict(member.spec.options) == {"global_pool": "token"}
    diff = _max_diff(ours(member, faces), expected)
    assert diff <= TOLERANCE, f"max |P(fake) diff| {diff:.3g}"


# The remaining tests need the keys and shapes only: each tensor is a zero-stride view of one
# element, which torch.save stores as that one element (a "ViT-B" file of a few kilobytes).


@pytest.fixture(scope="module")
def light_state() -> dict[str, Tensor]:
    return {k: torch.zeros(()).expand(v.shape) for k, v in FsfmViT().state_dict().items()}


def test_the_run_args_choose_imagenet_statistics_and_the_simple_augment_crop(
    light_state: dict[str, Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "checkpoint-best.pth"
    torch.save(
        {
            "model": light_state,
            "args": argparse.Namespace(normalize_from_IMN=True, apply_simple_augment=True),
        },
        path,
    )
    (tmp_path / "pretrain_ds_mean_std.txt").write_text(
        json.dumps({"mean": OTHER_MEAN, "std": OTHER_STD})
    )
    spec = import_fsfm(path, "fsfm_imn", None).spec

    # normalize_from_IMN makes FSFM ignore the companion file.
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    # Resize(256) + CenterCrop(224) keeps the centred 224/256 of the 1.3 crop.
    assert spec.crop_margin == pytest.approx(1.3 * 224 / 256)


def test_a_four_class_head_is_refused(light_state: dict[str, Tensor], tmp_path: Path) -> None:
    state = dict(light_state)
    state["head.weight"], state["head.bias"] = torch.zeros(4, DIM), torch.zeros(4)
    path = tmp_path / "checkpoint-min_train_loss.pth"
    torch.save({"model": state, "args": argparse.Namespace(nb_classes=4)}, path)
    with pytest.raises(
        CheckpointError, match=r"checkpoint-min_train_loss\.pth: head\.weight has 4 classes"
    ):
        import_fsfm(path, "fsfm_unified", None)


def test_another_family_is_refused(tmp_path: Path) -> None:
    # DeepfakeBench's clip detector: a ViT-B/16 too, but HF CLIP keys and a ``head``.
    state = {
        "backbone.embeddings.class_embedding": torch.zeros(DIM),
        "head.weight": torch.zeros(2, DIM),
        "head.bias": torch.zeros(2),
    }
    path = tmp_path / "clip_best.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"clip_best\.pth: only FSFM's ViT-B/16.*cls_token"):
        import_fsfm(path, "x", None)


def test_a_missing_key_is_named(light_state: dict[str, Tensor], tmp_path: Path) -> None:
    state = dict(light_state)
    del state["blocks.3.attn.qkv.bias"]
    path = tmp_path / "short.pth"
    torch.save({"model": state}, path)
    with pytest.raises(
        CheckpointError, match=r"short\.pth.*missing keys: blocks\.3\.attn\.qkv\.bias"
    ):
        import_fsfm(path, "x", None)


def test_an_extra_key_is_named(light_state: dict[str, Tensor], tmp_path: Path) -> None:
    state = dict(light_state)
    state["decoder_pred.weight"] = torch.zeros(3)
    path = tmp_path / "long.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"long\.pth.*unexpected keys: decoder_pred\.weight"):
        import_fsfm(path, "x", None)


def test_a_truncated_file_is_refused(light_state: dict[str, Tensor], tmp_path: Path) -> None:
    path = tmp_path / "cut.pth"
    torch.save({"model": light_state}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth cannot be read"):
        import_fsfm(path, "x", None)


def test_a_pickle_with_other_globals_is_refused_not_executed(
    light_state: dict[str, Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "odd.pth"
    torch.save({"model": light_state, "args": datetime.datetime(2025, 6, 1)}, path)
    with pytest.raises(CheckpointError, match=r"odd\.pth.*Unsupported global.*datetime"):
        import_fsfm(path, "x", None)


def test_a_malformed_companion_file_is_refused(
    light_state: dict[str, Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "checkpoint-9.pth"
    torch.save({"model": light_state}, path)
    (tmp_path / "pretrain_ds_mean_std.txt").write_text('{"mean": [0.5, 0.5]}\n')
    with pytest.raises(CheckpointError, match=r"pretrain_ds_mean_std\.txt.*checkpoint-9\.pth"):
        import_fsfm(path, "x", None)


def test_a_variant_is_refused(light_state: dict[str, Tensor], tmp_path: Path) -> None:
    path = tmp_path / "checkpoint-9.pth"
    torch.save(light_state, path)
    with pytest.raises(CheckpointError, match=r"checkpoint-9\.pth.*no variant"):
        import_fsfm(path, "x", "vit_large")
