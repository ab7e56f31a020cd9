from pathlib import Path

import pytest
import torch

from pipeline.errors import CheckpointError, UntrainedWeightsError
from pipeline.models import Ensemble, InferenceSettings, ModelDirectory
from pipeline.models.checkpoint import file_sha256, load_checkpoint, write_state_dict
from pipeline.models.networks import build_network
from pipeline.models.spec import tiny_members
from tests.support.models import make_model_dir, trained_checkpoint


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_restores_every_tensor(tmp_path: Path, suffix: str) -> None:
    spec = tiny_members()[2]
    path = trained_checkpoint(spec, tmp_path / f"m{suffix}", seed=3)
    net = build_network(spec)
    sha = load_checkpoint(net, path, file_sha256(path))
    assert sha == file_sha256(path)
    expected = torch.load(path) if suffix == ".pt" else None
    if expected is not None:
        for key, value in net.state_dict().items():
            assert torch.equal(value, expected[key]), key


def test_sha256_mismatch_names_the_file(tmp_path: Path) -> None:
    spec = tiny_members()[0]
    path = trained_checkpoint(spec, tmp_path / "m1.pt")
    with pytest.raises(CheckpointError, match=r"m1\.pt has sha256 .* expects 0{64}"):
        load_checkpoint(build_network(spec), path, "0" * 64)


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    spec = tiny_members()[1]
    state = build_network(spec).state_dict()
    state.pop("heads.0.query_embed.weight")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(build_network(spec), path, None)
    message = str(info.value)
    assert "bad.pt" in message
    assert "missing keys: heads.0.query_embed.weight" in message
    assert "unexpected keys: extra.weight" in message


def test_a_checkpoint_of_another_member_is_refused(tmp_path: Path) -> None:
    specs = tiny_members()
    path = trained_checkpoint(specs[1], tmp_path / "sine.pt")
    with pytest.raises(CheckpointError, match=r"missing keys: heads.0.pos.col_embed.weight"):
        load_checkpoint(build_network(specs[2]), path, None)  # m3 has learned positions


def test_garbage_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"garbage\.pt cannot be read"):
        load_checkpoint(build_network(tiny_members()[0]), path, None)


def test_manifest_sha_is_checked_when_the_ensemble_loads(tmp_path: Path) -> None:
    directory = make_model_dir(tmp_path / "models")
    spec = directory.load().members[0]
    path = directory.checkpoint_path(spec)
    assert path is not None
    write_state_dict(build_network(spec), path)  # replaced behind the manifest's back
    with pytest.raises(CheckpointError, match=r"m1_effb4\.pt has sha256"):
        Ensemble.load(InferenceSettings(model_dir=directory.root, backend="torch", device="cpu"))


def test_missing_checkpoint_file_named_in_manifest_is_an_error(tmp_path: Path) -> None:
    directory = make_model_dir(tmp_path / "models")
    spec = directory.load().members[3]
    path = directory.checkpoint_path(spec)
    assert path is not None
    path.unlink()
    with pytest.raises(CheckpointError, match=r"m4_effb4_detr_multiscale\.pt does not exist"):
        Ensemble.load(InferenceSettings(model_dir=directory.root, backend="torch", device="cpu"))


def test_untrained_members_run_but_say_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = ModelDirectory(tmp_path / "models")
    directory.init("tiny")
    ensemble = Ensemble.load(
        InferenceSettings(model_dir=directory.root, backend="torch", device="cpu")
    )
    assert {info.weights for info in ensemble.infos} == {"random-init"}
    assert "RANDOM weights" in caplog.text
    assert ensemble.warnings() and "untrained" in ensemble.warnings()[0]


def test_require_trained_weights_turns_the_fallback_into_an_error(tmp_path: Path) -> None:
    directory = ModelDirectory(tmp_path / "models")
    directory.init("tiny")
    settings = InferenceSettings(
        model_dir=directory.root, backend="torch", device="cpu", require_trained_weights=True
    )
    with pytest.raises(UntrainedWeightsError, match="m1_effb4 has no trained checkpoint"):
        Ensemble.load(settings)


def test_import_refuses_a_checkpoint_that_does_not_fit(tmp_path: Path) -> None:
    directory = ModelDirectory(tmp_path / "models")
    directory.init("tiny")
    wrong = trained_checkpoint(tiny_members()[1], tmp_path / "m2.pt")
    with pytest.raises(CheckpointError):
        directory.import_checkpoint("m5_effv2m", wrong, version="1", trained_on="x")
    assert directory.load().member("m5_effv2m").checkpoint is None
