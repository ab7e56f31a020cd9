"""``dfd train`` as a user runs it: a bad invocation is one line and an exit code, nothing
written (the training itself is tested in tests/batch/test_train.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dfd.cli import app
from pipeline.models.manifest import ModelDirectory


@pytest.fixture
def model_dir(tmp_path: Path) -> ModelDirectory:
    directory = ModelDirectory(tmp_path / "models")
    directory.init("tiny", input_size=32)
    return directory


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        ([], 4, "give --out for a new run or --resume RUN"),
        (["--out", "run", "--epochs", "0"], 4, "epochs: Input should be greater than or equal"),
        (["--out", "run"], 4, "is not a faces folder"),
    ],
)
def test_bad_invocations_are_one_line(
    tmp_path: Path, model_dir: ModelDirectory, extra: list[str], code: int, message: str
) -> None:
    before = model_dir.manifest_path.read_bytes()
    args = ["train", "--faces", str(tmp_path / "nowhere"), "--member", "m1_effb4"]
    args += ["--model-dir", str(model_dir.root)]
    args += [str(tmp_path / a) if a == "run" else a for a in extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == code, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert result.stderr.startswith("dfd: ")
    assert model_dir.manifest_path.read_bytes() == before
    assert not (tmp_path / "run").exists()
