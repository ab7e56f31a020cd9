"""Evaluation metrics of paper section 4.1.2: balanced accuracy (BA) and ROC AUC, on arrays.

Conventions used throughout:

* ``labels`` are 1 = fake (the positive class), 0 = real; ``scores`` are DeepFake probabilities
  (any finite real works for AUC; BA thresholds them). A row is predicted fake when
  ``score >= threshold``.
* BA is the mean of the recall on fakes (TPR) and on reals (TNR), in [0, 1]; the paper prints it
  as a percentage. AUC is the area under the ROC curve, ties between a fake and a real scored
  alike counting one half (the Mann-Whitney statistic, as ``sklearn.metrics.roc_auc_score``).
* Both need both classes. These functions raise :class:`UndefinedMetricError` otherwise; the
  per-group tables of :mod:`evaluation.group_metrics` record ``None`` with the reason instead.
* A failed row (NaN/missing score, or an ``error``) is never scored as 0.5: these functions refuse
  NaN, and :func:`evaluation.group_metrics.compute_metrics` excludes such rows and counts them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from pipeline.errors import UndefinedMetricError

MetricFn = Callable[[np.ndarray, np.ndarray], float]
MetricName = Literal["balanced_accuracy", "roc_auc"]


def _validate(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(N,)`` int labels in {0, 1} and ``(N,)`` float scores without NaN."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"labels and scores must be 1-D of equal length, got {y.shape}, {s.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (real) or 1 (fake), got values {np.unique(y)[:5]}")
    if np.isnan(s).any():
        raise ValueError(
            f"scores contain {int(np.isnan(s).sum())} NaN value(s): drop failed rows first "
            "(compute_metrics excludes and counts them); never stand in a score for a failure"
        )
    return y.astype(np.int8), s


def _require_both_classes(y: np.ndarray, metric: str) -> None:
    n_fake = int(y.sum())
    n_real = int(y.size - n_fake)
    if n_fake == 0 or n_real == 0:
        raise UndefinedMetricError(
            f"{metric} is undefined with {n_real} real and {n_fake} fake rows: "
            "it needs both classes"
        )


def balanced_accuracy(labels: Any, scores: Any, threshold: float = 0.5) -> float:
    """Mean of TPR (fakes with ``score >= threshold``) and TNR (reals below it), in [0, 1].

    Args:
        labels: ``(N,)`` 1 = fake, 0 = real.
        scores: ``(N,)`` DeepFake probabilities.
        threshold: decision threshold; ``score >= threshold`` is predicted fake.

    Raises:
        UndefinedMetricError: only one class present (or no rows).
    """
    y, s = _validate(labels, scores)
    _require_both_classes(y, "balanced accuracy")
    predicted = s >= threshold
    tpr = float(predicted[y == 1].mean())
    tnr = float((~predicted[y == 0]).mean())
    return (tpr + tnr) / 2.0


class RocCurve(NamedTuple):
    """ROC points in order of decreasing threshold, starting at ``(0, 0)`` with ``+inf``.

    ``fpr[i]``/``tpr[i]`` are the rates when ``score >= thresholds[i]`` is predicted fake.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


def roc_curve_points(labels: Any, scores: Any) -> RocCurve:
    """Every ROC point, one per distinct score (``sklearn.metrics.roc_curve`` with
    ``drop_intermediate=False``): arrays of shape ``(K + 1,)`` for ``K`` distinct scores.

    Raises:
        UndefinedMetricError: only one class present (or no rows).
    """
    y, s = _validate(labels, scores)
    _require_both_classes(y, "the ROC curve")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # Last index of each run of equal scores: a threshold includes every row scored alike.
    last_of_run = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    true_pos = np.cumsum(y_sorted)[last_of_run]
    false_pos = (last_of_run + 1) - true_pos
    tpr = np.r_[0.0, true_pos / true_pos[-1]]
    fpr = np.r_[0.0, false_pos / false_pos[-1]]
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=np.r_[np.inf, s_sorted[last_of_run]])


