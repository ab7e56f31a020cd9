"""Metrics against scikit-learn, threshold choice, bootstrap intervals, and the BA/AUC tables."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score, roc_curve

from evaluation.group_metrics import compute_metrics, report_records
from evaluation.metrics import (
    MetricName,
    aggregate_to_video,
    balanced_accuracy,
    bootstrap_ci,
    choose_threshold,
    roc_auc,
    roc_curve_points,
)
from pipeline.errors import UndefinedMetricError


def random_case(seed: int, n: int = 200, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(int)
    labels[:2] = [0, 1]
    scores = np.clip(rng.normal(0.4 + 0.25 * labels, 0.2), 0.0, 1.0)
    return labels, (np.round(scores, 1) if ties else scores)


def test_known_values() -> None:
    labels = [0, 0, 0, 1, 1]
    scores = [0.1, 0.6, 0.4, 0.8, 0.3]
    # TNR 2/3 (0.6 is a false alarm), TPR 1/2 (0.3 missed)
    assert balanced_accuracy(labels, scores) == pytest.approx((2 / 3 + 1 / 2) / 2)
    # fake-real pairs ranked right: 0.8 beats all 3, 0.3 beats 0.1 only -> 4 of 6
    assert roc_auc(labels, scores) == pytest.approx(4 / 6)
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)  # a tie counts 1/2


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("ties", [False, True])
def test_equal_to_sklearn_on_random_inputs(seed: int, ties: bool) -> None:
    labels, scores = random_case(seed, ties=ties)
    for threshold in (0.5, 0.3, float(np.median(scores))):
        expected = balanced_accuracy_score(labels, (scores >= threshold).astype(int))
        assert balanced_accuracy(labels, scores, threshold) == pytest.approx(expected, abs=1e-12)
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    curve = roc_curve_points(labels, scores)
    np.testing.assert_allclose(curve.fpr, fpr)
    np.testing.assert_allclose(curve.tpr, tpr)
    np.testing.assert_array_equal(curve.thresholds[1:], thresholds[1:])
    assert curve.thresholds[0] == np.inf
    assert np.trapezoid(curve.tpr, curve.fpr) == pytest.approx(roc_auc(labels, scores))


def test_choose_threshold_on_a_constructed_case() -> None:
    # Separable, but not at 0.5: every real is below 0.4 and every fake above 0.35... except that
    # the best cut lies between 0.35 (highest real) and 0.4 (lowest fake).
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    scores = [0.10, 0.20, 0.30, 0.35, 0.40, 0.45, 0.60, 0.80]
    assert balanced_accuracy(labels, scores) < 1.0
    threshold = choose_threshold(labels, scores)
    assert threshold == pytest.approx(0.375)
    assert balanced_accuracy(labels, scores, threshold) == 1.0
    assert choose_threshold(labels, scores, criterion="youden") == pytest.approx(0.375)
    with pytest.raises(ValueError, match="criterion"):
        choose_threshold(labels, scores, criterion="f1")  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(6))
def test_choose_threshold_is_optimal_on_random_inputs(seed: int) -> None:
    labels, scores = random_case(seed, n=150, ties=seed % 2 == 0)
    threshold = choose_threshold(labels, scores)
    best = max(
        balanced_accuracy_score(labels, (scores >= t).astype(int))
        for t in [*np.unique(scores), np.inf]
    )
    assert balanced_accuracy(labels, scores, threshold) == pytest.approx(best, abs=1e-12)
    assert threshold not in set(scores.tolist())  # a midpoint, never on a validation score


def test_uninformative_scores_keep_the_conventional_threshold() -> None:
    assert choose_threshold([0, 1, 0, 1], [0.3, 0.3, 0.7, 0.7]) == pytest.approx(0.5)


def test_bootstrap_ci_contains_estimate_and_narrows_with_n() -> None:
    widths: dict[tuple[MetricName, int], float] = {}
    names: tuple[MetricName, ...] = ("roc_auc", "balanced_accuracy")
    for n in (80, 2000):
        labels, scores = random_case(7, n=n)
        for metric in names:
            point = (
                roc_auc(labels, scores)
                if metric == "roc_auc"
                else balanced_accuracy(labels, scores)
            )
            low, high = bootstrap_ci(labels, scores, metric, n_boot=300, seed=1)
            assert low <= point <= high
            widths[(metric, n)] = high - low
    for metric in names:
        assert widths[(metric, 2000)] < widths[(metric, 80)] / 2


def test_bootstrap_is_stratified_and_seeded() -> None:
    labels, scores = random_case(3, n=60)
    seen: list[tuple[int, int]] = []

    def count_classes(y: np.ndarray, s: np.ndarray) -> float:
        seen.append((int((y == 0).sum()), int((y == 1).sum())))
        return roc_auc(y, s)

    interval = bootstrap_ci(labels, scores, count_classes, n_boot=50, seed=4)
    assert set(seen) == {(int((labels == 0).sum()), int((labels == 1).sum()))}
    assert bootstrap_ci(labels, scores, "roc_auc", n_boot=50, seed=4) == interval
    assert bootstrap_ci(labels, scores, "roc_auc", n_boot=50, seed=5) != interval
    at_03 = bootstrap_ci(labels, scores, partial(balanced_accuracy, threshold=0.3), n_boot=50)
    assert at_03[0] <= balanced_accuracy(labels, scores, 0.3) <= at_03[1]
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(labels, scores, "roc_auc", alpha=1.5)


def test_single_class_is_undefined_not_a_crash() -> None:
    for fn in (balanced_accuracy, roc_auc, roc_curve_points, choose_threshold):
        with pytest.raises(UndefinedMetricError, match="0 real and 3 fake"):
            fn([1, 1, 1], [0.2, 0.5, 0.9])
    with pytest.raises(UndefinedMetricError):
        bootstrap_ci([0, 0], [0.1, 0.2], "roc_auc")
    with pytest.raises(UndefinedMetricError):
        roc_auc([], [])
    report = compute_metrics(
        [{"dataset": "d", "manipulation": "original", "label": 0, "score": 0.2}], n_boot=10
    )
    row = report.get(dataset="d")
    assert row.balanced_accuracy is None and row.auc is None and row.auc_ci is None
    assert "needs both classes; 1 real and 0 fake" in row.undefined["auc"]
    assert row.tnr == 1.0 and row.tpr is None


def test_nan_scores_are_refused_by_primitives() -> None:
    with pytest.raises(ValueError, match="1 NaN"):
        roc_auc([0, 1, 1], [0.1, float("nan"), 0.8])
    with pytest.raises(ValueError, match="1 NaN"):
        balanced_accuracy([0, 1, 1], [0.1, float("nan"), 0.8])


def prediction_rows(seed: int = 0) -> list[dict[str, object]]:
    """FF++-like predictions: 40 originals and 3 methods x 40 fakes, plus a Celeb-DF set."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    for _ in range(40):
        rows.append(dict(dataset="ffpp", manipulation="original", label=0, score=rng.beta(2, 5)))
    for method, strength in (("Deepfakes", 6), ("FaceSwap", 4), ("NeuralTextures", 2.2)):
        for _ in range(40):
            rows.append(
                dict(dataset="ffpp", manipulation=method, label=1, score=rng.beta(strength, 3))
            )
    for label in (0, 1) * 30:
        rows.append(
            dict(
                dataset="celebdf",
                manipulation="Celeb-synthesis" if label else "original",
                label=label,
                score=rng.beta(2 + 3 * label, 3),
            )
        )
    for row in rows:
        row["error"] = None
    return rows


