"""Evaluation reports: the paper's Tables 1 and 2 for one or several runs, in Markdown and HTML.

A report reads run folders written by :mod:`batch.evaluate` (format: :mod:`evaluation.runs`),
computes every figure of each run (:mod:`evaluation.run_metrics`: BA at 0.5 and at a
validation-chosen threshold, ROC AUC, bootstrap intervals, frame level, members alone), lays them
out in the paper's tables (:mod:`evaluation.report_tables`) and draws ROC curves
(:mod:`evaluation.plots`).

Several runs are compared side by side, with the paper's own Table 1 and Table 2 figures as
reference rows. Every number in a report is computed from the run's Parquet files; rows that
failed or found no face are excluded from the metrics and counted, never scored 0.5.
``metrics.json`` holds every figure for machines (the model card reads it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evaluation.metrics import roc_auc, roc_curve_points
from evaluation.plots import RocLine, plot_roc
from evaluation.render import dataset_name, dataset_order, render_html, render_markdown
from evaluation.report_tables import (
    PAPER_TABLE1,
    PAPER_TABLE2,
    detail_table,
    manipulation_name,
    manipulation_order,
    members_table,
    runs_table,
    table1,
    table2,
)
from evaluation.run_metrics import LoadedRun, RunMetrics, load_run, scored_rows
from pipeline.errors import ConfigError, UndefinedMetricError
from pipeline.version import __version__

REPORT_JSON = "metrics.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
TITLE = "DeepFake detection: evaluation report"


# ----------------------------------------------------------------------------------------------
# ROC curves


def _roc_line(
    df: pd.DataFrame, label: str, dashed: bool = False, colour: int | None = None
) -> RocLine | None:
    scored = scored_rows(df)
    y = scored["label"].to_numpy()
    s = scored["score"].to_numpy(dtype=np.float64)
    try:
        curve = roc_curve_points(y, s)
    except UndefinedMetricError:
        return None
    return RocLine(label, curve.fpr, curve.tpr, roc_auc(y, s), dashed, colour)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _roc_plots(runs: Sequence[LoadedRun], out: Path) -> dict[str, list[Path]]:
    """Per dataset: every run's video-level curve (solid) and frame-level curve (dashed);
    per run and dataset with several manipulations: one curve per manipulation."""
    plots: dict[str, list[Path]] = {}
    datasets = sorted({d for r in runs for d in r.metrics.datasets}, key=dataset_order)
    for d in datasets:
        lines = []
        for k, run in enumerate(runs):
            name = run.metrics.name
            df = run.video_scores[run.video_scores["dataset"] == d]
            if (line := _roc_line(df, f"{name} video", colour=k)) is not None:
                lines.append(line)
            if run.frame_scores is not None:
                fdf = run.frame_scores[run.frame_scores["dataset"] == d]
                if (line := _roc_line(fdf, f"{name} frame", True, k)) is not None:
                    lines.append(line)
        if lines:
            path = plot_roc(lines, out / f"roc_{_slug(d)}.png", f"ROC: {dataset_name(d)}")
            plots.setdefault("datasets", []).append(path)
    for run in runs:
        for d in run.metrics.datasets:
            df = run.video_scores[run.video_scores["dataset"] == d]
            reals = df[df["label"] == 0]
            fakes = df[df["label"] == 1]
            methods = sorted(set(fakes["manipulation"].astype(str)), key=manipulation_order)
            if len(methods) < 2:
                continue
            lines = []
            for m in methods:
                subset = pd.concat([fakes[fakes["manipulation"] == m], reals])
                if (line := _roc_line(subset, manipulation_name(m))) is not None:
                    lines.append(line)
            if lines:
                path = plot_roc(
                    lines,
                    out / f"roc_{_slug(run.metrics.name)}_{_slug(d)}_manipulations.png",
                    f"ROC per manipulation: {run.metrics.name}, {dataset_name(d)}",
                )
                plots.setdefault(run.metrics.name, []).append(path)
    return plots


# ----------------------------------------------------------------------------------------------
# The report


@dataclass
class ReportFiles:
    markdown: Path
    html: Path
    json: Path
    images: list[Path]
    runs: list[RunMetrics]


def _sections(runs: Sequence[LoadedRun], plots: dict[str, list[Path]]) -> list[tuple[str, Any]]:
    """The report as :data:`~evaluation.render.Items`."""
    metrics = [r.metrics for r in runs]
    items: list[tuple[str, Any]] = [
        ("h1", TITLE),
        (
            "p",
            f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by dfd {__version__}. Metrics "
            "of paper section 4.1.2: balanced accuracy (BA, mean of the recall on fakes and on "
            "reals; a video is called fake when its score >= the threshold) and ROC AUC. Videos "
            "that failed or showed no face are excluded from the metrics and counted.",
        ),
    ]
    for run in runs:
        for w in run.warnings:
            items.append(("warn", f"{run.metrics.name}: {w}"))
    items.append(("table", runs_table(metrics)))
    items.append(("h2", "Datasets (paper Table 1)"))
    items.append(("table", table1(metrics)))
    if any(m.video_at_threshold is not None for m in metrics):
        items.append(("table", table1(metrics, at_threshold=True)))
    t2 = table2(metrics)
    if t2 is not None:
        items.append(("h2", "Manipulations (paper Table 2)"))
        items.append(("table", t2))
        if any(m.video_at_threshold is not None for m in metrics if "ffpp" in m.datasets):
            t2t = table2(metrics, at_threshold=True)
            assert t2t is not None
            items.append(("table", t2t))
    for path in plots.get("datasets", []):
        items.append(("img", path))
    for run in runs:
        items += _run_items(run.metrics, plots.get(run.metrics.name, []))
    return items


def _run_items(m: RunMetrics, plots: Sequence[Path]) -> list[tuple[str, Any]]:
    """One run's section: its facts, members, video and frame details and its ROC plots."""
    items: list[tuple[str, Any]] = [("h2", f"Run {m.name}")]
    facts = [
        f"folder: {m.run_dir}",
        f"evaluated: {m.evaluated_on} ({m.n_evaluated} videos)",
        "validation threshold t*: "
        + (
            f"{m.threshold:.4f}, chosen on {m.threshold_source} (maximises BA)"
            if m.threshold is not None
            else f"none ({m.threshold_note})"
        ),
        f"service version(s): {', '.join(m.service_versions)}; models: "
        + ", ".join(_model_words(x) for x in m.models),
    ]
    items.append(("list", facts))
    if m.members:
        items.append(("table", members_table(m)))
    for level in ("video", "frame"):
        table = detail_table(m, level)
        if table is not None:
            items.append(("table", table))
        elif level == "frame":
            items.append(("p", f"Frame level: {m.frame_note}."))
    for path in plots:
        items.append(("img", path))
    return items


