"""Every figure of one evaluation run, computed from its run folder (paper 4.1.2).

Per run (a folder in the format of :mod:`evaluation.runs`):

* balanced accuracy (BA) at the threshold 0.5 and at a threshold chosen on a validation split
  (the run's own ``val`` rows, or another run's), and ROC AUC, with stratified bootstrap 95%
  confidence intervals, per dataset and per manipulation;
* the same at frame level (every scored face is a sample, labelled with its video's label),
  without intervals: faces of one video are not independent, so a per-face bootstrap would
  understate the uncertainty;
* each ensemble member alone, at video level.

Rows that failed or found no face are excluded from the metrics and counted, never scored 0.5.
:class:`RunMetrics` is what ``metrics.json`` holds per run (the model card reads it back).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from evaluation.group_metrics import MetricReport, compute_metrics
from evaluation.metrics import balanced_accuracy, choose_threshold, roc_auc
from evaluation.render import dataset_order
from evaluation.runs import MEMBER_PREFIX, RunFolder
from pipeline.errors import ConfigError, UndefinedMetricError

_GROUP_BY = ("dataset", "manipulation")


class RunMetrics(BaseModel):
    """Every figure of one run, as written to ``metrics.json``."""

    model_config = ConfigDict(frozen=True)

    name: str
    run_dir: str
    datasets: list[str]
    service_versions: list[str]
    models_digests: list[str]
    #: From ``run.json``: each member's name, version, weights status and sha256.
    models: list[dict[str, Any]]
    untrained: list[str]
    n_rows: int
    n_no_face: int
    n_errors: int
    error_kinds: dict[str, int]
    #: Which rows the tables describe, e.g. ``"split test"``.
    evaluated_on: str
    n_evaluated: int
    #: Validation-chosen threshold (video level) and where it came from; None with a reason.
    threshold: float | None
    threshold_source: str | None
    threshold_note: str
    video: MetricReport
    video_at_threshold: MetricReport | None
    frame_threshold: float | None
    frame: MetricReport | None
    frame_at_threshold: MetricReport | None
    frame_note: str
    #: Video-level AUC and balanced accuracy (threshold 0.5) of each member alone, on the
    #: evaluated rows that have a score: ``{"name", "n", "auc", "ba"}``; a figure is None when
    #: the rows hold one class only.
    members: list[dict[str, Any]] = []


@dataclass
class LoadedRun:
    """A loaded run: its metrics, the scores the ROC plots need, and what to warn about."""

    metrics: RunMetrics
    video_scores: pd.DataFrame
    frame_scores: pd.DataFrame | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Validation:
    """The rows a threshold is chosen on, and the video-level threshold chosen."""

    rows: pd.DataFrame | None
    faces: pd.DataFrame | None
    threshold: float | None
    source: str | None
    note: str


@dataclass
class _FrameLevel:
    scores: pd.DataFrame | None
    note: str
    threshold: float | None = None
    report: MetricReport | None = None
    at_threshold: MetricReport | None = None


def _frame(table: Any) -> pd.DataFrame:
    return table.to_pandas() if table is not None else pd.DataFrame()


def scored_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with a score and no error."""
    if df.empty:
        return df
    ok = df["score"].notna()
    if "error" in df.columns:
        ok &= df["error"].isna()
    return df[ok]


def _evaluation_rows(splits: set[str]) -> tuple[set[str], str]:
    """Which splits the tables describe: ``test`` if present, else the splits that are neither
    training nor validation, else everything but validation, else everything."""
    if "test" in splits:
        return {"test"}, "split test"
    rest = splits - {"train", "val"}
    if rest:
        return rest, "split " + ", ".join(sorted(rest))
    rest = splits - {"val"}
    if rest:
        return rest, "split " + ", ".join(sorted(rest)) + " (no test split in this run)"
    return splits, "split val (the only split in this run)"