def roc_auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve in [0, 1]; a fake and a real with equal scores count 1/2.

    Computed as the Mann-Whitney U statistic from average ranks, O(N log N).

    Raises:
        UndefinedMetricError: only one class present (or no rows).
    """
    y, s = _validate(labels, scores)
    _require_both_classes(y, "AUC")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # 1-based average rank of each distinct score: ties share the mean of the ranks they span.
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = average_rank[inverse]
    n_fake = int(y.sum())
    n_real = y.size - n_fake
    u_statistic = ranks[y == 1].sum() - n_fake * (n_fake + 1) / 2.0
    return float(u_statistic / (n_fake * n_real))


def choose_threshold(
    val_labels: Any,
    val_scores: Any,
    criterion: Literal["balanced_accuracy", "youden"] = "balanced_accuracy",
) -> float:
    """The decision threshold that maximises ``criterion`` on a validation split.

    Candidates are the midpoints between consecutive distinct scores (plus "all fake" and "all
    real"), so a chosen threshold never sits on a validation score. Youden's J = TPR + TNR - 1 =
    2 BA - 1, so both criteria pick the same cut; both names exist for reports. Among equally good
    cuts the one closest to 0.5 wins: where the data cannot tell, keep the conventional point.

    Args:
        val_labels: ``(N,)`` 1 = fake, 0 = real, from a split not used for the reported figures.
        val_scores: ``(N,)`` DeepFake probabilities.
        criterion: ``"balanced_accuracy"`` or ``"youden"``.

    Returns:
        The threshold; use it as ``score >= threshold`` -> fake.

    Raises:
        UndefinedMetricError: only one class present (or no rows).
    """
    if criterion not in ("balanced_accuracy", "youden"):
        raise ValueError(f"criterion must be 'balanced_accuracy' or 'youden', got {criterion!r}")
    y, s = _validate(val_labels, val_scores)
    _require_both_classes(y, "threshold choice")
    distinct = np.unique(s)
    candidates = np.r_[
        distinct[0], (distinct[:-1] + distinct[1:]) / 2.0, np.nextafter(distinct[-1], np.inf)
    ]
    fakes, reals = np.sort(s[y == 1]), np.sort(s[y == 0])
    tpr = 1.0 - np.searchsorted(fakes, candidates, side="left") / fakes.size
    tnr = np.searchsorted(reals, candidates, side="left") / reals.size
    value = (tpr + tnr) / 2.0 if criterion == "balanced_accuracy" else tpr + tnr - 1.0
    best = np.flatnonzero(np.isclose(value, value.max(), rtol=0.0, atol=1e-12))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


_METRICS: dict[str, MetricFn] = {"balanced_accuracy": balanced_accuracy, "roc_auc": roc_auc}


def bootstrap_ci(
    labels: Any,
    scores: Any,
    metric: MetricName | MetricFn,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap ``(1 - alpha)`` confidence interval of ``metric``.

    Resampling is stratified: each resample draws ``n_fake`` fakes from the fakes and ``n_real``
    reals from the reals, with replacement, so every resample has both classes in the original
    proportions (BA and AUC stay defined, and the class balance the figure describes is kept).

    Args:
        labels: ``(N,)`` 1 = fake, 0 = real.
        scores: ``(N,)`` DeepFake probabilities.
        metric: ``"balanced_accuracy"`` (threshold 0.5), ``"roc_auc"`` or any
            ``f(labels, scores) -> float`` (e.g. ``functools.partial(balanced_accuracy,
            threshold=t)``).
        n_boot: number of resamples (>= 1).
        alpha: 1 - confidence level, in (0, 1).
        seed: seed of the resampling; same inputs and seed give the same interval.

    Returns:
        ``(low, high)``, the ``alpha/2`` and ``1 - alpha/2`` quantiles of the resampled metric.

    Raises:
        UndefinedMetricError: only one class present (or no rows).
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    fn = _METRICS[metric] if isinstance(metric, str) else metric
    y, s = _validate(labels, scores)
    _require_both_classes(y, "bootstrap")
    fake_idx, real_idx = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot, dtype=np.float64)
    for b in range(n_boot):
        pick = np.r_[
            rng.choice(fake_idx, size=fake_idx.size, replace=True),
            rng.choice(real_idx, size=real_idx.size, replace=True),
        ]
        values[b] = fn(y[pick], s[pick])
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


# ----------------------------------------------------------------------------------------------
# Face/frame level -> video level


def aggregate_to_video(
    video_ids: Sequence[str],
    scores: Any,
    *,
    shot_ids: Sequence[Hashable] | None = None,
    cluster_ids: Sequence[Hashable] | None = None,
) -> dict[str, float]:
    """Video scores from per-face (or per-frame) scores, by the rule of paper section 3.1.

    With cluster (and shot) ids: cluster score = mean of its faces, shot score = max of its
    clusters, video score = max of its shots. Cluster ids are scoped to their shot and video.
    Without cluster ids every face is its own cluster, so the video score is the max over faces
    (the paper's rule for images). Faces with a NaN score are left out; a video none of whose
    faces has a score gets NaN, which :func:`~evaluation.group_metrics.compute_metrics` excludes
    and counts, never 0.5.

    Args:
        video_ids: ``(N,)`` the video of each face.
        scores: ``(N,)`` face DeepFake probabilities.
        shot_ids: ``(N,)`` shot of each face within its video, optional.
        cluster_ids: ``(N,)`` face cluster of each face within its shot, optional.

    Returns:
        ``video_id -> score`` for every video in ``video_ids``.
    """
    s = np.asarray(scores, dtype=np.float64)
    n = len(video_ids)
    for name, values in (("scores", s), ("shot_ids", shot_ids), ("cluster_ids", cluster_ids)):
        if values is not None and len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries for {n} video ids")
    clusters: dict[tuple[str, Hashable, Hashable], list[float]] = {}
    result: dict[str, float] = {}
    for i, video in enumerate(video_ids):
        result.setdefault(video, math.nan)
        if math.isnan(s[i]):
            continue
        shot = shot_ids[i] if shot_ids is not None else None
        cluster = cluster_ids[i] if cluster_ids is not None else ("face", i)
        clusters.setdefault((video, shot, cluster), []).append(float(s[i]))
    shots: dict[tuple[str, Hashable], float] = {}
    for (video, shot, _), faces in clusters.items():
        mean = sum(faces) / len(faces)
        shots[(video, shot)] = max(shots.get((video, shot), -math.inf), mean)
    for (video, _), shot_score in shots.items():
        current = result[video]
        result[video] = shot_score if math.isnan(current) else max(current, shot_score)
    return result
