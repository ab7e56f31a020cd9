import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import BadInputError, ModelError
from pipeline.models import Ensemble, EnsembleModule, InferenceSettings, Member, ModelDirectory
from pipeline.models.backends import OnnxRunner, OpenVinoRunner, weights_path
from pipeline.models.member import sigmoid
from pipeline.models.preprocess import crops_to_unit_batch, normalise
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


@pytest.fixture(scope="module")
def openvino_ensemble(model_dir: ModelDirectory) -> Ensemble:
    return Ensemble.load(
        InferenceSettings(model_dir=model_dir.root, backend="openvino", device="cpu")
    )


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


def assert_batched_equals_one_by_one(
    ensemble: Ensemble, crops: list[np.ndarray], atol: float
) -> None:
    """``ensemble.settings.batch_size`` faces per pass give what one face per pass gives."""
    batched = ensemble.predict(crops)
    single = [ensemble.predict([c]) for c in crops]
    np.testing.assert_allclose(
        batched.member_probabilities,
        np.concatenate([s.member_probabilities for s in single]),
        atol=atol,
    )


def test_batched_equals_one_by_one(torch_ensemble: Ensemble) -> None:
    torch_ensemble.settings.batch_size = 4
    assert_batched_equals_one_by_one(torch_ensemble, faces(7, seed=2), PROB_ATOL)


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


# The bar for the fast CPU path: probabilities equal to eager within 1e-4 (checked on the
# full-size ensemble in test_full_size.py).
FAST_ATOL = 1e-4


def eager_probabilities(net: torch.nn.Module, x: torch.Tensor, batch_size: int) -> np.ndarray:
    with torch.inference_mode():
        logits = [net(x[i : i + batch_size]).numpy() for i in range(0, len(x), batch_size)]
    return sigmoid(np.concatenate(logits))


def test_openvino_backend_equals_eager(
    torch_ensemble: Ensemble, openvino_ensemble: Ensemble
) -> None:
    """OpenVINO is as close to the exact (float64 eager) answer as float32 eager is.

    The tiny fixture's DETR-sine member is ill-conditioned in float32: eager itself moves by up to
    ~3e-3 in probability between batch sizes (measured), so a direct 1e-4 comparison of two float32
    backends would test luck. Against float64 the bound is tight and a real bug (wrong
    normalisation, swapped channels, a mis-ordered batch, bf16 inference) fails it by orders of
    magnitude.
    """
    assert {m.info.backend for m in openvino_ensemble.members} == {"openvino"}
    crops = faces(8, seed=7)
    unit = crops_to_unit_batch(crops, 64, torch.device("cpu"))
    fast = openvino_ensemble.predict(crops).member_probabilities
    for j, member in enumerate(torch_ensemble.members):
        x = normalise(unit, member.spec.mean, member.spec.std)
        exact = eager_probabilities(copy.deepcopy(member.net).double(), x.double(), len(x))
        eager_err = max(
            float(np.abs(eager_probabilities(member.net, x, bs) - exact).max()) for bs in (1, 8)
        )
        fast_err = float(np.abs(fast[:, j] - exact).max())
        assert fast_err <= max(2 * eager_err, FAST_ATOL), (member.name, fast_err, eager_err)


def test_openvino_batched_equals_one_by_one(
    openvino_ensemble: Ensemble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openvino_ensemble.settings, "batch_size", 4)
    assert_batched_equals_one_by_one(openvino_ensemble, faces(7, seed=8), FAST_ATOL)


def test_openvino_shares_the_onnx_export(
    model_dir: ModelDirectory, onnx_ensemble: Ensemble, openvino_ensemble: Ensemble
) -> None:
    onnx_files = {m.runner.path for m in onnx_ensemble.members}  # type: ignore[attr-defined]
    assert {m.runner.path for m in openvino_ensemble.members} == onnx_files  # type: ignore[attr-defined]
    assert any((model_dir.cache_dir / "openvino").iterdir())  # compiled blobs for later loads


def test_auto_backend_is_onnx_runtime_on_cpu(model_dir: ModelDirectory) -> None:
    settings = InferenceSettings(model_dir=model_dir.root, device="cpu", members=["m1_effb4"])
    assert settings.resolved_backend() == "onnx"
    assert Ensemble.load(settings).members[0].info.backend == "onnx"


def test_members_side_by_side_equal_members_in_turn(model_dir: ModelDirectory) -> None:
    """Two workers scoring members concurrently put every member's scores in its own column,
    for every chunk: bit for bit what one worker gives with the same single-thread sessions."""
    common = dict(model_dir=model_dir.root, backend="onnx", device="cpu", onnx_threads=1)
    in_turn = Ensemble.load(InferenceSettings(**common, member_workers=1, batch_size=3))
    side_by_side = Ensemble.load(InferenceSettings(**common, member_workers=2, batch_size=3))
    assert (in_turn.workers, side_by_side.workers) == (1, 2)
    crops = faces(7, seed=9)
    a, b = in_turn.predict(crops), side_by_side.predict(crops)
    np.testing.assert_array_equal(a.member_probabilities, b.member_probabilities)
    np.testing.assert_array_equal(a.probability, b.probability)
    assert b.member_names == in_turn.member_names
    side_by_side.close()