def write_report(
    run_dirs: Sequence[Path],
    out: Path,
    *,
    names: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    val_run: Path | None = None,
) -> ReportFiles:
    """Compute every run's figures and write ``report.md``, ``report.html``, ``metrics.json``
    and the ROC PNGs into ``out``.

    Args:
        run_dirs: run folders, shown in this order.
        out: the report folder (created).
        names: the runs' names in tables (default: folder names, made unique).
        n_boot: bootstrap resamples per confidence interval (0: no intervals).
        seed: bootstrap seed.
        val_run: choose every run's threshold on this run's ``val`` rows.
    """
    if not run_dirs:
        raise ConfigError("a report needs at least one run folder")
    if names is not None and len(names) != len(run_dirs):
        raise ConfigError(f"{len(names)} names for {len(run_dirs)} runs")
    chosen = list(names) if names is not None else _unique_names(run_dirs)
    runs = [
        load_run(Path(d), name=n, n_boot=n_boot, seed=seed, val_run=val_run)
        for d, n in zip(run_dirs, chosen, strict=True)
    ]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = _roc_plots(runs, out)
    items = _sections(runs, plots)
    md = out / REPORT_MD
    md.write_text(render_markdown(items, out), encoding="utf-8")
    page = out / REPORT_HTML
    page.write_text(render_html(items, out, TITLE), encoding="utf-8")
    payload = {
        "generated_at": datetime.now(UTC).isoformat(),
        "service_version": __version__,
        "runs": [r.metrics.model_dump(mode="json") for r in runs],
        "warnings": [f"{r.metrics.name}: {w}" for r in runs for w in r.warnings],
        "paper": {
            "table1": {k: {d: list(v) for d, v in t.items()} for k, t in PAPER_TABLE1.items()},
            "table2": {k: list(v) for k, v in PAPER_TABLE2.items()},
        },
    }
    data = out / REPORT_JSON
    data.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    images = [p for paths in plots.values() for p in paths]
    return ReportFiles(md, page, data, images, [r.metrics for r in runs])


def _unique_names(run_dirs: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for d in run_dirs:
        base = Path(d).resolve().name
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def load_report(path: Path) -> tuple[list[RunMetrics], dict[str, Any]]:
    """The runs of a report folder (or its ``metrics.json``) and the whole payload.

    Raises:
        ConfigError: no ``metrics.json`` there, or it is not a report.
    """
    path = Path(path)
    file = path / REPORT_JSON if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"no {REPORT_JSON} in {path}; write a report with `dfd report`")
    try:
        payload = json.loads(file.read_text(encoding="utf-8"))
        runs = [RunMetrics.model_validate(r) for r in payload["runs"]]
    except (json.JSONDecodeError, KeyError, ValueError) as exc:
        raise ConfigError(f"{file} is not a dfd report ({exc})") from exc
    return runs, payload


def _model_words(model: dict[str, Any]) -> str:
    """One member as the report names it: version, weights status, training data, licence."""
    words = [str(model.get("weights", "?"))]
    if model.get("weights") == "trained" and model.get("trained_on"):
        words.append(f"trained on {model['trained_on']}")
    if model.get("licence"):
        words.append(f"licence {model['licence']}")
    return f"{model['name']} {model.get('version', '?')} ({'; '.join(words)})"