def _threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float | None, str]:
    try:
        return choose_threshold(labels, scores), ""
    except UndefinedMetricError as exc:
        return None, exc.detail


def _threshold_of(rows: pd.DataFrame) -> tuple[float | None, str]:
    """The BA-maximising threshold on ``rows`` that have a score, or None with the reason."""
    scored = scored_rows(rows)
    return _threshold(scored["label"].to_numpy(), scored["score"].to_numpy(dtype=np.float64))


def _load(run_dir: Path) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame | None]:
    folder = RunFolder(run_dir)
    info = folder.info()
    predictions = _frame(folder.predictions())
    if predictions.empty:
        raise ConfigError(f"run {run_dir} has no predictions yet; run `dfd evaluate` first")
    faces_table = folder.faces()
    faces = None if faces_table is None else faces_table.to_pandas()
    return info, predictions, faces


def compute_run_metrics(
    run_dir: Path,
    *,
    name: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    val_run: Path | None = None,
) -> RunMetrics:
    """Every figure of the run in ``run_dir`` (see the module docstring).

    Args:
        run_dir: a folder written by :func:`batch.evaluate.run_evaluation`
            (format: :mod:`evaluation.runs`).
        name: the run's name in tables (default: the folder name).
        n_boot: bootstrap resamples per confidence interval (0: no intervals).
        seed: bootstrap seed.
        val_run: take the validation rows (for the chosen threshold) from this run instead
            of ``run_dir``'s own ``val`` rows.

    Raises:
        ConfigError: not a run folder, or no predictions yet.
    """
    return load_run(Path(run_dir), name=name, n_boot=n_boot, seed=seed, val_run=val_run).metrics


def load_run(
    run_dir: Path,
    *,
    name: str | None,
    n_boot: int,
    seed: int,
    val_run: Path | None,
) -> LoadedRun:
    """The run in ``run_dir`` with its figures (arguments as :func:`compute_run_metrics`)."""
    info, predictions, faces = _load(run_dir)
    splits = set(predictions["split"].astype(str))
    eval_splits, evaluated_on = _evaluation_rows(splits)
    evaluated = predictions[predictions["split"].isin(eval_splits)]
    validation = _validation(predictions, faces, eval_splits, val_run)
    video = compute_metrics(evaluated, _GROUP_BY, threshold=0.5, n_boot=n_boot, seed=seed)
    video_t = (
        None
        if validation.threshold is None
        else compute_metrics(
            evaluated, _GROUP_BY, threshold=validation.threshold, n_boot=n_boot, seed=seed
        )
    )
    frame = _frame_level(faces, evaluated, validation)
    fingerprint = info.get("fingerprint", {})
    models = list(fingerprint.get("models", []))
    errors = predictions[predictions["error"].notna()]
    metrics = RunMetrics(
        name=name or run_dir.resolve().name,
        run_dir=str(run_dir.resolve()),
        datasets=sorted(set(predictions["dataset"].astype(str)), key=dataset_order),
        service_versions=sorted(set(predictions["service_version"].dropna().astype(str))),
        models_digests=sorted(set(predictions["models_digest"].dropna().astype(str))),
        models=models,
        untrained=[m["name"] for m in models if m.get("weights") != "trained"],
        n_rows=len(predictions),
        n_no_face=int((predictions["error"].isna() & predictions["score"].isna()).sum()),
        n_errors=len(errors),
        error_kinds={str(k): int(v) for k, v in errors["error_kind"].value_counts().items()},
        evaluated_on=evaluated_on,
        n_evaluated=len(evaluated),
        threshold=validation.threshold,
        threshold_source=validation.source,
        threshold_note=validation.note,
        video=video,
        video_at_threshold=video_t,
        frame_threshold=frame.threshold,
        frame=frame.report,
        frame_at_threshold=frame.at_threshold,
        frame_note=frame.note,
        members=_member_figures(evaluated),
    )
    return LoadedRun(metrics, evaluated, frame.scores, _warnings(metrics))


