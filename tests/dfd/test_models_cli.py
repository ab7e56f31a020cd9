"""``dfd models fetch | use | import --format`` and scoring with real weights, as a user runs them:
real subprocesses, exit codes, one-line errors, and a model directory left as it was on failure."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.errors import CheckpointError, ConfigError, DownloadError
from pipeline.models import ModelDirectory
from pipeline.models.checkpoint import load_checkpoint
from pipeline.models.fetch import fetch_members
from pipeline.models.importers import import_format
from pipeline.models.registry import build_network
from tests.dfd.test_cli import dfd
from tests.pipeline.models.importers.test_sbi import Detector, sam_state


def weights_dir(shared_data: Path) -> Path:
    folder = shared_data.parent / "weights"
    if not (folder / "mesonet").is_dir():
        pytest.skip(f"no shared weights at {folder}")
    return folder


def snapshot(root: Path, *, caches: bool = True) -> dict[str, str]:
    """Every file under ``root`` and its sha256 (without ``.cache/``, the exported runtimes'
    files, when ``caches`` is false)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and (caches or p.relative_to(root).parts[0] != ".cache")
    }


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A DFD_HOME whose default model directory holds the four MesoNet members."""
    home = tmp_path_factory.mktemp("home")
    mirror = weights_dir(shared_data)
    out = dfd("models", "fetch", "mesonet", "--mirror", str(mirror), home=home)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("Apache-2.0") == 4
    return home


def test_auto_runs_mesonet_once_fetched(fetched: Path) -> None:
    payload = json.loads(dfd("models", "list", "--json", home=fetched).stdout)
    assert payload["active_ensemble"] == "mesonet"
    assert payload["default_ensemble"] == "auto"
    meso = [m for m in payload["members"] if m["name"] in payload["ensembles"]["mesonet"]]
    assert {m["weights"] for m in meso} == {"present"}
    assert all("DariusAf/MesoNet" in m["source"] for m in meso)


def test_score_faces_with_real_weights_says_what_ran(
    fetched: Path, shared_data: Path, tmp_path: Path
) -> None:
    faces = sorted((shared_data.parent / "weights" / "golden" / "inputs").glob("mesonet_*.png"))
    out = tmp_path / "scores.json"
    run = dfd("score-faces", *map(str, faces), "--json", str(out), home=fetched)
    assert run.returncode == 0, run.stderr
    payload = json.loads(out.read_text())
    assert payload["ensemble"] == "mesonet"
    assert {m["weights"] for m in payload["models"]} == {"trained"}
    assert any("2018" in w for w in payload["warnings"]), payload["warnings"]
    assert not any("untrained" in w for w in payload["warnings"])
    by_name = {Path(f["image"]).name: f["probability"] for f in payload["faces"]}
    # Upstream's own test faces: the two Deepfake faces score above the two real ones.
    fakes = [by_name["mesonet_df00204.png"], by_name["mesonet_df01254.png"]]
    reals = [by_name["mesonet_real00240.png"], by_name["mesonet_real00772.png"]]
    assert min(fakes) > max(reals)


def test_use_picks_the_ensemble(fetched: Path) -> None:
    used = dfd("models", "use", "paper", home=fetched)
    try:
        assert used.returncode == 0, used.stderr
        assert "runs paper: m1_effb4" in used.stdout
        bad = dfd("models", "use", "nope", home=fetched)
        assert bad.returncode == 4
        assert "no ensemble named 'nope'" in bad.stderr and len(bad.stderr.splitlines()) == 1
    finally:
        ModelDirectory(fetched / "models").use("auto")


def test_fetch_failures_change_nothing(fetched: Path, tmp_path: Path, shared_data: Path) -> None:
    mirror = tmp_path / "mirror"
    shutil.copytree(weights_dir(shared_data), mirror)
    damaged = mirror / "mesonet" / "MesoInception_F2F.h5"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    models = fetched / "models"
    before = snapshot(models)
    out = dfd("models", "fetch", "mesonet", "--mirror", str(mirror), home=fetched)
    assert out.returncode == 4
    assert "MesoInception_F2F.h5" in out.stderr and "sha256" in out.stderr
    assert snapshot(models) == before
    with pytest.raises(DownloadError, match="none"):  # exit code 3 on the command line
        fetch_members(ModelDirectory(models), "mesonet", mirror=str(tmp_path / "none"))
    assert snapshot(models) == before


def test_import_format_adds_a_member_to_an_ensemble(tmp_path: Path) -> None:
    home = tmp_path / "home"
    src = tmp_path / "FFraw.tar"
    # As SBI's src/train_sbi.py saves it (random weights: only the layout matters here).
    detector = Detector()
    torch.save({"model": detector.state_dict(), "optimizer": sam_state(detector), "epoch": 1}, src)
    run = dfd(
        "models", "import", "--format", "sbi", str(src), "--name", "sbi_ffraw",
        "--version", "ffraw", "--trained-on", "FF++ raw", "--ensemble", "public", home=home,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    directory = ModelDirectory(home / "models")
    manifest = directory.load()
    assert manifest.ensembles["public"] == ["sbi_ffraw"]
    member = manifest.member("sbi_ffraw")
    assert directory.has_weights(member) and member.input_size == 380
    assert member.output == "softmax" and member.fake_index == 1
    assert "non-commercial" in member.licence.lower() or "noncommercial" in member.licence


def test_import_format_refuses_bad_files_and_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert dfd("models", "list", home=home).returncode == 0
    models = home / "models"
    before = snapshot(models)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(3, 3, 3, 3)}, wrong)
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(b"PK\x03\x04 not a whole file")
    run = dfd(
        "models", "import", "--format", "sbi", str(wrong),
        "--version", "1", "--trained-on", "x", home=home,
    )  # fmt: skip
    assert run.returncode == 4, run.stderr
    assert str(wrong) in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert snapshot(models) == before
    # The other families refuse the same way (the command maps CheckpointError to exit 4).
    for fmt, path in [("selimsef", wrong), ("icpr2020dfdc", truncated), ("fsfm", truncated)]:
        with pytest.raises(CheckpointError, match=str(path)):
            import_format(fmt, path, "x")
        assert snapshot(models) == before
    with pytest.raises(CheckpointError, match="unknown checkpoint format 'nope'"):
        import_format("nope", wrong, "x")


def test_push_and_pull_through_object_storage(
    fetched: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``dfd models push`` then ``pull`` on another "node" (a real S3 server on loopback): the
    same files, checked by sha256; a second pull downloads nothing; a file changed in the store
    fails the pull with a one-line error and leaves the node's directory as it was."""
    import boto3

    from serve.model_sync import model_store, pull_models
    from tests.support.s3server import moto_s3_server

    source = fetched / "models"
    (source / "aux").mkdir(exist_ok=True)
    (source / "aux" / "resnet50.pt").write_bytes(b"not really resnet weights")
    node = tmp_path / "node-models"
    with moto_s3_server() as endpoint:
        env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        s3 = boto3.client("s3", endpoint_url=endpoint, **_aws(env))
        s3.create_bucket(Bucket="dfd-models")
        store = "s3://dfd-models/v0.1.0"

        def run(*args: str) -> Any:
            return dfd("models", *args, "--endpoint-url", endpoint, home=tmp_path, env=env)

        pushed = run("push", store, "--model-dir", str(source))
        assert pushed.returncode == 0, pushed.stderr
        assert "pushed 6 files" in pushed.stdout  # 4 MesoNet checkpoints, aux, manifest
        first = run("pull", store, "--model-dir", str(node))
        assert first.returncode == 0, first.stderr
        assert snapshot(node) == snapshot(source, caches=False)  # runtimes' caches stay home
        # The rest through the library where the command line adds nothing (each `dfd` run
        # costs seconds of imports): every pulled checkpoint loads strictly, sha256 checked.
        pulled = ModelDirectory(node)
        for spec in pulled.load().members:
            if (path := pulled.checkpoint_path(spec)) is not None:
                load_checkpoint(build_network(spec), path, spec.sha256)
        storage, prefix = model_store(store, endpoint)
        again = pull_models(storage, prefix, pulled)
        assert (len(again.copied), len(again.kept)) == (0, 6)
        # Another file in the store under a pushed name: refused, nothing changes here.
        manifest = json.loads((node / "manifest.json").read_text())
        victim = next(m["checkpoint"] for m in manifest["members"] if m["checkpoint"])
        s3.put_object(Bucket="dfd-models", Key=f"v0.1.0/{victim}", Body=b"tampered")
        (node / victim).write_bytes(b"stale local copy")
        before = snapshot(node)
        bad = run("pull", store, "--model-dir", str(node))
        assert bad.returncode != 0 and "is not the index's" in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
        assert snapshot(node) == before
        absent, absent_prefix = model_store("s3://dfd-models/absent", endpoint)
        with pytest.raises(ConfigError, match="dfd models push"):
            pull_models(absent, absent_prefix, ModelDirectory(tmp_path / "x"))


def _aws(env: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }
