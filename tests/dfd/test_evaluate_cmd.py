"""``dfd evaluate``, ``dfd report`` and ``dfd model-card`` as a user runs them: a real
subprocess (its own local Ray), exit codes, files written, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.runs import RunFolder
from tests.evaluation.test_report import SHIFTS, write_run
from tests.support.models import make_model_dir


def dfd(*args: str, home: Path, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DFD_HOME": str(home), "COLUMNS": "250", "NO_COLOR": "1"}
    env["RAY_AUTH_MODE"] = "disabled"
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "dfd", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.mark.ray
def test_evaluate_then_resume(tmp_path: Path, shared_data: Path) -> None:
    model_dir = make_model_dir(tmp_path / "models").root
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "path,label\n"
        f"{shared_data}/faces/fr_obama_small.jpg,real\n"
        f"{shared_data}/deepfake/dfdc_mqzvfufzoq_fr0.jpg,fake\n"
        f"{shared_data}/nonface/imageio_coffee.png,real\n"
    )
    out = tmp_path / "run"
    args = [
        "evaluate", "--dataset", "csv", "--root", str(manifest), "--out", str(out),
        "--model-dir", str(model_dir), "--backend", "torch", "--device", "cpu",
        "--actors", "1", "--max-frames", "4",
    ]  # fmt: skip
    first = dfd(*args, home=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "3 rows: " in first.stderr
    assert "0 already done, 3 scored now" in first.stdout
    assert "1 without a face, 0 errors" in first.stdout
    assert "Table 1: BA (at threshold 0.5) and AUC per dataset" in first.stdout
    assert "paper: MeVer (Table 1)" in first.stdout
    table = RunFolder(out).predictions()
    assert table is not None and table.num_rows == 3
    assert (out / "report" / "report.md").is_file() and (out / "report" / "report.html").is_file()

    again = dfd(*args, "--no-report", home=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 already done, 0 scored now" in again.stdout
    assert len(list((out / "predictions").glob("part-*.parquet"))) == 1


def test_evaluate_refuses_a_wrong_layout(tmp_path: Path) -> None:
    (tmp_path / "Celeb-real").mkdir()
    result = dfd(
        "evaluate", "--dataset", "ffpp", "--root", str(tmp_path), "--out", str(tmp_path / "r"),
        home=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("dfd: unexpected dataset layout: FaceForensics++ layout")
    assert "looks like a Celeb-DF-v2 root" in result.stderr
    assert not (tmp_path / "r").exists()
    bad = dfd(
        "evaluate", "--dataset", "csv", "--root", str(tmp_path), "--out", str(tmp_path / "r"),
        "--option", "novalue", home=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 4 and "--option takes KEY=VALUE" in bad.stderr


def test_report_and_model_card(tmp_path: Path) -> None:
    a = write_run(tmp_path / "runs" / "ffpp-a", "ffpp", manipulations=SHIFTS)
    b = write_run(tmp_path / "runs" / "ffpp-b", "ffpp", seed=5, manipulations=SHIFTS)
    out = tmp_path / "report"
    result = dfd(
        "report", str(a), str(b), "--out", str(out), "--name", "first", "--name", "second",
        "--n-boot", "50", home=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in ("report.md", "report.html", "metrics.json", "roc_ffpp.png"):
        assert (out / name).is_file()
    lines = result.stdout.splitlines()
    assert any(line.lstrip("│ ").startswith("first ") for line in lines)
    assert any(line.lstrip("│ ").startswith("second ") for line in lines)
    assert "paper: MeVer (Table 2)" in result.stdout

    model_dir = tmp_path / "models"
    assert (
        dfd(
            "models", "init", "--model-dir", str(model_dir), "--preset", "tiny", home=tmp_path
        ).returncode
        == 0
    )
    card = tmp_path / "card.html"
    made = dfd(
        "model-card",
        "--run",
        str(out),
        "--model-dir",
        str(model_dir),
        "--out",
        str(card),
        home=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    page = card.read_text()
    assert page.startswith("<!doctype html>") and "<td>first</td>" in page
    assert "NO TRAINED WEIGHTS" in page  # models init writes untrained members
    printed = dfd("model-card", "--model-dir", str(model_dir), home=tmp_path)
    assert printed.returncode == 0 and "Evaluation figures are MISSING" in printed.stdout

    missing = dfd("report", str(tmp_path / "nothing"), home=tmp_path)
    assert missing.returncode == 4 and "is not an evaluation run folder" in missing.stderr
