from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import BadInputError
from pipeline.models import Ensemble, InferenceSettings, Member, ModelDirectory
from pipeline.models.preprocess import crops_to_unit_batch
from tests.support.models import make_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> ModelDirectory:
    return make_model_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def torch_ensemble(model_dir: ModelDirectory) -> Ensemble:
    return Ensemble.load(InferenceSettings(model_dir=model_dir.root, backend="torch", device="cpu"))


@pytest.fixture(scope="module")
def onnx_ensemble(model_dir: ModelDirectory) -> Ensemble:
    return Ensemble.load(InferenceSettings(model_dir=model_dir.root, backend="onnx", device="cpu"))


def faces(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = rng.integers(24, 140, size=2)
        # Smooth random images, closer to faces than white noise.
        small = rng.integers(0, 256, size=(4, 4, 3)).astype(np.float32)
        img = (
            torch.nn.functional.interpolate(
                torch.from_numpy(small).permute(2, 0, 1)[None],
                size=(int(h), int(w)),
                mode="bilinear",
            )[0]
            .permute(1, 2, 0)
            .numpy()
        )
        out.append(np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8))
    return out


def test_weights_are_trained_and_scores_vary(torch_ensemble: Ensemble) -> None:
    assert {i.weights for i in torch_ensemble.infos} == {"trained"}
    assert torch_ensemble.warnings() == []
    pred = torch_ensemble.predict(faces(6))
    assert pred.probability.std() > 1e-3  # the fixture's heads make scores differ per face


def test_ensemble_probability_is_the_mean_of_members(torch_ensemble: Ensemble) -> None:
    crops = faces(5, seed=1)
    pred = torch_ensemble.predict(crops)
    assert pred.member_probabilities.shape == (5, 5)
    np.testing.assert_allclose(pred.probability, pred.member_probabilities.mean(axis=1))
    for j, member in enumerate(torch_ensemble.members):
        np.testing.assert_allclose(
            member.predict(crops), pred.member_probabilities[:, j], atol=1e-6
        )
    assert ((pred.probability > 0) & (pred.probability < 1)).all()


# float32 convolutions pick different kernels for different batch sizes and backends, so scores
# agree to float32 rounding amplified through ~100 layers, not bit for bit; 5e-4 in probability is
# far below any decision-relevant difference and far above what a real bug (wrong normalisation,
# swapped channels, a mis-ordered batch) produces.
PROB_ATOL = 5e-4


def test_batched_equals_one_by_one(torch_ensemble: Ensemble) -> None:
    crops = faces(7, seed=2)
    torch_ensemble.settings.batch_size = 4
    batched = torch_ensemble.predict(crops)
    single = [torch_ensemble.predict([c]) for c in crops]
    np.testing.assert_allclose(
        batched.member_probabilities,
        np.concatenate([s.member_probabilities for s in single]),
        atol=PROB_ATOL,
    )


def test_empty_input_gives_empty_output(torch_ensemble: Ensemble) -> None:
    pred = torch_ensemble.predict([])
    assert pred.probability.shape == (0,)
    assert pred.member_probabilities.shape == (0, 5)


def test_bad_crop_is_a_typed_error(torch_ensemble: Ensemble) -> None:
    with pytest.raises(BadInputError, match="face crop 1"):
        torch_ensemble.predict([faces(1)[0], np.zeros((10, 10), dtype=np.uint8)])


def test_onnx_backend_equals_eager(torch_ensemble: Ensemble, onnx_ensemble: Ensemble) -> None:
    assert {m.info.backend for m in onnx_ensemble.members} == {"onnx"}
    crops = faces(6, seed=3)
    a, b = torch_ensemble.predict(crops), onnx_ensemble.predict(crops)
    np.testing.assert_allclose(a.member_probabilities, b.member_probabilities, atol=PROB_ATOL)
    np.testing.assert_allclose(a.probability, b.probability, atol=PROB_ATOL)


def test_onnx_export_is_cached_by_weights(
    model_dir: ModelDirectory, onnx_ensemble: Ensemble
) -> None:
    files = sorted(model_dir.cache_dir.glob("*.onnx"))
    assert len(files) == 5
    again = Ensemble.load(InferenceSettings(model_dir=model_dir.root, backend="onnx", device="cpu"))
    assert sorted(model_dir.cache_dir.glob("*.onnx")) == files
    assert {m.runner.path for m in again.members} == set(files)  # type: ignore[attr-defined]


def test_preprocessing_comes_from_the_spec(torch_ensemble: Ensemble) -> None:
    crop = faces(1)[0]
    member = torch_ensemble.members[0]
    unit = crops_to_unit_batch([crop], member.spec.input_size, torch.device("cpu"))
    assert unit.shape == (1, 3, member.spec.input_size, member.spec.input_size)
    assert float(unit.min()) >= 0.0 and float(unit.max()) <= 1.0
    mean = torch.tensor(member.spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(member.spec.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = member.net((unit - mean) / std).numpy()
    np.testing.assert_allclose(member.logits(unit), expected, atol=1e-6)


def test_differentiable_module_matches_and_gives_gradients(torch_ensemble: Ensemble) -> None:
    module = torch_ensemble.torch_module()
    crops = faces(3, seed=4)
    x = crops_to_unit_batch(crops, 64, torch.device("cpu")).requires_grad_(True)
    prob = module(x)
    np.testing.assert_allclose(
        prob.detach().numpy(), torch_ensemble.predict(crops).probability, atol=1e-5
    )
    prob.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_member_subset(model_dir: ModelDirectory) -> None:
    settings = InferenceSettings(
        model_dir=model_dir.root, backend="torch", device="cpu", members=["m5_effv2m", "m1_effb4"]
    )
    ensemble = Ensemble.load(settings)
    assert ensemble.member_names == ("m5_effv2m", "m1_effb4")


def test_member_loads_alone(model_dir: ModelDirectory, torch_ensemble: Ensemble) -> None:
    spec = model_dir.load().member("m3_effb4_detr_learned")
    member = Member.load(spec, model_dir, InferenceSettings(backend="torch", device="cpu"))
    crops = faces(2, seed=5)
    np.testing.assert_allclose(
        member.predict(crops), torch_ensemble.predict(crops).member_probabilities[:, 2], atol=1e-6
    )


def test_untrained_ensemble_is_reproducible_across_loads(tmp_path: Path) -> None:
    directory = ModelDirectory(tmp_path / "m")
    directory.init("tiny")
    settings = InferenceSettings(model_dir=directory.root, backend="torch", device="cpu")
    crops = faces(2, seed=6)
    a = Ensemble.load(settings).predict(crops)
    b = Ensemble.load(settings).predict(crops)
    np.testing.assert_array_equal(a.member_probabilities, b.member_probabilities)
