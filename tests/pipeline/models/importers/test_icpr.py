"""icpr2020dfdc importer against fornet.py's four EfficientNet classes (efficientnet_pytorch 0.7.1).

The classes are reproduced in a few lines each (architectures/fornet.py at bbd6411), built with
``from_name`` instead of ``from_pretrained`` (no download), and saved both ways upstream does:
a plain state dict (the Backblaze files) and a training file ``{'net', 'opt', ...}``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from efficientnet_pytorch import EfficientNet
from torch import Tensor, nn

from pipeline.errors import CheckpointError
from pipeline.models.importers import import_format
from pipeline.models.preprocess import normalise
from pipeline.models.registry import build_network
from tests.pipeline.models.importers.reference_weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    assert_close_probabilities,
    calibration_batch,
    faces,
    randomise,
)
from tests.pipeline.models.importers.reference_weights import normalise as reference_normalise

SIZE = 224


class EfficientNetAutoAtt(EfficientNet):
    """fornet.py ``EfficientNetAutoAtt`` with ``width=0``: attention after block 9."""

    def init_att(self) -> None:
        self.att_block_idx = 9
        self.attconv = nn.Conv2d(kernel_size=1, in_channels=56, out_channels=1)

    def extract_features(self, x: Tensor) -> Tensor:
        x = self._swish(self._bn0(self._conv_stem(x)))
        for idx, block in enumerate(self._blocks):
            x = block(x, drop_connect_rate=None)  # eval: drop-connect is off either way
            if idx == self.att_block_idx:
                x = x * torch.sigmoid(self.attconv(x))
        return self._swish(self._bn1(self._conv_head(x)))


class EfficientNetGen(nn.Module):
    """fornet.py ``EfficientNetGen`` / ``EfficientNetGenAutoAtt`` for efficientnet-b4."""

    def __init__(self, attention: bool) -> None:
        super().__init__()
        if attention:
            self.efficientnet = EfficientNetAutoAtt.from_name("efficientnet-b4")
            self.efficientnet.init_att()
        else:
            self.efficientnet = EfficientNet.from_name("efficientnet-b4")
        self.classifier = nn.Linear(self.efficientnet._conv_head.out_channels, 1)
        del self.efficientnet._fc

    def features(self, x: Tensor) -> Tensor:
        x = self.efficientnet.extract_features(x)
        return self.efficientnet._avg_pooling(x).flatten(start_dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.efficientnet._dropout(self.features(x)))


class SiameseTuning(nn.Module):
    """fornet.py ``SiameseTuning`` (``EfficientNetB4ST``, ``EfficientNetAutoAttB4ST``)."""

    def __init__(self, attention: bool) -> None:
        super().__init__()
        self.feat_ext = EfficientNetGen(attention)
        self.classifier = nn.Sequential(nn.BatchNorm1d(1792), nn.Linear(1792, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.feat_ext.features(x))


def fornet(variant: str) -> nn.Module:
    attention = "AutoAtt" in variant
    return SiameseTuning(attention) if variant.endswith("ST") else EfficientNetGen(attention)


#: (variant, saved as a training file, written in the pre-1.6 torch.save format as icpr's
#: PyTorch 1.4 did)
CASES = [
    ("EfficientNetB4", False, True),
    ("EfficientNetB4ST", True, False),
    ("EfficientNetAutoAttB4", True, True),
    ("EfficientNetAutoAttB4ST", False, False),
]
KEY_COUNTS = {
    "EfficientNetB4": 706,
    "EfficientNetAutoAttB4": 708,
    "EfficientNetB4ST": 713,
    "EfficientNetAutoAttB4ST": 715,
}


def save_as_icpr(net: nn.Module, path: Path, training_file: bool, legacy: bool) -> None:
    state = net.state_dict()
    if training_file:  # train_binclass.py save_model
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        state = {
            "net": state,
            "opt": opt.state_dict(),
            "train_loss": 0.31,
            "val_loss": 0.42,
            "iteration": 12000,
            "batch_size": 32,
            "epoch": 3,
        }
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)


@pytest.fixture(scope="module")
def icpr_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, nn.Module]]:
    """Each variant, randomised and saved; the files are named as the Backblaze ones are."""
    root = tmp_path_factory.mktemp("icpr")
    x = reference_normalise(calibration_batch(SIZE), IMAGENET_MEAN, IMAGENET_STD)
    out = {}
    for seed, (variant, training_file, legacy) in enumerate(CASES):
        net = randomise(fornet(variant), x, seed=10 + seed)
        assert len(net.state_dict()) == KEY_COUNTS[variant]
        path = root / f"{variant}_DFDC_bestval-0123abcd.pth"
        save_as_icpr(net, path, training_file, legacy)
        out[variant] = (path, net)
    return out


@pytest.mark.parametrize("given", [False, True], ids=["inferred", "given"])
@pytest.mark.parametrize("variant", [case[0] for case in CASES])
def test_icpr_scores_as_upstream(
    icpr_files: dict[str, tuple[Path, nn.Module]], variant: str, given: bool
) -> None:
    path, reference = icpr_files[variant]
    member = import_format("icpr2020dfdc", path, "icpr_b4", variant if given else None)
    spec = member.spec
    assert (spec.input_size, spec.output, spec.num_classes, spec.crop_margin) == (
        SIZE,
        "fake-logit",
        1,
        1.6,
    )
    assert spec.options["static_pad_size"] == 380
    assert (spec.options.get("attention_after_block"), spec.options.get("siamese_head")) == (
        9 if "AutoAtt" in variant else None,
        True if variant.endswith("ST") else None,
    )
    assert spec.trained_on.startswith("DFDC") and spec.licence.startswith("GPL-3.0")
    if not given:  # the member is the same either way; score it once
        return
    net = build_network(spec)
    net.load_state_dict(member.state, strict=True)
    x = faces(SIZE)
    with torch.no_grad():
        # Upstream: A.Normalize(ImageNet) then the network; expit(logit) per frame.
        expected = torch.sigmoid(reference(reference_normalise(x, IMAGENET_MEAN, IMAGENET_STD)))
        ours = torch.sigmoid(net(normalise(x, spec.mean, spec.std)))
    diff = assert_close_probabilities(expected[:, 0], ours)
    print(f"icpr {variant} max |P(fake) difference| {diff:.2e}")


def test_timm_dynamic_padding_would_not_match(
    icpr_files: dict[str, tuple[Path, nn.Module]],
) -> None:
    """Why the member keeps efficientnet_pytorch's pads: timm's own tf_efficientnet_b4 with the
    same weights scores these faces measurably differently at 224."""
    path, reference = icpr_files["EfficientNetB4"]
    member = import_format("icpr2020dfdc", path, "icpr_b4")
    plain = timm.create_model("tf_efficientnet_b4", pretrained=False, num_classes=1).eval()
    plain.load_state_dict(member.state, strict=True)
    x = reference_normalise(faces(SIZE), IMAGENET_MEAN, IMAGENET_STD)
    with torch.no_grad():
        gap = (torch.sigmoid(reference(x)) - torch.sigmoid(plain(x))).abs().max()
    assert gap > 1e-3


def test_st_drops_only_the_unused_inner_head(
    icpr_files: dict[str, tuple[Path, nn.Module]],
) -> None:
    member = import_format("icpr2020dfdc", icpr_files["EfficientNetB4ST"][0], "st")
    assert len(member.state) == KEY_COUNTS["EfficientNetB4ST"] - 2
    assert {"classifier.0.running_mean", "classifier.1.weight"} <= set(member.state)


def _plain_state(path: Path) -> dict[str, Tensor]:
    raw = torch.load(path, weights_only=True)
    return raw.get("net", raw)


@pytest.mark.parametrize(
    ("variant", "edit", "message"),
    [
        (
            "EfficientNetAutoAttB4",
            {"efficientnet._blocks.12._se_reduce.bias": None},
            r"missing keys: efficientnet\._blocks\.12\._se_reduce\.bias",
        ),
        (
            "EfficientNetB4ST",
            {"feat_ext.extra.weight": torch.zeros(1)},
            r"unexpected keys: feat_ext\.extra\.weight",
        ),
        (
            "EfficientNetB4",
            {"classifier.weight": torch.zeros(2, 1792)},
            r"shape mismatch: classifier\.weight \(2, 1792\) != \(1, 1792\)",
        ),
    ],
    ids=["missing", "extra", "shape"],
)
def test_key_mismatches_are_named(
    icpr_files: dict[str, tuple[Path, nn.Module]],
    tmp_path: Path,
    variant: str,
    edit: dict[str, Tensor | None],
    message: str,
) -> None:
    state = _plain_state(icpr_files[variant][0])
    for key, value in edit.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=message) as info:
        import_format("icpr2020dfdc", bad, "icpr")
    assert str(bad) in str(info.value) and variant in str(info.value)


def test_a_contradicted_variant_is_refused(
    icpr_files: dict[str, tuple[Path, nn.Module]],
) -> None:
    path = icpr_files["EfficientNetAutoAttB4"][0]
    with pytest.raises(CheckpointError, match=r"EfficientNetAutoAttB4 \(key efficientnet\.attconv"):
        import_format("icpr2020dfdc", path, "icpr", "EfficientNetB4")
    with pytest.raises(CheckpointError, match=r"unknown icpr2020dfdc variant 'B7'"):
        import_format("icpr2020dfdc", path, "icpr", "B7")


def test_truncated_and_foreign_files_are_named(
    icpr_files: dict[str, tuple[Path, nn.Module]], tmp_path: Path
) -> None:
    data = icpr_files["EfficientNetB4"][0].read_bytes()  # legacy format: a bare pickle stream
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"cut\.pth cannot be read"):
        import_format("icpr2020dfdc", cut, "icpr")
    # icpr files given to the DeepfakeBench and SBI importers.
    training_file = icpr_files["EfficientNetB4ST"][0]
    with pytest.raises(CheckpointError, match=r"top-level keys are: .*net, opt"):
        import_format("deepfakebench", training_file, "wrong")
    plain = icpr_files["EfficientNetB4"][0]
    with pytest.raises(CheckpointError, match=r"no key 'net\._conv_stem.*begin efficientnet\."):
        import_format("sbi", plain, "wrong")
