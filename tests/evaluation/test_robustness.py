"""Robustness figures: perturbation size and visibility per face, and the report built from real
attack runs (tiny models, real photos of ../shared/data)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from batch.attack import AttackRunSettings, AttackSettings, run_attack
from batch.datasets import VideoRow
from evaluation.attack_summary import summarize_run
from evaluation.image_metrics import amplify, perturbation_norms, psnr, ssim
from evaluation.robustness import render_robustness_report
from pipeline.analyze import AnalysisSettings
from pipeline.errors import BadInputError, MissingFileError
from pipeline.faces import FaceSettings
from pipeline.models import InferenceSettings
from tests.support.models import make_model_dir

# ----------------------------------------------------------------------------------------------
# Per-face metrics


def test_norms_of_a_known_perturbation() -> None:
    clean = np.zeros((2, 3, 4, 4))
    attacked = clean.copy()
    attacked[0, 0, 0, 0] = 0.3
    attacked[0, 1, 2, 3] = -0.4
    norms = perturbation_norms(clean, attacked)
    assert norms["l1"] == pytest.approx([0.7, 0.0])
    assert norms["l2"] == pytest.approx([0.5, 0.0])
    assert norms["linf"] == pytest.approx([0.4, 0.0])


def test_psnr_of_a_uniform_change_and_of_identical_images() -> None:
    rng = np.random.default_rng(0)
    clean = rng.uniform(0.2, 0.8, size=(3, 3, 16, 16))
    attacked = clean + np.array([0.1, 0.01, 0.0])[:, None, None, None]
    value = psnr(clean, attacked)
    assert value[:2] == pytest.approx([20.0, 40.0])
    assert math.isinf(value[2])


def test_ssim_reference_properties() -> None:
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.uniform(0, 1, size=(1, 3, 32, 32)))
    assert ssim(x, x) == pytest.approx([1.0])
    # Constant images: only the luminance term is left, (2ab + C1) / (a^2 + b^2 + C1).
    a, b, c1 = 0.3, 0.6, 0.01**2
    flat = ssim(np.full((1, 3, 16, 16), a), np.full((1, 3, 16, 16), b))
    assert flat == pytest.approx([(2 * a * b + c1) / (a * a + b * b + c1)])
    # More noise, less similar; symmetric.
    noise = torch.from_numpy(rng.normal(size=x.shape))
    values = [ssim(x, (x + s * noise).clamp(0, 1))[0] for s in (0.01, 0.05, 0.2)]
    assert values[0] > values[1] > values[2]
    y = (x + 0.1 * noise).clamp(0, 1)
    assert ssim(x, y) == pytest.approx(ssim(y, x))
    # Faces smaller than the 11-pixel window still get a value.
    assert ssim(x[:, :, :7, :7], x[:, :, :7, :7]) == pytest.approx([1.0])


def test_amplify_makes_the_largest_change_full_scale() -> None:
    delta = np.zeros((4, 4, 3))
    delta[0, 0, 0] = 0.01
    delta[1, 1, 1] = -0.02
    image, factor = amplify(delta)
    assert factor == pytest.approx(25.0)
    assert image[1, 1, 1] == 0 and image[0, 0, 0] == 191 and image[2, 2, 2] == 128


# ----------------------------------------------------------------------------------------------
# Report from real runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Path]:
    """Small real runs: two datasets, norms inf and 1, transfer, black-box, defence."""
    base = tmp_path_factory.mktemp("runs")
    model_dir = make_model_dir(base / "models").root
    rows = [
        VideoRow("x/fake", str(shared_data / "faces/fr_two_people.jpg"), 1, "m", "test", "video"),
        VideoRow(
            "x/real", str(shared_data / "faces/fr_obama_small.jpg"), 0, "original", "test", "video"
        ),
    ]
    broken = VideoRow("x/broken", str(shared_data / "MANIFEST.csv"), 0, "original", "test", "video")
    analysis = AnalysisSettings(
        inference=InferenceSettings(model_dir=model_dir, backend="torch", device="cpu"),
        faces=FaceSettings(max_side_px=640),
        galleries=False,
    )
    plans: dict[str, tuple[str, dict[str, Any], list[VideoRow]]] = {
        "ffpp-inf": ("ffpp", {"norm": "inf"}, [*rows, broken]),
        "ffpp-l1": ("ffpp", {"norm": "1"}, rows),
        "ffpp-transfer": ("ffpp", {"norm": "inf", "transfer_from": "m1_effb4"}, rows),
        "ffpp-square": (
            "ffpp",
            {"black_box": "square", "max_queries": 12, "rate_per_min": 30},
            rows,
        ),
        "celebdf-inf-jpeg": ("celebdf", {"norm": "inf", "defence": "jpeg"}, rows),
    }
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, (dataset, attack, chosen) in plans.items():
            settings = AttackRunSettings(
                analysis=analysis, attack=AttackSettings(max_iter=1, **attack), examples=2
            )
            run_attack(chosen, base / name, settings, dataset=dataset, use_ray=False)
    finally:
        torch.set_num_threads(before)
    return {name: base / name for name in plans}


def scored(run: Path) -> pd.DataFrame:
    frame = pd.read_parquet(run / "scores.parquet")
    return frame[frame["error"].isna() & frame["clean_score"].notna()]


def test_summary_figures_are_those_of_the_rows(runs: dict[str, Path]) -> None:
    summary = summarize_run(runs["ffpp-inf"])
    frame = scored(runs["ffpp-inf"])
    assert (summary.n_rows, summary.n_errors, summary.n_scored) == (3, 1, 2)
    y = frame["label"].to_numpy()
    for column, ba, auc in (
        ("clean_score", summary.ba_clean, summary.auc_clean),
        ("attacked_score", summary.ba_attacked, summary.auc_attacked),
    ):
        s = frame[column].to_numpy()
        assert ba == pytest.approx(balanced_accuracy_score(y, s >= 0.5))
        assert auc == pytest.approx(roc_auc_score(y, s))
    fakes = frame[(frame["label"] == 1) & (frame["clean_score"] >= 0.5)]
    expected_asr = (fakes["attacked_score"] < 0.5).mean() if len(fakes) else None
    assert summary.attack_success_rate == (
        pytest.approx(expected_asr) if expected_asr is not None else None
    )
    faces = frame["n_faces"].to_numpy()
    assert summary.n_faces == faces.sum() == 3
    assert summary.linf == pytest.approx((frame["linf_mean"] * faces).sum() / faces.sum())
    assert summary.linf is not None and summary.psnr is not None and summary.ssim is not None
    assert 0 < summary.linf <= 0.2 + 1e-6 and summary.ssim < 1
    assert summary.untrained_members == []
    assert summary.kind == "pgd" and summary.attack.startswith("PGD norm-inf eps 0.2")


def test_black_box_summary_sets_queries_against_the_rate_limit(runs: dict[str, Path]) -> None:
    summary = summarize_run(runs["ffpp-square"])
    frame = scored(runs["ffpp-square"])
    total = int(frame["queries_total"].sum())
    assert 0 < total <= 12 * 3  # three faces, at most 12 queries each
    assert summary.queries_total == total
    assert summary.queries_per_face == pytest.approx(total / 3)
    assert summary.queries_per_video == pytest.approx(total / 2)
    assert summary.minutes_per_video == pytest.approx(total / 2 / 30)


def test_report_renders_table3_and_the_extra_sections(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    report = render_robustness_report(list(runs.values()), tmp_path / "report")
    md = report.markdown.read_text()
    page = report.html.read_text()
    inf, l1 = summarize_run(runs["ffpp-inf"]), summarize_run(runs["ffpp-l1"])
    cdf = summarize_run(runs["celebdf-inf-jpeg"])
    # Table 3: one row per dataset, clean BA then one column per norm.
    assert "| Dataset | clean | norm-1 (eps 0.2) | norm-inf (eps 0.2) |" in md

    def pct(v: float | None) -> str:
        return f"{100 * v:.2f}%" if v is not None else "—"

    assert (
        f"| FaceForensics++ | {pct(inf.ba_clean)} | {pct(l1.ba_attacked)} | "
        f"{pct(inf.ba_attacked)} |" in md
    )
    assert f"| CelebDF | {pct(cdf.ba_clean)} |  | {pct(cdf.ba_attacked)} |" in md
    for title in ("Transfer attacks", "Black-box attacks", "Input-purification defences"):
        assert title in md and title in page
    assert "m1_effb4" in md and "square" in md and "jpeg" in md
    square = summarize_run(runs["ffpp-square"])
    assert f"{square.minutes_per_video:.1f}" in md
    # Example strip: clean, amplified perturbation, attacked, with scores; files next to it.
    assert page.count('alt="perturbation"') >= 5
    for src in (s.split('"')[0] for s in page.split('<img src="')[1:]):
        assert (tmp_path / "report" / src).is_file()
    assert "<script" not in page and "x/fake" in page
    data = json.loads(report.json_path.read_text())
    assert {d["run"] for d in data} == set(runs)


def test_report_warns_about_untrained_members_and_refuses_bad_input(
    tmp_path: Path, shared_data: Path
) -> None:
    from pipeline.models.manifest import ModelDirectory

    models = tmp_path / "untrained"
    ModelDirectory(models).init("tiny")
    settings = AttackRunSettings(
        analysis=AnalysisSettings(
            inference=InferenceSettings(model_dir=models, backend="torch", device="cpu"),
            galleries=False,
        )
    )
    run_attack([], tmp_path / "empty", settings, dataset="wdf", use_ray=False)
    summary = summarize_run(tmp_path / "empty")
    assert summary.n_rows == 0 and summary.ba_clean is None
    assert len(summary.untrained_members) == 5
    report = render_robustness_report([tmp_path / "empty"], tmp_path / "report")
    assert "random, untrained weights" in report.markdown.read_text()
    with pytest.raises(BadInputError):
        render_robustness_report([], tmp_path / "report")
    with pytest.raises(MissingFileError):
        render_robustness_report([shared_data], tmp_path / "report")
