"""Xception checkpoints of icpr2020dfdc and DeepfakeBench, imported onto timm ``legacy_xception``.

The references are Cadene's ``pretrainedmodels`` Xception (the network both projects vendor),
wrapped and saved exactly as each upstream does, with random weights (no real checkpoint can be
downloaded here): icpr2020dfdc ``fornet.Xception`` (``self.xception``, ``last_linear =
Linear(2048, 1)``; saved as a plain state dict like the Backblaze files, and as the training
file ``{'net', 'opt', ...}``), and DeepfakeBench's ``XceptionDetector`` (``self.backbone``, a
two-class ``last_linear`` and the unused ``adjust_channel`` block; saved as a plain state dict).
Each reference runs on real face crops normalised its upstream's way; the imported member runs on
the same pixels normalised from its spec, and P(fake) must agree to 1e-5.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pretrainedmodels
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import functional as TF

from pipeline.errors import CheckpointError
from pipeline.models.importers.base import ImportedMember, import_format
from pipeline.models.importers.xception_family import dfb_xception_member, icpr_xception_member
from pipeline.models.preprocess import crops_to_unit_batch, normalise
from pipeline.models.registry import build_network

TOLERANCE = 1e-5
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class IcprXception(nn.Module):
    """icpr2020dfdc ``architectures/fornet.py`` ``Xception``: Cadene's net with one logit."""

    def __init__(self) -> None:
        super().__init__()
        # pretrained=None: upstream's default 'imagenet' downloads Cadene's weights.
        self.xception = pretrainedmodels.xception(num_classes=1000, pretrained=None)
        self.xception.last_linear = nn.Linear(2048, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.xception.forward(x)


class DfbXceptionDetector(nn.Module):
    """DeepfakeBench ``XceptionDetector`` with its ``mode: original`` xception backbone: Cadene's
    net with a two-class ``last_linear`` and the ``adjust_channel`` block it builds but does
    not call in that mode (its seven entries are in every saved state dict)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = pretrainedmodels.xception(num_classes=1000, pretrained=None)
        self.backbone.last_linear = nn.Linear(2048, 2)
        self.backbone.adjust_channel = nn.Sequential(
            nn.Conv2d(2048, 512, 1, 1), nn.BatchNorm2d(512), nn.ReLU(inplace=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        # DeepfakeBench: features -> classifier (ReLU, average pool, last_linear).
        return self.backbone.logits(self.backbone.features(x))


def golden_faces(shared_data: Path, size: int) -> list[np.ndarray]:
    """The six golden face crops (256x256 RGB PNGs), resized to ``size``: ``(size, size, 3)``
    uint8 each."""
    paths = sorted((shared_data.parent / "weights" / "golden" / "inputs").glob("*.png"))
    assert len(paths) == 6, paths
    faces = []
    for p in paths:
        with Image.open(p) as img:
            rgb = img.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            faces.append(np.asarray(rgb, dtype=np.uint8).copy())
    return faces


def albumentations_normalise(faces: list[np.ndarray], mean: tuple[float, ...]) -> Tensor:
    """icpr2020dfdc's ``A.Normalize(mean, std)`` + ``ToTensorV2``, written out (albumentations
    is not installed): ``(img - mean * 255) / (std * 255)`` in float32, HWC -> CHW."""
    m = np.asarray(mean, dtype=np.float32) * 255.0
    s = np.asarray(IMAGENET_STD, dtype=np.float32) * 255.0
    return torch.stack(
        [torch.from_numpy(((f.astype(np.float32) - m) / s).transpose(2, 0, 1)) for f in faces]
    )


def torchvision_normalise(faces: list[np.ndarray], mean_std: float) -> Tensor:
    """DeepfakeBench's ``ToTensor`` + ``Normalize([0.5] * 3, [0.5] * 3)``."""
    return torch.stack(
        [TF.normalize(TF.to_tensor(f), [mean_std] * 3, [mean_std] * 3) for f in faces]
    )


