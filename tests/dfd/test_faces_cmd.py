"""``dfd faces extract`` as a user runs it (in-process ``--local``): summary, exit codes, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from batch.faces_folder import read_faces
from dfd.cli import app


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["faces", "extract", *args])
    return result.exit_code, result.stdout, result.stderr


def test_extract_then_resume(tmp_path: Path, shared_data: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{shared_data}/deepfake/dfdc_lynaeydofd_fr0.jpg,real\n")
    args = ["--dataset", "csv", "--root", str(manifest), "--out", str(tmp_path / "f"), "--local"]
    code, out, err = run(*args)
    assert code == 0, err
    assert "1 videos: 0 already done, 1 processed now (0 errors, 0 without a face)" in out
    assert len(read_faces(tmp_path / "f")) == 1
    code, out, _ = run(*args)
    assert code == 0 and "1 already done, 0 processed now" in out and "0 faces written" in out


@pytest.mark.parametrize(
    ("dataset", "root", "message"),
    [
        ("ffpp", "missing", "does not exist"),
        ("nope", "m.csv", "unknown dataset 'nope'"),
        ("csv", "m.csv", "lists no media"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    tmp_path: Path, dataset: str, root: str, message: str
) -> None:
    (tmp_path / "m.csv").write_text("path,label\n")
    code, _, err = run(
        "--dataset", dataset, "--root", str(tmp_path / root), "--out", str(tmp_path / "f"),
        "--local",
    )  # fmt: skip
    assert code == 2
    assert message in err and err.startswith("dfd: ") and err.count("\n") == 1
    assert not (tmp_path / "f").exists()
