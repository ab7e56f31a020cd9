"""DeepfakeBench importer against its ``efficientnetb4`` detector (efficientnet_pytorch 0.7.1).

The reference reproduces networks/efficientnetb4.py (unpadded stem, ``_fc = Identity``,
``last_layer``, ``mode: Original`` without dropout) inside the detector's ``backbone`` attribute
(detectors/efficientnetb4_detector.py), saved as trainer.py saves it: the plain
``model.state_dict()`` (with ``module.`` when trained with DDP).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
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
from tests.pipeline.models.importers.reference_weights import normalise as reference_normalise

SIZE = 256
HALF = (0.5, 0.5, 0.5)


class EfficientNetB4Backbone(nn.Module):
    """networks/efficientnetb4.py ``EfficientNetB4`` (num_classes 2, inc 3, no dropout)."""

    def __init__(self) -> None:
        super().__init__()
        self.efficientnet = EfficientNet.from_name("efficientnet-b4")
        self.efficientnet._conv_stem = nn.Conv2d(3, 48, kernel_size=3, stride=2, bias=False)
        self.efficientnet._fc = nn.Identity()
        self.last_layer = nn.Linear(1792, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.efficientnet.extract_features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1)).view(x.size(0), -1)
        return self.last_layer(x)


class EfficientDetector(nn.Module):
    """detectors/efficientnetb4_detector.py: the backbone as ``self.backbone``; the loss has no
    parameters. ``prob = softmax(pred)[:, 1]``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = EfficientNetB4Backbone()

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)


@pytest.fixture(scope="module")
def dfb_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EfficientDetector]:
    detector = EfficientDetector()
    randomise(detector, reference_normalise(calibration_batch(SIZE), HALF, HALF), seed=5)
    assert len(detector.state_dict()) == 706
    path = tmp_path_factory.mktemp("dfb") / "effnb4_best.pth"
    torch.save(detector.state_dict(), path)
    return path, detector


@pytest.mark.parametrize("ddp", [False, True], ids=["plain", "ddp"])
def test_effnb4_scores_as_upstream(
    dfb_file: tuple[Path, EfficientDetector], tmp_path: Path, ddp: bool
) -> None:
    path, detector = dfb_file
    if ddp:  # trainer.py with ddp: the DDP-wrapped model's keys start with "module."
        path = tmp_path / "ckpt_best.pth"
        torch.save({f"module.{k}": v for k, v in detector.state_dict().items()}, path)
    member = import_format("deepfakebench", path, "dfb_effnb4")
    spec = member.spec
    assert (spec.input_size, spec.mean, spec.std, spec.crop_margin) == (SIZE, HALF, HALF, 1.3)
    assert (spec.output, spec.num_classes, spec.fake_index) == ("softmax", 2, 1)
    assert spec.options == {"static_pad_size": 380, "stem": "unpadded"}
    assert spec.licence == "CC BY-NC 4.0"
    net = build_network(spec)
    net.load_state_dict(member.state, strict=True)
    x = faces(SIZE)
    with torch.no_grad():
        # abstract_dataset.py: ToTensor, Normalize(0.5, 0.5); the detector's softmax[:, 1].
        expected = detector(reference_normalise(x, HALF, HALF)).softmax(dim=1)[:, 1]
        ours = torch.sigmoid(net(normalise(x, spec.mean, spec.std)))
    diff = assert_close_probabilities(expected, ours)
    print(f"DeepfakeBench effnb4 ({'ddp' if ddp else 'plain'}) max |P(fake) difference| {diff:.2e}")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            {"backbone.efficientnet._blocks.31._bn2.running_mean": None},
            r"missing keys: backbone\.efficientnet\._blocks\.31\._bn2\.running_mean",
        ),
        (
            {"backbone.efficientnet._fc.weight": torch.zeros(1000, 1792)},
            r"unexpected keys: backbone\.efficientnet\._fc\.weight",
        ),
        (
            {"backbone.efficientnet._conv_stem.weight": torch.zeros(32, 3, 3, 3)},
            r"shape mismatch: backbone\.efficientnet\._conv_stem\.weight \(32, 3, 3, 3\)",
        ),
    ],
    ids=["missing", "extra", "shape"],
)
def test_key_mismatches_are_named(
    dfb_file: tuple[Path, EfficientDetector],
    tmp_path: Path,
    edit: dict[str, Tensor | None],
    message: str,
) -> None:
    state = torch.load(dfb_file[0], weights_only=True)
    for key, value in edit.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=message) as info:
        import_format("deepfakebench", bad, "dfb")
    assert str(bad) in str(info.value)


def test_other_detectors_and_broken_files_are_refused(
    dfb_file: tuple[Path, EfficientDetector], tmp_path: Path
) -> None:
    path = dfb_file[0]
    with pytest.raises(CheckpointError, match=r"efficientnetb4 detector \(key backbone\.eff"):
        import_format("deepfakebench", path, "dfb", "xception")
    with pytest.raises(CheckpointError, match=r"'ucf' is not supported"):
        import_format("deepfakebench", path, "dfb", "ucf")
    # Another DeepfakeBench detector (MesoNet's keys) and another family's file.
    meso = tmp_path / "meso4_best.pth"
    torch.save(
        {"backbone.conv1.bias": torch.zeros(8), "backbone.fc1.weight": torch.zeros(16)}, meso
    )
    with pytest.raises(
        CheckpointError, match=r"meso4_best\.pth is not a supported.*begin backbone\.conv1\.bias"
    ):
        import_format("deepfakebench", meso, "dfb")
    with pytest.raises(CheckpointError, match=r"effnb4_best\.pth is not an icpr2020dfdc.*backbone"):
        import_format("icpr2020dfdc", path, "icpr")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"cut\.pth cannot be read"):
        import_format("deepfakebench", cut, "dfb")