def randomise(xception: nn.Module, calibration: Tensor, seed: int) -> None:
    """Random weights including batch-norm affine and running statistics, in eval mode.

    Running statistics are first measured on ``calibration`` (as training would set them) and
    then perturbed: with timm's initial (0, 1) statistics or wholly random ones a deep Xception's
    activations vanish or explode, and every face would get the same score.
    """
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in xception.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5, generator=gen)
            bn.bias.normal_(0.0, 0.1, generator=gen)
            bn.reset_running_stats()
            bn.momentum = None
        xception.train()
        xception(calibration)
        xception.eval()
        for bn in bns:
            var = bn.running_var
            assert var is not None and bn.running_mean is not None
            assert bn.num_batches_tracked is not None
            bn.running_mean.add_(0.1 * var.sqrt() * torch.randn(var.shape, generator=gen))
            var.mul_(torch.empty(var.shape).uniform_(0.8, 1.25, generator=gen))
            bn.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (1,), generator=gen)))


def spread_linear(linear: nn.Linear, features: Tensor, seed: int) -> None:
    """Random ``linear`` whose logits over ``features`` ``(N, 2048)`` have a spread of 1.2 per
    class, so P(fake) differs from face to face and is not saturated."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        linear.weight.normal_(0.0, 1.0, generator=gen)
        linear.bias.zero_()
        z = linear(features)
        scale = 1.2 / z.std(dim=0).clamp_min(1e-6)
        linear.weight.mul_(scale[:, None])
        linear.bias.copy_(-z.mean(dim=0) * scale + 0.5 * torch.randn(z.shape[1], generator=gen))


def cadene_reference(cadene: Any, x: Tensor, seed: int) -> Tensor:
    """Randomise the Cadene Xception ``cadene`` (``Any``: pretrainedmodels has no types) and
    return its logits ``(N, C)`` on ``x``: Cadene's own ``logits(features(x))``, the forward
    both projects run."""
    randomise(cadene, x[:3, :, ::2, ::2], seed)  # half size: cheaper, statistics alike
    with torch.no_grad():
        features = cadene.features(x)
        pooled = torch.relu(features).mean(dim=(2, 3))
        spread_linear(cadene.last_linear, pooled, seed + 1)
        return cadene.logits(features)


def ours(member: ImportedMember, faces: list[np.ndarray]) -> Tensor:
    """P(fake) ``(N,)`` of the imported member on ``faces``, preprocessed from its spec."""
    spec = member.spec
    net = build_network(spec)
    net.load_state_dict(member.state, strict=True)
    x = crops_to_unit_batch(faces, spec.input_size, torch.device("cpu"), spec.resize)
    with torch.no_grad():
        return torch.sigmoid(net(normalise(x, spec.mean, spec.std)))


@pytest.fixture(scope="module")
def icpr(shared_data: Path) -> tuple[IcprXception, list[np.ndarray], Tensor]:
    """icpr2020dfdc Xception with random weights, the 224 faces and its P(fake) ``(6,)``."""
    torch.manual_seed(0)
    net = IcprXception()
    faces = golden_faces(shared_data, 224)
    x = albumentations_normalise(faces, IMAGENET_MEAN)
    logits = cadene_reference(net.xception, x, seed=1)
    # Upstream: per frame expit(logit).
    return net, faces, torch.sigmoid(logits[:, 0])


@pytest.fixture(scope="module")
def dfb(shared_data: Path) -> tuple[DfbXceptionDetector, list[np.ndarray], Tensor]:
    """DeepfakeBench xception detector with random weights, the 256 faces and its P(fake)."""
    torch.manual_seed(0)
    net = DfbXceptionDetector()
    with torch.no_grad():
        for p in net.backbone.adjust_channel.parameters():
            p.normal_()
    faces = golden_faces(shared_data, 256)
    x = torchvision_normalise(faces, 0.5)
    logits = cadene_reference(net.backbone, x, seed=2)
    # Upstream: prob = torch.softmax(pred, dim=1)[:, 1].
    return net, faces, torch.softmax(logits, dim=1)[:, 1]


def _check_spread(p: Tensor) -> None:
    # A constant or saturated score would let a wrong import pass.
    assert float(p.max() - p.min()) > 0.2 and float(p.min()) > 1e-3 and float(p.max()) < 1 - 1e-3


@pytest.mark.parametrize("layout", ["plain", "training"])
def test_icpr_xception_matches_upstream(
    icpr: tuple[IcprXception, list[np.ndarray], Tensor], tmp_path: Path, layout: str
) -> None:
    net, faces, expected = icpr
    _check_spread(expected)
    path = tmp_path / "Xception_DFDC_bestval.pth"
    if layout == "plain":  # architectures/weights.py Backblaze files: net.state_dict()
        torch.save(net.state_dict(), path)
    else:  # train_binclass.py save_model
        opt = torch.optim.Adam(net.parameters(), lr=1e-5)
        torch.save(
            dict(
                net=net.state_dict(),
                opt=opt.state_dict(),
                train_loss=0.21,
                val_loss=0.34,
                iteration=12_000,
                batch_size=32,
                epoch=5,
            ),
            path,
        )
    raw = torch.load(path, map_location="cpu", weights_only=True)
    state = raw["net"] if layout == "training" else raw

    member = icpr_xception_member(path, "icpr_xception", state)
    # The family importer (``dfd models import --format icpr2020dfdc``) reads, unwraps and
    # hands over to the function above: the same member, so the same scores.
    _assert_same(import_format("icpr2020dfdc", path, "icpr_xception"), member)

    spec = member.spec
    assert (spec.architecture, spec.backbone, spec.input_size) == (
        "xception",
        "legacy_xception",
        224,
    )
    assert (spec.mean, spec.std, spec.output, spec.num_classes) == (
        IMAGENET_MEAN,
        IMAGENET_STD,
        "fake-logit",
        1,
    )
    assert (spec.crop_margin, spec.resize) == (1.6, "stretch")
    assert spec.licence == "GPL-3.0 (code; no separate weights licence)"
    assert path.name in spec.source and "icpr2020dfdc" in spec.source
    assert "fc.weight" in member.state and not any(k.startswith("xception.") for k in member.state)
    got = ours(member, faces)
    diff = float((got - expected).abs().max())
    assert diff <= TOLERANCE, f"max |P(fake) diff| {diff:.3g}"


def test_dfb_xception_matches_upstream(
    dfb: tuple[DfbXceptionDetector, list[np.ndarray], Tensor], tmp_path: Path
) -> None:
    net, faces, expected = dfb
    _check_spread(expected)
    path = tmp_path / "xception_best.pth"
    state_dict = net.state_dict()
    assert sum(k.startswith("backbone.adjust_channel.") for k in state_dict) == 7
    torch.save(state_dict, path)  # trainer.py save_ckpt: torch.save(model.state_dict(), ...)
    state = torch.load(path, map_location="cpu", weights_only=True)

    member = dfb_xception_member(path, "dfb_xception", state)
    _assert_same(import_format("deepfakebench", path, "dfb_xception"), member)

    spec = member.spec
    assert (spec.architecture, spec.input_size, spec.mean, spec.std) == (
        "xception",
        256,
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
    )
    assert (spec.output, spec.num_classes, spec.fake_index) == ("softmax", 2, 1)
    assert (spec.crop_margin, spec.licence) == (1.3, "CC BY-NC 4.0")
    assert len(member.state) == len(state) - 7
    got = ours(member, faces)
    diff = float((got - expected).abs().max())
    assert diff <= TOLERANCE, f"max |P(fake) diff| {diff:.3g}"


def test_xception_member_exports_to_onnx_with_a_dynamic_batch(
    dfb: tuple[DfbXceptionDetector, list[np.ndarray], Tensor], tmp_path: Path
) -> None:
    net, faces, _ = dfb
    state = {k: v.clone() for k, v in net.state_dict().items()}
    member = dfb_xception_member(_touch(tmp_path / "x.pth"), "dfb_xception", state)
    detector = build_network(member.spec)
    detector.load_state_dict(member.state, strict=True)
    x = normalise(
        crops_to_unit_batch(faces[:3], 256, torch.device("cpu")), member.spec.mean, member.spec.std
    )
    onnx_path = tmp_path / "xception.onnx"
    torch.onnx.export(
        detector,
        (x[:1],),
        str(onnx_path),
        opset_version=17,
        dynamo=False,
        input_names=["faces"],
        output_names=["fake_logit"],
        dynamic_axes={"faces": {0: "batch"}, "fake_logit": {0: "batch"}},
    )
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"faces": x.numpy()})
    with torch.no_grad():
        torch_logits = detector(x)
    assert onnx_logits.shape == (3,)
    np.testing.assert_allclose(onnx_logits, torch_logits.numpy(), atol=1e-4)


def _assert_same(a: ImportedMember, b: ImportedMember) -> None:
    assert a.spec == b.spec
    assert a.state.keys() == b.state.keys()
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _fresh(make: Callable[[], nn.Module]) -> dict[str, Tensor]:
    torch.manual_seed(0)
    return make().state_dict()


@pytest.fixture(scope="module")
def icpr_state() -> dict[str, Tensor]:
    return _fresh(IcprXception)


@pytest.fixture(scope="module")
def dfb_state() -> dict[str, Tensor]:
    return _fresh(DfbXceptionDetector)


def test_a_deepfakebench_file_is_not_an_icpr_xception(
    dfb_state: dict[str, Tensor], tmp_path: Path
) -> None:
    path = _touch(tmp_path / "xception_best.pth")
    with pytest.raises(CheckpointError, match=r"xception_best\.pth.*backbone\.") as info:
        icpr_xception_member(path, "x", dfb_state)
    assert "icpr2020dfdc" in str(info.value)


def test_an_icpr_file_is_not_a_deepfakebench_xception(
    icpr_state: dict[str, Tensor], tmp_path: Path
) -> None:
    path = _touch(tmp_path / "Xception_FFPP.pth")
    with pytest.raises(
        CheckpointError, match=r"Xception_FFPP\.pth.*'backbone\.'.*xception\.block1\."
    ):
        dfb_xception_member(path, "x", icpr_state)


def test_a_missing_key_is_named(icpr_state: dict[str, Tensor], tmp_path: Path) -> None:
    state = dict(icpr_state)
    del state["xception.block3.rep.1.pointwise.weight"]
    path = _touch(tmp_path / "short.pth")
    with pytest.raises(
        CheckpointError, match=r"short\.pth.*missing keys: block3\.rep\.1\.pointwise\.weight"
    ):
        icpr_xception_member(path, "x", state)


def test_an_extra_key_is_named(dfb_state: dict[str, Tensor], tmp_path: Path) -> None:
    state = dict(dfb_state)
    state["backbone.block1.extra.weight"] = torch.zeros(3)
    path = _touch(tmp_path / "long.pth")
    with pytest.raises(CheckpointError, match=r"long\.pth.*unexpected keys: block1\.extra\.weight"):
        dfb_xception_member(path, "x", state)


def test_a_deepfakebench_file_without_adjust_channel_is_refused(
    dfb_state: dict[str, Tensor], tmp_path: Path
) -> None:
    state = {k: v for k, v in dfb_state.items() if "adjust_channel.1." not in k}
    path = _touch(tmp_path / "stripped.pth")
    with pytest.raises(
        CheckpointError, match=r"stripped\.pth.*missing keys: backbone\.adjust_channel\.1\.bias"
    ):
        dfb_xception_member(path, "x", state)


def test_a_two_class_head_is_not_icpr_one_logit(
    icpr_state: dict[str, Tensor], tmp_path: Path
) -> None:
    state = dict(icpr_state)
    state["xception.last_linear.weight"] = torch.zeros(2, 2048)
    state["xception.last_linear.bias"] = torch.zeros(2)
    path = _touch(tmp_path / "two.pth")
    with pytest.raises(CheckpointError, match=r"two\.pth.*fc\.weight \(2, 2048\) != \(1, 2048\)"):
        icpr_xception_member(path, "x", state)
