"""Members beyond the paper's five: output conventions, named ensembles, per-member
preprocessing (input size, crop margin, resize rule, weight) in every backend and in the
differentiable module the attacks use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import CheckpointError, ConfigError
from pipeline.models import Ensemble, InferenceSettings, ModelDirectory
from pipeline.models.importers import ImportedMember
from pipeline.models.manifest import Manifest
from pipeline.models.member import (
    combine,
    expected_infos,
    member_crops,
    models_digest,
    pin_ensemble,
    sigmoid,
    untrained_warning,
)
from pipeline.models.outputs import fake_logit
from pipeline.models.preprocess import crops_to_unit_batch, normalise
from pipeline.models.registry import build_network
from pipeline.models.spec import MemberSpec, tiny_members
from tests.support.models import spread_head


def spec(**kw: object) -> MemberSpec:
    base: dict[str, object] = {"name": "m", "architecture": "efficientnet", "backbone": "x"}
    return MemberSpec.model_validate({**base, **kw})


# ---------------------------------------------------------------------------------------------
# Output conventions


def test_fake_logit_follows_the_output_convention() -> None:
    z = torch.tensor([[0.3, -1.2, 2.0], [1.0, 0.5, -0.5]])
    softmax = z.softmax(dim=1)
    for k in range(3):
        s = spec(output="softmax", num_classes=3, fake_index=k)
        assert torch.allclose(torch.sigmoid(fake_logit(z, s)), softmax[:, k], atol=1e-6)
    two = z[:, :2]
    s = spec(output="softmax", num_classes=2, fake_index=0)
    assert torch.allclose(torch.sigmoid(fake_logit(two, s)), two.softmax(1)[:, 0], atol=1e-6)
    one = torch.tensor([[0.7], [-2.0]])
    assert torch.equal(fake_logit(one, spec(output="real-logit")), -one[:, 0])
    assert torch.equal(fake_logit(one, spec()), one[:, 0])


def test_spec_refuses_inconsistent_outputs_and_unknown_architectures() -> None:
    with pytest.raises(ValueError, match="softmax output needs"):
        spec(output="softmax", num_classes=2, fake_index=2)
    with pytest.raises(ValueError, match="one logit"):
        spec(num_classes=2)
    with pytest.raises(ValueError, match="unknown architecture 'resnet9000'"):
        spec(architecture="resnet9000")


def test_weighted_combination() -> None:
    probs = np.array([[0.2, 0.8], [0.5, 0.5]])
    assert np.allclose(combine(probs, [1.0, 1.0]), [0.5, 0.5])
    assert np.allclose(combine(probs, [3.0, 1.0]), [0.35, 0.5])
    assert combine(np.zeros((0, 2)), [1.0, 1.0]).shape == (0,)


def test_member_crops_are_centred_squares_of_the_own_margin() -> None:
    crop = np.arange(26 * 26 * 3, dtype=np.uint8).reshape(26, 26, 3)
    (same,) = member_crops([crop], 1.3, 1.3)
    assert same is crop
    (inner,) = member_crops([crop], 1.0, 1.3)
    assert inner.shape == (20, 20, 3)
    assert np.array_equal(inner, crop[3:23, 3:23])


def test_letterbox_keeps_the_aspect_ratio() -> None:
    wide = np.full((10, 20, 3), 255, dtype=np.uint8)
    x = crops_to_unit_batch([wide], 40, torch.device("cpu"), "letterbox")[0]
    assert torch.all(x[:, :10] == 0) and torch.all(x[:, 30:] == 0)
    assert torch.allclose(x[:, 10:30], torch.ones_like(x[:, 10:30]))
    stretched = crops_to_unit_batch([wide], 40, torch.device("cpu"))[0]
    assert torch.allclose(stretched, torch.ones_like(stretched))


# ---------------------------------------------------------------------------------------------
# A mixed ensemble: two input sizes, two margins, a softmax member, weights


def mixed_specs() -> list[MemberSpec]:
    paper = tiny_members(64)[0]
    other = MemberSpec(
        name="softmax_b0",
        architecture="timm",
        backbone="efficientnet_b0",
        input_size=48,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        output="softmax",
        num_classes=2,
        fake_index=0,
        crop_margin=1.6,
        resize="letterbox",
        weight=2.0,
    )
    return [paper, other]


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory: pytest.TempPathFactory) -> ModelDirectory:
    directory = ModelDirectory(tmp_path_factory.mktemp("mixed"))
    for i, s in enumerate(mixed_specs()):
        net = spread_head(build_network(s), seed=i)
        if s.output == "softmax":  # spread_head leaves a 2-class head near zero: widen it
            with torch.no_grad():
                net.body.classifier.weight.mul_(8.0)
        state = {k: v.clone() for k, v in net.state_dict().items()}
        directory.add_member(
            ImportedMember(s, state), version="1", trained_on="test", ensembles=("mixed",)
        )
    return directory


def faces(n: int, size: int = 24, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = torch.from_numpy(rng.uniform(0, 255, (3, 4, 4)).astype(np.float32))[None]
        img = torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear")[0]
        out.append(img.permute(1, 2, 0).numpy().clip(0, 255).astype(np.uint8))
    return out


def load(directory: ModelDirectory, backend: str) -> Ensemble:
    return Ensemble.load(
        InferenceSettings(model_dir=directory.root, backend=backend, ensemble="mixed")  # type: ignore[arg-type]
    )


def test_mixed_ensemble_follows_each_members_spec(mixed_dir: ModelDirectory) -> None:
    ensemble = load(mixed_dir, "torch")
    assert ensemble.name == "mixed"
    assert ensemble.crop_margin == pytest.approx(1.6)
    crops = faces(5)
    pred = ensemble.predict(crops)
    # By hand: each member's centred square, resized and normalised by its own spec.
    for j, member in enumerate(ensemble.members):
        s = member.spec
        own = member_crops(crops, s.crop_margin, 1.6)
        x = normalise(
            crops_to_unit_batch(own, s.input_size, torch.device("cpu"), s.resize), s.mean, s.std
        )
        with torch.inference_mode():
            expected = sigmoid(member.net(x).numpy())
        np.testing.assert_allclose(pred.member_probabilities[:, j], expected, atol=1e-6)
    np.testing.assert_allclose(
        pred.probability, (pred.member_probabilities @ [1.0, 2.0]) / 3.0, atol=1e-12
    )
    assert np.ptp(pred.member_probabilities[:, 1]) > 1e-3, "scores must vary from face to face"


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_mixed_ensemble_agrees_across_backends(mixed_dir: ModelDirectory, backend: str) -> None:
    crops = faces(4, size=37, seed=3)
    ref = load(mixed_dir, "torch").predict(crops)
    other = load(mixed_dir, backend).predict(crops)
    np.testing.assert_allclose(other.member_probabilities, ref.member_probabilities, atol=1e-4)
    np.testing.assert_allclose(other.probability, ref.probability, atol=1e-4)


def test_differentiable_module_matches_the_ensemble(mixed_dir: ModelDirectory) -> None:
    ensemble = load(mixed_dir, "torch")
    # Crops smaller than every input size: resizing up is the same bilinear map in both paths.
    crops = faces(3, size=26, seed=5)
    pred = ensemble.predict(crops)
    module = ensemble.torch_module(input_size=26)
    x = crops_to_unit_batch(crops, 26, torch.device("cpu")).requires_grad_(True)
    prob = module(x)
    np.testing.assert_allclose(prob.detach().numpy(), pred.probability, atol=1e-5)
    prob.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


# ---------------------------------------------------------------------------------------------
# Named ensembles


def test_paper_preset_lists_mesonet_without_weights(tmp_path: Path) -> None:
    directory = ModelDirectory(tmp_path)
    manifest = directory.init("paper")
    assert list(manifest.ensembles)[:3] == ["paper", "mesonet", "open"]
    assert len(manifest.ensembles["mesonet"]) == 4
    # Nothing trained anywhere: auto runs the paper's five (and says they are untrained).
    name, specs = manifest.resolve(directory)
    assert name == "paper" and len(specs) == 5


def test_ensemble_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = ModelDirectory(tmp_path)
    directory.init("paper")
    manifest = directory.load()
    monkeypatch.delenv("DFD_ENSEMBLE", raising=False)
    assert manifest.resolve(directory)[0] == "paper"
    monkeypatch.setenv("DFD_ENSEMBLE", "mesonet")
    assert manifest.resolve(directory)[0] == "mesonet"
    assert manifest.resolve(directory, ensemble="paper")[0] == "paper"
    assert [s.name for s in manifest.resolve(directory, "paper", ["m1_effb4"])[1]] == ["m1_effb4"]
    monkeypatch.delenv("DFD_ENSEMBLE")
    directory.use("mesonet")
    assert directory.load().resolve(directory)[0] == "mesonet"
    with pytest.raises(ConfigError, match="no ensemble named 'nope'"):
        directory.use("nope")
    monkeypatch.setenv("DFD_ENSEMBLE", "nope")
    with pytest.raises(ConfigError, match="no ensemble named 'nope'"):
        directory.load().resolve(directory)


def test_pinned_settings_survive_another_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = ModelDirectory(tmp_path)
    directory.init("paper")
    monkeypatch.setenv("DFD_ENSEMBLE", "mesonet")
    pinned = pin_ensemble(InferenceSettings(model_dir=tmp_path))
    assert pinned.ensemble == "mesonet" and pinned.members is not None
    monkeypatch.setenv("DFD_ENSEMBLE", "paper")  # a worker with other variables
    assert [i.name for i in expected_infos(pinned)] == pinned.members


def test_old_manifests_run_all_their_members(tmp_path: Path) -> None:
    members = [m.model_dump(mode="json", exclude_defaults=True) for m in tiny_members()]
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 1, "members": members}))
    directory = ModelDirectory(tmp_path)
    name, specs = directory.load().resolve(directory)
    assert name == "default" and len(specs) == 5


def test_manifest_refuses_ensembles_of_unknown_members() -> None:
    with pytest.raises(ValueError, match="unknown members"):
        Manifest(members=tiny_members(), ensembles={"x": ["m1_effb4", "ghost"]})


def test_a_member_that_does_not_fit_changes_nothing(tmp_path: Path) -> None:
    directory = ModelDirectory(tmp_path)
    directory.init("tiny")
    before = directory.manifest_path.read_bytes()
    s = tiny_members()[0].model_copy(update={"name": "extra"})
    state = dict(build_network(s).state_dict())
    state.pop(next(iter(state)))
    with pytest.raises(CheckpointError, match="missing keys"):
        directory.add_member(ImportedMember(s, state), version="1", trained_on="x")
    assert directory.manifest_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_rules_cover_weights_and_caveats(mixed_dir: ModelDirectory) -> None:
    infos = expected_infos(InferenceSettings(model_dir=mixed_dir.root, ensemble="mixed"))
    assert [i.weights for i in infos] == ["trained", "trained"]
    heavier = [i.__class__(**{**vars(i), "weight": 5.0}) for i in infos]
    assert models_digest(heavier) != models_digest(infos)
    noted = [i.__class__(**{**vars(i), "caveat": "old model"}) for i in infos]
    assert untrained_warning(noted) == ["old model"]
