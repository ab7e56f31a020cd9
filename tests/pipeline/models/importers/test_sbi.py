"""SBI importer against SBI's own network (efficientnet_pytorch 0.7.1), saved as SBI saves it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from efficientnet_pytorch import EfficientNet
from torch import Tensor, nn

from pipeline.errors import CheckpointError
from pipeline.models.importers import import_format
from pipeline.models.preprocess import normalise
from pipeline.models.registry import build_network
from tests.pipeline.models.importers.reference_weights import (
    assert_close_probabilities,
    calibration_batch,
    faces,
    randomise,
)

SIZE = 380


class Detector(nn.Module):
    """SBI src/inference/model.py ``Detector``, built without the ImageNet download."""

    def __init__(self) -> None:
        super().__init__()
        self.net = EfficientNet.from_name("efficientnet-b4", num_classes=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def sam_state(model: nn.Module) -> dict[str, object]:
    """What SBI's ``SAM(params, torch.optim.SGD, lr=0.001, momentum=0.9)`` state dict holds."""
    defaults = {"rho": 0.05, "lr": 0.001, "momentum": 0.9}
    return torch.optim.Optimizer(model.parameters(), defaults).state_dict()


@pytest.fixture(scope="module")
def sbi_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Detector]:
    """A random SBI detector and its checkpoint, ``torch.save`` d as src/train_sbi.py does."""
    detector = Detector()
    randomise(detector, calibration_batch(SIZE), seed=1)  # SBI: RGB / 255 as is
    path = tmp_path_factory.mktemp("sbi") / "FFraw.tar"
    torch.save(
        {"model": detector.state_dict(), "optimizer": sam_state(detector), "epoch": 87}, path
    )
    return path, detector


def test_sbi_scores_as_upstream(sbi_file: tuple[Path, Detector]) -> None:
    path, detector = sbi_file
    member = import_format("sbi", path, "sbi_ffraw")
    spec = member.spec
    assert (spec.input_size, spec.output, spec.fake_index, spec.crop_margin) == (
        SIZE,
        "softmax",
        1,
        1.25,
    )
    assert (spec.mean, spec.std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert "FF-raw" in spec.source and "non-commercial" in spec.licence
    assert spec.checkpoint is None and spec.sha256 is None
    net = build_network(spec)
    net.load_state_dict(member.state, strict=True)
    x = faces(SIZE)
    with torch.no_grad():
        reference = detector(x).softmax(dim=1)[:, 1]  # inference_video.py: softmax(1)[:, 1]
        ours = torch.sigmoid(net(normalise(x, spec.mean, spec.std)))
    diff = assert_close_probabilities(reference, ours)
    print(f"SBI max |P(fake) difference| {diff:.2e}")


def test_a_bare_state_dict_is_read_too(sbi_file: tuple[Path, Detector], tmp_path: Path) -> None:
    path, _ = sbi_file
    bare = tmp_path / "sbi_bare.pth"
    torch.save(torch.load(path, weights_only=True)["model"], bare)
    member = import_format("sbi", bare, "sbi", "efficientnet-b4")
    assert "raw or c23" in member.spec.trained_on


def _rewrite(path: Path, out: Path, edit: dict[str, Tensor | None]) -> Path:
    raw = torch.load(path, weights_only=True)
    for key, value in edit.items():
        if value is None:
            del raw["model"][key]
        else:
            raw["model"][key] = value
    torch.save(raw, out)
    return out


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            {"net._blocks.5._bn1.running_var": None},
            r"missing keys: net\._blocks\.5\._bn1\.running_var",
        ),
        ({"net._extra.weight": torch.zeros(3)}, r"unexpected keys: net\._extra\.weight"),
        ({"net._fc.weight": torch.zeros(3, 1792)}, r"shape mismatch: net\._fc\.weight \(3, 1792\)"),
    ],
    ids=["missing", "extra", "shape"],
)
def test_key_mismatches_are_named(
    sbi_file: tuple[Path, Detector], tmp_path: Path, edit: dict[str, Tensor | None], message: str
) -> None:
    bad = _rewrite(sbi_file[0], tmp_path / "bad.tar", edit)
    with pytest.raises(CheckpointError, match=message) as info:
        import_format("sbi", bad, "sbi")
    assert str(bad) in str(info.value)


def test_truncated_file_is_named(sbi_file: tuple[Path, Detector], tmp_path: Path) -> None:
    data = sbi_file[0].read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.tar cannot be read"):
        import_format("sbi", cut, "sbi")


@pytest.mark.parametrize("fmt", ["selimsef", "icpr2020dfdc", "deepfakebench"])
def test_other_importers_refuse_an_sbi_file(
    sbi_file: tuple[Path, Detector], tmp_path: Path, fmt: str
) -> None:
    path = sbi_file[0]
    # As SBI saves it, the file's top-level keys are named; as a bare state dict, its own keys.
    with pytest.raises(CheckpointError, match=r"top-level keys are: epoch, model, optimizer"):
        import_format(fmt, path, "wrong")
    bare = tmp_path / "sbi_bare.pth"
    torch.save(torch.load(path, weights_only=True)["model"], bare)
    with pytest.raises(CheckpointError, match=r"keys begin net\._conv_stem\.weight") as info:
        import_format(fmt, bare, "wrong")
    assert str(bare) in str(info.value)


def test_a_wrong_variant_is_refused(sbi_file: tuple[Path, Detector]) -> None:
    with pytest.raises(CheckpointError, match=r"FFraw\.tar.*'efficientnet-b7'"):
        import_format("sbi", sbi_file[0], "sbi", "efficientnet-b7")
