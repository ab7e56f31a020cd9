"""``dfd attack`` then ``dfd report`` as a user runs them (in-process attack, no Ray)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from tests.support.models import make_model_dir


def test_attack_then_report(shared_data: Path, tmp_path: Path) -> None:
    models = make_model_dir(tmp_path / "models")
    manifest = tmp_path / "data.csv"
    manifest.write_text(
        "path,label\n"
        f"{shared_data / 'deepfake' / 'dfdc_crop_aapnvogymq-004-01.png'},fake\n"
        f"{shared_data / 'faces' / 'fr_obama_small.jpg'},real\n"
    )
    env = {**os.environ, "DFD_HOME": str(tmp_path / "home"), "COLUMNS": "200"}

    def dfd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dfd", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )

    run = tmp_path / "run"
    attack = dfd(
        "attack",
        "--dataset",
        "csv",
        "--root",
        str(manifest),
        "--out",
        str(run),
        "--norm",
        "inf",
        "--eps",
        "0.2",
        "--max-iter",
        "2",
        "--model-dir",
        str(models.root),
        "--backend",
        "torch",
        "--local",
    )
    assert attack.returncode == 0, attack.stderr
    scores = pd.read_parquet(run / "scores.parquet")
    assert len(scores) == 2 and scores["error"].isna().all()
    assert (scores["attacked_score"] <= 1).all() and (scores["clean_score"] >= 0).all()
    report = dfd("report", str(run), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "report" / "robustness" / "robustness.md").read_text()
    assert "inf" in text
