"""The ``dfd`` command as a user runs it: a real subprocess, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.models import ModelDirectory
from tests.support.models import make_model_dir


def dfd(
    *args: str, home: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, **(env or {}), "DFD_HOME": str(home), "COLUMNS": "200",
               "NO_COLOR": "1"}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "dfd", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> ModelDirectory:
    return make_model_dir(tmp_path_factory.mktemp("models"))


def test_version(tmp_path: Path) -> None:
    from dfd.version import __version__

    assert dfd("--version", home=tmp_path).stdout.strip() == __version__


def test_models_init_and_list_json(tmp_path: Path) -> None:
    target = tmp_path / "m"
    init = dfd("models", "init", "--model-dir", str(target), "--preset", "tiny", home=tmp_path)
    assert init.returncode == 0, init.stderr
    listed = dfd("models", "list", "--json", "--model-dir", str(target), home=tmp_path)
    payload = json.loads(listed.stdout)
    assert payload["members"][0]["name"] == "m1_effb4"
    assert len(payload["members"]) == 5
    assert {m["weights"] for m in payload["members"]} == {"random-init"}
    assert all(m["input_size"] == 64 for m in payload["members"])
    again = dfd("models", "init", "--model-dir", str(target), home=tmp_path)
    assert again.returncode == 4 and "already exists" in again.stderr


def test_default_model_dir_is_created_under_dfd_home(tmp_path: Path) -> None:
    listed = dfd("models", "list", "--json", home=tmp_path)
    assert listed.returncode == 0, listed.stderr
    payload = json.loads(listed.stdout)
    assert payload["model_dir"] == str(tmp_path / "models")
    assert payload["members"][0]["input_size"] == 300


def test_models_verify(model_dir: ModelDirectory, tmp_path: Path) -> None:
    ok = dfd("models", "verify", "--model-dir", str(model_dir.root), home=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count(": ok") == 5


def test_models_verify_names_a_corrupt_file(tmp_path: Path) -> None:
    directory = make_model_dir(tmp_path / "m")
    spec = directory.load().members[2]
    path = directory.checkpoint_path(spec)
    assert path is not None
    path.write_bytes(path.read_bytes()[:-10])
    bad = dfd("models", "verify", "--model-dir", str(directory.root), home=tmp_path)
    assert bad.returncode == 4
    assert "m3_effb4_detr_learned.pt has sha256" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_models_export_checks_against_eager(model_dir: ModelDirectory, tmp_path: Path) -> None:
    out = tmp_path / "onnx"
    run = dfd(
        "models", "export", "--model-dir", str(model_dir.root), "--out", str(out), home=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.glob("*.onnx")) == sorted(
        f"{m.name}.onnx" for m in model_dir.load().members
    )
    assert run.stdout.count("max |logit diff| vs eager") == 5


def test_score_faces(model_dir: ModelDirectory, shared_data: Path, tmp_path: Path) -> None:
    crops = [
        shared_data / "deepfake" / "dfdc_crop_abarnvbtwb-000-00.png",
        shared_data / "deepfake" / "dfdc_crop_aapnvogymq-004-01.png",
    ]
    out = tmp_path / "scores.json"
    run = dfd(
        "score-faces",
        *map(str, crops),
        "--model-dir",
        str(model_dir.root),
        "--backend",
        "torch",
        "--json",
        str(out),
        home=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    payload = json.loads(out.read_text())
    assert [f["image"] for f in payload["faces"]] == [str(c) for c in crops]
    for face in payload["faces"]:
        members = list(face["members"].values())
        assert face["probability"] == pytest.approx(sum(members) / len(members))
    assert payload["warnings"] == []


def test_analyze_image_writes_result_and_pictures(
    model_dir: ModelDirectory, shared_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run = dfd(
        "analyze",
        str(shared_data / "faces" / "fr_two_people.jpg"),
        "--out",
        str(out),
        "--model-dir",
        str(model_dir.root),
        "--backend",
        "torch",
        home=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    (folder,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    result = json.loads((folder / "result.json").read_text())
    assert result["faces_total"] == 2
    assert f"{result['score']:.3f}" in run.stdout
    assert (folder / result["shots"][0]["gallery"]).is_file()
    for cluster in result["shots"][0]["clusters"]:
        assert (folder / cluster["collage"]).is_file()


@pytest.mark.parametrize(
    ("make", "code", "message"),
    [
        (lambda d: d / "missing.mp4", 2, "does not exist"),
        (lambda d: ((d / "empty.mp4").write_bytes(b"") and None) or d / "empty.mp4", 2, "empty"),
        (lambda d: "http://127.0.0.1:9/video.mp4", 3, "not allowed"),
        (lambda d: "ftp://example.org/video.mp4", 2, "http"),
    ],
    ids=["missing", "empty", "loopback-url", "bad-scheme"],
)
def test_analyze_errors_are_one_line_with_exit_codes(
    make: object, code: int, message: str, model_dir: ModelDirectory, tmp_path: Path
) -> None:
    source = make(tmp_path)  # type: ignore[operator]
    run = dfd(
        "analyze",
        str(source),
        "--out",
        str(tmp_path / "o"),
        "--model-dir",
        str(model_dir.root),
        "--backend",
        "torch",
        home=tmp_path,
    )
    assert run.returncode == code, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("dfd:")]
    assert len(lines) == 1 and message in lines[0].lower(), run.stderr
    assert "Traceback" not in run.stderr


def test_bench_models_compares_backends_in_one_run(
    model_dir: ModelDirectory, tmp_path: Path
) -> None:
    """Not a timing test: the benchmark runs every backend, reports a rate for every batch size
    and repeat, and shows that the backends agree (the figures come from the closing notes)."""
    out = tmp_path / "bench.json"
    run = dfd(
        "bench", "models", "--model-dir", str(model_dir.root), "--backends", "torch,onnx",
        "--batch-sizes", "1,3", "--faces", "3", "--repeats", "2", "--device", "cpu",
        "--json", str(out), home=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "fastest: onnx" in run.stdout
    rows = json.loads(out.read_text())
    assert [r["backend"] for r in rows] == ["torch", "onnx"]
    for r in rows:
        assert [run["batch_size"] for run in r["runs"]] == [1, 3]
        assert all(len(run["faces_per_s_all"]) == 2 for run in r["runs"])
        assert all(run["faces_per_s"] > 0 for run in r["runs"])
        assert len(r["probability"]) == 3
    assert rows[0]["workers"] == 1  # torch scores its members in turn
    np.testing.assert_allclose(rows[0]["probability"], rows[1]["probability"], atol=5e-3)


def test_usage_errors_are_one_line(model_dir: ModelDirectory, tmp_path: Path) -> None:
    bad_backend = dfd(
        "bench", "models", "--model-dir", str(model_dir.root), "--backends", "torch,tensorrt",
        home=tmp_path,
    )  # fmt: skip
    unknown_option = dfd("analyze", "--nope", home=tmp_path)
    for run, words in ((bad_backend, "tensorrt"), (unknown_option, "--nope")):
        assert run.returncode == 2
        assert run.stderr.startswith("dfd: usage: ") and words in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "dfd bench models --help" in bad_backend.stderr