def _validation(
    predictions: pd.DataFrame,
    faces: pd.DataFrame | None,
    eval_splits: set[str],
    val_run: Path | None,
) -> _Validation:
    """The validation rows (``val_run``'s, else this run's ``val`` split unless it is the one
    evaluated) and the video-level threshold chosen on them."""
    source: str | None
    if val_run is not None:
        _, val_predictions, val_faces = _load(Path(val_run))
        val = val_predictions[val_predictions["split"] == "val"]
        if val.empty:
            val = val_predictions
        source = f"run {Path(val_run).name}, {len(val)} rows"
    else:
        val_faces = faces
        val = predictions[predictions["split"] == "val"] if "val" not in eval_splits else None
        source = None if val is None or val.empty else f"split val of this run, {len(val)} rows"
    if val is None or val.empty:
        note = (
            "no validation rows: evaluate the val split too (same --out, --split val) or pass "
            "another run's val rows"
        )
        return _Validation(val, val_faces, None, None, note)
    threshold, note = _threshold_of(val)
    return _Validation(val, val_faces, threshold, source if threshold is not None else None, note)


def _frame_level(
    faces: pd.DataFrame | None, evaluated: pd.DataFrame, validation: _Validation
) -> _FrameLevel:
    """Frame-level figures: each face of an evaluated video is a sample (no CI, see the module
    docstring); the frame threshold is chosen on the faces of the validation videos."""
    if faces is None or faces.empty:
        return _FrameLevel(None, "no per-face rows in this run (it ran without per-face output)")
    scores = faces[faces["video_id"].isin(set(evaluated["video_id"]))]
    if scores.empty:
        return _FrameLevel(scores, "no face of the evaluated rows was scored")
    level = _FrameLevel(
        scores,
        "faces of one video are not independent: no bootstrap intervals",
        report=compute_metrics(scores, _GROUP_BY, threshold=0.5, n_boot=0),
    )
    if validation.source is not None and validation.faces is not None:
        val_ids = set(validation.rows["video_id"]) if validation.rows is not None else set()
        val_faces = validation.faces[validation.faces["video_id"].isin(val_ids)]
        if not scored_rows(val_faces).empty:
            level.threshold, _ = _threshold_of(val_faces)
        if level.threshold is not None:
            level.at_threshold = compute_metrics(
                scores, _GROUP_BY, threshold=level.threshold, n_boot=0
            )
    return level


def _warnings(metrics: RunMetrics) -> list[str]:
    """What a reader must know before reading the figures of a run."""
    warnings = []
    if metrics.untrained:
        warnings.append(
            f"{len(metrics.untrained)} of {len(metrics.models)} models ran with random, untrained "
            f"weights ({', '.join(metrics.untrained)}): these figures measure untrained models"
        )
    if len(metrics.models_digests) > 1:
        warnings.append(
            f"rows were scored by {len(metrics.models_digests)} different model sets "
            f"({', '.join(metrics.models_digests)}): the figures mix them"
        )
    return warnings


def _member_figures(evaluated: pd.DataFrame) -> list[dict[str, Any]]:
    """Each member alone at video level (its ``member_<name>`` column), then the ensemble
    (``score``) on the same rows, as :class:`RunMetrics` ``members`` describes."""
    columns = [c for c in evaluated.columns if c.startswith(MEMBER_PREFIX)]
    out = []
    for column in [*columns, "score"] if columns else []:
        rows = evaluated[evaluated[column].notna()]
        labels = rows["label"].to_numpy(dtype=np.int64)
        scores = rows[column].to_numpy(dtype=np.float64)
        name = column[len(MEMBER_PREFIX) :] if column != "score" else "ensemble"
        both = len(set(labels.tolist())) == 2
        out.append(
            {
                "name": name,
                "n": len(rows),
                "auc": roc_auc(labels, scores) if both else None,
                "ba": balanced_accuracy(labels, scores, 0.5) if both else None,
            }
        )
    return out