@pytest.mark.parametrize(
    ("cores", "backend", "member_workers", "onnx_threads", "expected"),
    [
        (2, "onnx", 0, 0, (2, 1)),  # this VM: two members at a time, one thread each
        (16, "onnx", 0, 0, (5, 3)),  # never more workers than members
        (16, "openvino", 0, 0, (5, 3)),
        (4, "onnx", 1, 0, (1, 4)),  # in turn, each member on every core
        (4, "onnx", 2, 1, (2, 1)),  # explicit threads win
        (8, "torch", 0, 0, (1, 0)),  # torch has its own intra-op pool
    ],
)
def test_cores_are_divided_among_member_workers(
    cores: int,
    backend: str,
    member_workers: int,
    onnx_threads: int,
    expected: tuple[int, int],
) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(cores)
    try:
        settings = InferenceSettings(
            device="cpu",
            backend=backend,  # type: ignore[arg-type]
            member_workers=member_workers,
            onnx_threads=onnx_threads,
        )
        got = (settings.member_workers_for(5), settings.runtime_threads_for(5))
    finally:
        torch.set_num_threads(before)
    assert got == expected


def test_member_sessions_get_their_share_of_the_cores(model_dir: ModelDirectory) -> None:
    ensemble = Ensemble.load(
        InferenceSettings(model_dir=model_dir.root, backend="onnx", device="cpu", member_workers=2)
    )
    threads = max(1, torch.get_num_threads() // ensemble.workers)
    for member in ensemble.members:
        opts = member.runner.session.get_session_options()  # type: ignore[attr-defined]
        assert opts.intra_op_num_threads == threads
    ensemble.close()


def test_openvino_loads_when_its_cache_cannot_be_written(
    tmp_path: Path, openvino_ensemble: Ensemble, caplog: pytest.LogCaptureFixture
) -> None:
    member = openvino_ensemble.members[0]
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache folder would go")
    runner = OpenVinoRunner(member.runner.path, cache_dir=blocked / "openvino")  # type: ignore[attr-defined]
    assert "not writable" in caplog.text
    x = torch.rand(2, 3, 64, 64)
    np.testing.assert_array_equal(runner(x), member.runner(x))


@pytest.mark.parametrize("runner", [OnnxRunner, OpenVinoRunner])
def test_missing_exported_file_is_a_model_error(tmp_path: Path, runner: type) -> None:
    missing = tmp_path / "m1_effb4-0123.onnx"
    with pytest.raises(ModelError, match=re.escape(str(missing))):
        runner(missing)


def test_onnx_export_is_cached_by_weights(
    model_dir: ModelDirectory, onnx_ensemble: Ensemble
) -> None:
    files = sorted(model_dir.cache_dir.glob("*.onnx"))
    assert len(files) == 5
    # Each graph's weights in a file beside it (read without a protobuf copy; see export_onnx).
    for f in files:
        assert weights_path(f).stat().st_size > 4 * f.stat().st_size
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


def test_exported_members_hold_their_weights_once(
    model_dir: ModelDirectory, torch_ensemble: Ensemble
) -> None:
    """A member on an exported runtime keeps no torch network until one is asked for (attacks,
    training), and the one it then builds has the weights of the file it runs."""
    fresh = Ensemble.load(InferenceSettings(model_dir=model_dir.root, backend="onnx", device="cpu"))
    assert not any(m.has_network for m in fresh.members)
    crops = faces(3, seed=8)
    pred = fresh.predict(crops)
    assert not any(m.has_network for m in fresh.members)
    for j, member in enumerate(fresh.members):
        built, loaded = member.net.state_dict(), torch_ensemble.members[j].net.state_dict()
        assert built.keys() == loaded.keys()
        for key, value in built.items():
            torch.testing.assert_close(value, loaded[key], rtol=0, atol=0, msg=key)
        assert member.has_network
    np.testing.assert_allclose(
        pred.member_probabilities,
        torch_ensemble.predict(crops).member_probabilities,
        atol=PROB_ATOL,
    )


def test_recomputed_members_give_the_same_gradients(torch_ensemble: Ensemble) -> None:
    members = torch_ensemble.members
    nets, specs = [m.net for m in members], [m.spec for m in members]
    x = crops_to_unit_batch(faces(2, seed=9), 64, torch.device("cpu"))
    grads = []
    for recompute in (False, True):
        module = EnsembleModule(nets, specs, 64, recompute=recompute).eval()
        xi = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(module(xi).log().sum(), xi)
        grads.append(grad)
    assert float(grads[0].abs().max()) > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-9)
