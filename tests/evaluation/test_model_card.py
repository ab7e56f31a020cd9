"""The model card: Mitchell et al.'s sections from the manifest and the latest report, and plain
statements when weights are untrained or figures are missing or stale."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from evaluation.model_card import find_report, render_model_card
from evaluation.report import write_report
from pipeline.errors import ConfigError
from pipeline.models import InferenceSettings
from pipeline.models.member import expected_infos, models_digest
from tests.evaluation.test_report import SHIFTS, write_run
from tests.support.models import make_model_dir

SECTIONS = [
    "## Model details",
    "## Intended use",
    "## Factors",
    "## Metrics",
    "## Evaluation data",
    "## Training data",
    "## Quantitative analyses",
    "## Ethical considerations",
    "## Caveats and recommendations",
    "## Versions",
]


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("trained")).root


def _run_for(model_dir: Path, root: Path, **kw: object) -> Path:
    """A run whose rows were scored by exactly the models in ``model_dir``."""
    infos = expected_infos(InferenceSettings(model_dir=model_dir))
    models = [{"name": i.name, "version": i.version, "weights": i.weights} for i in infos]
    return write_run(
        root, "ffpp", manipulations=SHIFTS, models=models, digest=models_digest(infos), **kw
    )  # type: ignore[arg-type]


def test_untrained_without_figures(tmp_path: Path) -> None:
    directory = make_model_dir(tmp_path / "models", with_weights=False)
    card = render_model_card(directory.root, None)
    positions = [card.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    assert "5 of 5 detectors have NO TRAINED WEIGHTS" in card
    assert "Evaluation figures are MISSING" in card
    assert card.count("UNTRAINED (random init)") == 5
    assert "Missing: no figures." in card
    assert "none (random initialisation)" in card
    # A report folder with nothing in it is the same as no report.
    assert "MISSING" in render_model_card(directory.root, tmp_path / "nowhere")


def test_card_from_the_latest_report(trained_dir: Path, tmp_path: Path) -> None:
    old = write_report([_run_for(trained_dir, tmp_path / "old-run")], tmp_path / "reports" / "a")
    new = write_report(
        [_run_for(trained_dir, tmp_path / "new-run", seed=3)], tmp_path / "reports" / "b", n_boot=50
    )
    os.utime(old.json, (1_000_000_000, 1_000_000_000))
    assert find_report(tmp_path / "reports") == new.json
    card = render_model_card(trained_dir, tmp_path / "reports")
    positions = [card.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    assert "NO TRAINED WEIGHTS" not in card and "MISSING" not in card
    assert "do not describe the current models" not in card
    assert "new-run" in card and "old-run" not in card
    overall = new.runs[0].video.get(dataset="ffpp")
    assert overall.balanced_accuracy is not None and overall.auc is not None
    row = next(
        line for line in card.splitlines() if line.startswith("| new-run | ") and "%" in line
    )
    assert row.startswith(
        f"| new-run | {100 * overall.balanced_accuracy:.2f}% | {overall.auc:.4f} |"
    )
    assert "| paper: MeVer (Table 1) | 70.31% | 0.7705 |" in card
    assert "| paper: MeVer (Table 2) |" in card
    assert card.count("| TRAINED |") == 5 and "test fixture" in card
    assert "BA at the validation-chosen threshold" in card

    html = render_model_card(trained_dir, new.json, fmt="html")
    assert html.startswith("<!doctype html>") and "<h2>Intended use</h2>" in html
    assert "<td>new-run</td>" in html


def test_figures_of_other_models_are_flagged(trained_dir: Path, tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", "ffpp", manipulations=SHIFTS, digest="ffffffffffffffff")
    card = render_model_card(trained_dir, run)  # a run folder: figures computed now
    assert "measured with model set(s) ffffffffffffffff" in card
    assert "do not describe the current models" in card
    assert "| run | " in card


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no model manifest"):
        render_model_card(tmp_path / "empty", None)
    with pytest.raises(ConfigError, match="format"):
        render_model_card(tmp_path, None, fmt="pdf")  # type: ignore[arg-type]
