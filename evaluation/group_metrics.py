"""BA and AUC per group of prediction rows, with bootstrap intervals: paper Tables 1 and 2.

:func:`compute_metrics` groups prediction rows (by dataset, and by manipulation: each method's
fakes against all of the group's reals) and computes the metrics of :mod:`evaluation.metrics` on
each group. Its conventions are those of :mod:`evaluation.metrics`; in addition, a metric that
needs both classes is recorded as ``None`` with the reason when a group lacks one, and a failed
row (an ``error``, or no finite score) is excluded and counted per group, never scored 0.5.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from evaluation.metrics import balanced_accuracy, bootstrap_ci, roc_auc

#: ``manipulation`` value of the per-group row that covers every manipulation.
ALL = "all"


class GroupMetrics(BaseModel):
    """Metrics of one group of rows (a dataset, or a dataset's manipulation vs its reals).

    ``balanced_accuracy``/``auc`` and their intervals are ``None`` when undefined, with the reason
    in ``undefined``; ``tpr`` (recall on fakes) and ``tnr`` (recall on reals) need only their class.
    """

    model_config = ConfigDict(frozen=True)

    group: dict[str, str]
    n_real: int
    n_fake: int
    n_excluded: int
    threshold: float
    balanced_accuracy: float | None
    auc: float | None
    tpr: float | None
    tnr: float | None
    balanced_accuracy_ci: tuple[float, float] | None = None
    auc_ci: tuple[float, float] | None = None
    undefined: dict[str, str] = {}


class MetricReport(BaseModel):
    """Per-group metric rows, in a stable order (groups sorted; the ``"all"`` row first)."""

    model_config = ConfigDict(frozen=True)

    group_by: tuple[str, ...]
    threshold: float
    n_boot: int
    alpha: float
    n_rows: int
    n_excluded: int
    rows: list[GroupMetrics]

    def get(self, **group: str) -> GroupMetrics:
        """The row whose group matches, e.g. ``get(dataset="ffpp", manipulation="Deepfakes")``.

        A ``manipulation`` left out means ``"all"``.
        """
        if "manipulation" in self.group_by:
            group.setdefault("manipulation", ALL)
        for row in self.rows:
            if row.group == group:
                return row
        raise KeyError(f"no metrics for group {group}; groups: {[r.group for r in self.rows]}")


def _records(predictions: Any) -> list[Mapping[str, Any]]:
    if hasattr(predictions, "columns") and hasattr(predictions, "to_dict"):  # pandas.DataFrame
        return list(predictions.to_dict("records"))
    if hasattr(predictions, "to_pylist"):  # pyarrow.Table
        return list(predictions.to_pylist())
    records: list[Mapping[str, Any]] = []
    for row in predictions:
        if isinstance(row, Mapping):
            records.append(row)
        elif dataclasses.is_dataclass(row) and not isinstance(row, type):
            records.append(dataclasses.asdict(row))
        else:
            raise TypeError(f"prediction rows must be mappings or dataclasses, got {type(row)}")
    return records


def _score_of(record: Mapping[str, Any]) -> float:
    """The row's score, or NaN when the row failed (error set, score missing or not finite)."""
    error = record.get("error")
    # pandas turns a missing string into NaN: only a non-empty string marks a failure.
    if isinstance(error, str) and error.strip():
        return math.nan
    score = record.get("score")
    if score is None:
        return math.nan
    value = float(score)
    return value if math.isfinite(value) else math.nan


def _labelled_groups(
    records: Sequence[Mapping[str, Any]], group_by: Sequence[str], keys: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, dict[tuple[str, ...], list[int]]]:
    """``(N,)`` labels, ``(N,)`` scores (NaN: failed) and the row indices of each ``keys`` group.

    Raises:
        ValueError: a row lacks a ``group_by`` column, ``label`` or ``score``, or its label is
            not 0 or 1.
    """
    required = {"label", "score", *group_by}
    labels = np.empty(len(records), dtype=np.int8)
    scores = np.empty(len(records), dtype=np.float64)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, record in enumerate(records):
        absent = sorted(required - set(record))
        if absent:
            raise ValueError(f"prediction row {i} lacks column(s) {absent}")
        label = int(record["label"])
        if label not in (0, 1):
            raise ValueError(f"prediction row {i}: label must be 0 or 1, got {record['label']!r}")
        labels[i] = label
        scores[i] = _score_of(record)
        groups.setdefault(tuple(str(record[c]) for c in keys), []).append(i)
    return labels, scores, groups


def _group_metrics(
    group: dict[str, str],
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    n_boot: int,
    alpha: float,
    seed: int,
) -> GroupMetrics:
    valid = ~np.isnan(scores)
    y, s = labels[valid], scores[valid]
    n_fake = int(y.sum())
    n_real = int(y.size - n_fake)
    n_excluded = int((~valid).sum())
    predicted = s >= threshold
    tpr = float(predicted[y == 1].mean()) if n_fake else None
    tnr = float((~predicted[y == 0]).mean()) if n_real else None
    undefined: dict[str, str] = {}
    ba = auc = None
    ba_ci = auc_ci = None
    if n_fake and n_real:
        ba = balanced_accuracy(y, s, threshold)
        auc = roc_auc(y, s)
        if n_boot:
            ba_at_threshold = functools.partial(balanced_accuracy, threshold=threshold)
            ba_ci = bootstrap_ci(y, s, ba_at_threshold, n_boot, alpha, seed)
            auc_ci = bootstrap_ci(y, s, roc_auc, n_boot, alpha, seed)
    else:
        reason = f"needs both classes; {n_real} real and {n_fake} fake rows scored" + (
            f" ({n_excluded} failed rows excluded)" if n_excluded else ""
        )
        undefined = {"balanced_accuracy": reason, "auc": reason}
    return GroupMetrics(
        group=group,
        n_real=n_real,
        n_fake=n_fake,
        n_excluded=n_excluded,
        threshold=threshold,
        balanced_accuracy=ba,
        auc=auc,
        tpr=tpr,
        tnr=tnr,
        balanced_accuracy_ci=ba_ci,
        auc_ci=auc_ci,
        undefined=undefined,
    )


def compute_metrics(
    predictions: Any,
    group_by: Sequence[str] = ("dataset", "manipulation"),
    *,
    threshold: float = 0.5,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> MetricReport:
    """BA and AUC (with bootstrap intervals) per group: paper Tables 1 and 2.

    Rows are grouped by the ``group_by`` columns other than ``manipulation``; each group gets one
    row with ``manipulation="all"`` (Table 1). When ``manipulation`` is in ``group_by``, each fake
    manipulation of a group also gets a row scoring **that manipulation's fakes against all of the
    group's real rows** (Table 2: FF++ has one set of originals shared by the four methods; "real"
    is decided by ``label == 0``, whatever the real rows' manipulation says).

    Args:
        predictions: a pandas DataFrame, a pyarrow Table, or an iterable of mappings/dataclasses,
            with columns ``label`` (1 = fake), ``score`` (probability; None/NaN = failed),
            optionally ``error`` (a non-empty string = failed), and the ``group_by`` columns.
        group_by: grouping columns; ``manipulation`` is treated as described above.
        threshold: ``score >= threshold`` is predicted fake (choose it with
            :func:`choose_threshold` on a validation split, or keep 0.5).
        n_boot: bootstrap resamples per interval; 0 = no intervals.
        alpha: 1 - confidence level of the intervals.
        seed: bootstrap seed.

    Returns:
        A :class:`MetricReport`; failed rows are excluded from every metric and counted in
        ``n_excluded`` of each group they belong to.
    """
    group_by = tuple(group_by)
    records = _records(predictions)
    keys = [c for c in group_by if c != "manipulation"]
    by_manipulation = "manipulation" in group_by
    labels, scores, groups = _labelled_groups(records, group_by, keys)
    rows: list[GroupMetrics] = []
    for key in sorted(groups):
        members = np.asarray(groups[key])
        base = dict(zip(keys, key, strict=True))
        overall = {**base, "manipulation": ALL} if by_manipulation else base
        rows.append(
            _group_metrics(
                overall, labels[members], scores[members], threshold, n_boot, alpha, seed
            )
        )
        if not by_manipulation:
            continue
        reals = members[labels[members] == 0]
        fakes = members[labels[members] == 1]
        manipulations = sorted({str(records[i]["manipulation"]) for i in fakes})
        for manipulation in manipulations:
            chosen = [i for i in fakes if str(records[i]["manipulation"]) == manipulation]
            subset = np.r_[np.asarray(chosen, dtype=np.int64), reals]
            rows.append(
                _group_metrics(
                    {**base, "manipulation": manipulation},
                    labels[subset],
                    scores[subset],
                    threshold,
                    n_boot,
                    alpha,
                    seed,
                )
            )
    return MetricReport(
        group_by=group_by,
        threshold=threshold,
        n_boot=n_boot,
        alpha=alpha,
        n_rows=len(records),
        n_excluded=int(np.isnan(scores).sum()),
        rows=rows,
    )


def report_records(report: MetricReport) -> list[dict[str, Any]]:
    """Flat dicts (one per group) for CSV/Parquet/Markdown tables: group columns first."""
    flat: list[dict[str, Any]] = []
    for row in report.rows:
        record: dict[str, Any] = dict(row.group)
        data = row.model_dump(exclude={"group", "undefined"})
        for name in ("balanced_accuracy_ci", "auc_ci"):
            interval = data.pop(name)
            record_low, record_high = (None, None) if interval is None else interval
            data[f"{name}_low"], data[f"{name}_high"] = record_low, record_high
        record.update(data)
        record["undefined"] = "; ".join(f"{k}: {v}" for k, v in row.undefined.items())
        flat.append(record)
    return flat
