"""selimsef (DFDC winner) importer against its ``DeepFakeClassifier``, saved as its training does.

The reference is training/zoo/classifiers.py ``DeepFakeClassifier("tf_efficientnet_b7_ns")`` on
timm 1.0.31's ``tf_efficientnet_b7`` (the same network as timm 0.4.12's ``_ns``, CHECKPOINTS.md
section 0), wrapped in ``DataParallel`` as in train_classifier.py so that its keys carry
``module.``, and saved with ``bce_best`` a ``numpy.float64`` as sklearn's ``log_loss`` returns.
EfficientNet-B7 at 380 is heavy on two cores: one face, batch norms calibrated at a lower size.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
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

SIZE = 380
#: Batch-norm calibration size: B7 in training mode at 380 would take most of a minute here.
CALIBRATION_SIZE = 160
FILE_NAME = "final_111_DeepFakeClassifier_tf_efficientnet_b7_ns_0_36"


class DeepFakeClassifier(nn.Module):
    """classifiers.py ``DeepFakeClassifier`` with the b7 encoder, built without the download."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder: Any = timm.create_model(
            "tf_efficientnet_b7", pretrained=False, drop_path_rate=0.2
        )
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(2560, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.encoder.forward_features(x)
        x = self.avg_pool(x).flatten(1)
        return self.fc(self.dropout(x))


def save_as_selimsef(model: nn.Module, path: Path, state_key: str = "state_dict") -> None:
    """train_classifier.py: ``torch.save({'epoch', 'state_dict', 'bce_best'})`` of the
    DataParallel-wrapped model (keys ``module.*``)."""
    wrapped = nn.DataParallel(model)  # on CPU it only wraps, which is what gives the prefix
    state = {"epoch": 37, state_key: wrapped.state_dict(), "bce_best": np.float64(0.1893)}
    torch.save(state, path)


@pytest.fixture(scope="module")
def selimsef_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DeepFakeClassifier]:
    model = DeepFakeClassifier()
    calibration = calibration_batch(CALIBRATION_SIZE)
    randomise(model, reference_normalise(calibration, IMAGENET_MEAN, IMAGENET_STD), seed=3)
    path = tmp_path_factory.mktemp("selimsef") / FILE_NAME
    save_as_selimsef(model, path)
    return path, model


def test_the_file_is_as_upstream_writes_it(selimsef_file: tuple[Path, nn.Module]) -> None:
    path, _ = selimsef_file
    # torch's default loader refuses the numpy scalar: the importer must allow-list it.
    with pytest.raises(pickle.UnpicklingError, match="numpy"):
        torch.load(path, weights_only=True)
    raw = torch.load(path, weights_only=False)
    assert isinstance(raw["bce_best"], np.float64)
    keys = list(raw["state_dict"])
    assert keys[0] == "module.encoder.conv_stem.weight" and "module.fc.weight" in keys
    assert "module.encoder.classifier.weight" in keys


def test_selimsef_scores_as_upstream(selimsef_file: tuple[Path, nn.Module]) -> None:
    path, reference = selimsef_file
    member = import_format("selimsef", path, "selimsef_111")
    spec = member.spec
    assert (spec.architecture, spec.backbone, spec.num_classes, spec.output) == (
        "timm",
        "tf_efficientnet_b7",
        1,
        "fake-logit",
    )
    assert (spec.input_size, spec.resize, spec.mean, spec.std) == (
        SIZE,
        "letterbox",
        IMAGENET_MEAN,
        IMAGENET_STD,
    )
    assert spec.crop_margin == pytest.approx(5 / 3) and spec.licence.startswith("MIT")
    assert not any(k.startswith("encoder.") for k in member.state)
    net = build_network(spec)
    net.load_state_dict(member.state, strict=True)
    x = faces(SIZE, count=1)
    with torch.no_grad():
        # kernel_utils.py: /255, ImageNet normalisation, sigmoid of the model's logit.
        expected = torch.sigmoid(reference(reference_normalise(x, IMAGENET_MEAN, IMAGENET_STD)))
        ours = torch.sigmoid(net(normalise(x, spec.mean, spec.std)))
    diff = assert_close_probabilities(expected[:, 0], ours)
    print(f"selimsef max |P(fake) difference| {diff:.2e}")


def _edited(path: Path, out: Path, drop: str | None = None, add: str | None = None) -> Path:
    raw = torch.load(path, weights_only=False)
    state = raw["state_dict"]
    if drop is not None:
        del state[drop]
    if add is not None:
        state[add] = torch.zeros(1)
    torch.save(raw, out)
    return out


def test_missing_and_extra_keys_are_named(
    selimsef_file: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    path = selimsef_file[0]
    missing = _edited(path, tmp_path / "missing", drop="module.encoder.blocks.3.2.bn2.running_var")
    with pytest.raises(
        CheckpointError, match=r"missing keys: encoder\.blocks\.3\.2\.bn2\.running_var"
    ):
        import_format("selimsef", missing, "selimsef")
    extra = _edited(path, tmp_path / "extra", add="module.encoder.extra.weight")
    with pytest.raises(CheckpointError, match=r"unexpected keys: encoder\.extra\.weight") as info:
        import_format("selimsef", extra, "selimsef")
    assert str(extra) in str(info.value)


def test_an_sbi_state_in_a_selimsef_file_is_refused(tmp_path: Path) -> None:
    """The selimsef wrapping around another family's network (SBI's efficientnet_pytorch keys)."""
    sbi_like = {"net._conv_stem.weight": torch.zeros(48, 3, 3, 3), "net._fc.bias": torch.zeros(2)}
    path = tmp_path / "other"
    torch.save({"epoch": 1, "state_dict": sbi_like, "bce_best": np.float64(0.5)}, path)
    with pytest.raises(
        CheckpointError, match=r"no key encoder\.conv_stem\.weight.*net\._conv_stem"
    ) as info:
        import_format("selimsef", path, "selimsef")
    assert str(path) in str(info.value)


def test_truncated_file_and_wrong_variant(
    selimsef_file: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    path = selimsef_file[0]
    cut = tmp_path / "cut"
    with path.open("rb") as f:
        cut.write_bytes(f.read(5_000_000))
    with pytest.raises(CheckpointError, match=r"cut cannot be read"):
        import_format("selimsef", cut, "selimsef")
    with pytest.raises(CheckpointError, match=r"not 'tf_efficientnet_b4_ns'"):
        import_format("selimsef", path, "selimsef", "tf_efficientnet_b4_ns")