def test_compute_metrics_tables_match_sklearn() -> None:
    rows = prediction_rows()
    report = compute_metrics(rows, n_boot=50)
    groups = [(r.group["dataset"], r.group["manipulation"]) for r in report.rows]
    assert groups == [
        ("celebdf", "all"),
        ("celebdf", "Celeb-synthesis"),
        ("ffpp", "all"),
        ("ffpp", "Deepfakes"),
        ("ffpp", "FaceSwap"),
        ("ffpp", "NeuralTextures"),
    ]
    originals = [r for r in rows if r["dataset"] == "ffpp" and r["label"] == 0]
    for method in ("Deepfakes", "FaceSwap", "NeuralTextures"):
        # Table 2: one manipulation's fakes against ALL originals.
        subset = originals + [r for r in rows if r["manipulation"] == method]
        y = [r["label"] for r in subset]
        s = np.array([r["score"] for r in subset])
        got = report.get(dataset="ffpp", manipulation=method)
        assert (got.n_real, got.n_fake, got.n_excluded) == (40, 40, 0)
        assert got.auc == pytest.approx(roc_auc_score(y, s))
        assert got.balanced_accuracy == pytest.approx(balanced_accuracy_score(y, s >= 0.5))
        assert got.auc is not None and got.auc_ci is not None
        assert got.auc_ci[0] <= got.auc <= got.auc_ci[1]
    whole = report.get(dataset="ffpp")
    ffpp = [r for r in rows if r["dataset"] == "ffpp"]
    assert (whole.n_real, whole.n_fake) == (40, 120)
    assert whole.auc == pytest.approx(
        roc_auc_score([r["label"] for r in ffpp], [r["score"] for r in ffpp])
    )
    by_dataset = compute_metrics(rows, group_by=("dataset",), n_boot=0)
    assert [r.group for r in by_dataset.rows] == [{"dataset": "celebdf"}, {"dataset": "ffpp"}]
    assert by_dataset.get(dataset="ffpp").auc == whole.auc
    assert by_dataset.rows[0].auc_ci is None


