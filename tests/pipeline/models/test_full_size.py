"""The full-size ensemble of the paper (slow: about a minute to build, calibrate and export)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.media import load_image
from pipeline.models import Ensemble, InferenceSettings, ModelDirectory

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> ModelDirectory:
    directory = ModelDirectory(tmp_path_factory.mktemp("paper"))
    directory.init("paper")
    return directory


def test_full_size_ensemble_backends_agree(model_dir: ModelDirectory, shared_data: Path) -> None:
    crops = [
        load_image(shared_data / "deepfake" / name)
        for name in ("dfdc_crop_abarnvbtwb-000-00.png", "dfdc_crop_aapnvogymq-004-01.png")
    ]
    eager = Ensemble.load(
        InferenceSettings(model_dir=model_dir.root, backend="torch", device="cpu")
    )
    assert [m.spec.input_size for m in eager.members] == [300] * 5
    a = eager.predict(crops)
    assert a.member_probabilities.shape == (2, 5)
    assert np.isfinite(a.member_probabilities).all()
    assert len(eager.warnings()) == 1 and "untrained" in eager.warnings()[0]
    for backend in ("onnx", "openvino"):
        fast = Ensemble.load(
            InferenceSettings(model_dir=model_dir.root, backend=backend, device="cpu")
        )
        assert {m.info.backend for m in fast.members} == {backend}
        b = fast.predict(crops)
        # The bar for the fast path: probabilities equal to within 1e-4.
        np.testing.assert_allclose(a.probability, b.probability, atol=1e-4, err_msg=backend)
        np.testing.assert_allclose(
            a.member_probabilities, b.member_probabilities, atol=1e-4, err_msg=backend
        )
        single = np.concatenate([fast.predict([c]).probability for c in crops])
        np.testing.assert_allclose(single, b.probability, atol=1e-4, err_msg=backend)