def test_compute_metrics_accepts_dataframes_and_arrow_tables() -> None:
    rows = prediction_rows(1)
    expected = compute_metrics(rows, n_boot=20)
    assert compute_metrics(pd.DataFrame(rows), n_boot=20) == expected
    assert compute_metrics(pa.Table.from_pylist(rows), n_boot=20) == expected


def test_failed_rows_are_excluded_and_counted_never_scored() -> None:
    rows = prediction_rows(2)
    clean = compute_metrics(rows, n_boot=0)
    failed = [
        dict(dataset="ffpp", manipulation="Deepfakes", label=1, score=None, error="corrupt-media"),
        dict(dataset="ffpp", manipulation="Deepfakes", label=1, score=float("nan"), error=None),
        dict(dataset="ffpp", manipulation="FaceSwap", label=1, score=0.9, error="no-face: x"),
        dict(dataset="ffpp", manipulation="original", label=0, score=float("inf"), error=None),
    ]
    report = compute_metrics(rows + failed, n_boot=0)
    assert report.n_excluded == 4 and report.n_rows == len(rows) + 4
    for key in ("all", "Deepfakes", "FaceSwap", "NeuralTextures"):
        got, want = (
            report.get(dataset="ffpp", manipulation=key),
            clean.get(dataset="ffpp", manipulation=key),
        )
        assert (got.auc, got.balanced_accuracy) == (want.auc, want.balanced_accuracy)
    counts = {
        k: report.get(dataset="ffpp", manipulation=k).n_excluded
        for k in ("all", "Deepfakes", "FaceSwap", "NeuralTextures")
    }
    # the failed original belongs to every per-manipulation group (all originals are in each)
    assert counts == {"all": 4, "Deepfakes": 3, "FaceSwap": 2, "NeuralTextures": 1}
    # Had the failures been scored 0.5, the figures would differ: the exclusion is observable.
    as_half = [{**r, "score": 0.5, "error": None} for r in failed]
    assert (
        compute_metrics(rows + as_half, n_boot=0).get(dataset="ffpp").auc
        != clean.get(dataset="ffpp").auc
    )
    flat = report_records(report)
    assert flat[0]["dataset"] == "celebdf" and flat[0]["manipulation"] == "all"
    assert {"auc", "auc_ci_low", "auc_ci_high", "n_excluded", "undefined"} <= set(flat[0])


def test_compute_metrics_rejects_malformed_rows() -> None:
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['manipulation'\]"):
        compute_metrics([{"dataset": "d", "label": 1, "score": 0.3}])
    with pytest.raises(ValueError, match="label must be 0 or 1"):
        compute_metrics([{"dataset": "d", "manipulation": "m", "label": 2, "score": 0.3}])
    with pytest.raises(KeyError, match="no metrics for group"):
        compute_metrics(prediction_rows(), n_boot=0).get(dataset="wdf")


def test_aggregate_to_video_follows_the_paper_rule() -> None:
    videos = ["a"] * 6 + ["b"] * 2 + ["c"]
    scores = [0.1, 0.9, 0.6, 0.2, 0.4, 0.5, 0.3, float("nan"), float("nan")]
    shots = [1, 1, 1, 2, 2, 2, 1, 1, 1]
    clusters = [0, 0, 1, 0, 0, 0, 0, 0, 0]
    result = aggregate_to_video(videos, scores, shot_ids=shots, cluster_ids=clusters)
    # a: shot 1 clusters mean(0.1, 0.9) = 0.5 and 0.6 -> 0.6; shot 2 mean(0.2, 0.4, 0.5) -> 0.6
    assert result["a"] == pytest.approx(0.6)
    assert result["b"] == pytest.approx(0.3)  # the NaN face is left out
    assert math.isnan(result["c"])  # no scored face: NaN, never 0.5
    # Without ids: max over faces.
    plain = aggregate_to_video(videos, scores)
    assert plain["a"] == pytest.approx(0.9) and plain["b"] == pytest.approx(0.3)
    # Cluster ids are scoped to their shot: cluster 0 of shot 1 is not cluster 0 of shot 2.
    assert aggregate_to_video(["v"] * 2, [0.2, 0.8], shot_ids=[1, 2], cluster_ids=[0, 0]) == {
        "v": pytest.approx(0.8)
    }
    with pytest.raises(ValueError, match="shot_ids has 1 entries"):
        aggregate_to_video(["v", "v"], [0.1, 0.2], shot_ids=[1])
