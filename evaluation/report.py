"""Evaluation reports: the paper's Tables 1 and 2 for one or several runs, in Markdown and HTML.

A report reads run folders written by :mod:`batch.evaluate` and computes, per run (paper 4.1.2):

* balanced accuracy (BA) at the threshold 0.5 and at a threshold chosen on a validation split
  (the run's own ``val`` rows, or another run's), and ROC AUC, with stratified bootstrap 95%
  confidence intervals, per dataset (Table 1 layout) and per manipulation (Table 2 layout);
* the same at frame level (every scored face is a sample, labelled with its video's label),
  without intervals: faces of one video are not independent, so a per-face bootstrap would
  understate the uncertainty;
* ROC curves (PNG, drawn with Pillow).

Several runs are compared side by side, with the paper's own Table 1 and Table 2 figures as
reference rows. Every number in a report is computed here from the run's Parquet files; rows that
failed or found no face are excluded from the metrics and counted, never scored 0.5.
``metrics.json`` holds every figure for machines (the model card reads it).
"""

from __future__ import annotations

import html
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict

from batch.evaluate import MEMBER_PREFIX, RunFolder
from dfd.version import __version__
from evaluation.metrics import (
    ALL,
    GroupMetrics,
    MetricReport,
    balanced_accuracy,
    choose_threshold,
    compute_metrics,
    roc_auc,
    roc_curve_points,
)
from pipeline.errors import ConfigError, UndefinedMetricError

REPORT_JSON = "metrics.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"

#: Display names and order of the datasets (paper Table 1 spells them this way).
DATASET_NAMES: dict[str, str] = {
    "ffpp": "FaceForensics++",
    "celebdf": "CelebDF",
    "wdf": "WildDeepFake",
    "dfdc": "DFDC",
    "csv": "CSV manifest",
}
#: Paper Table 2's manipulations, in its order, by FF++ folder name.
TABLE2_ORDER: tuple[str, ...] = ("FaceSwap", "Deepfakes", "NeuralTextures", "Face2Face")
TABLE2_NAMES: dict[str, str] = {"Deepfakes": "DeepFakes"}

#: Paper Table 1: (BA, AUC) per dataset; BA as a fraction.
PAPER_TABLE1: dict[str, dict[str, tuple[float, float]]] = {
    "paper: MeVer (Table 1)": {
        "ffpp": (0.7031, 0.7705),
        "celebdf": (0.8275, 0.9259),
        "wdf": (0.8494, 0.9373),
    },
    "paper: DeepWare (Table 1)": {
        "ffpp": (0.6877, 0.7681),
        "celebdf": (0.7754, 0.9493),
        "wdf": (0.6696, 0.8646),
    },
}
#: Paper Table 2: (BA, AUC) per FF++ manipulation, MeVer service.
PAPER_TABLE2: dict[str, tuple[float, float]] = {
    "FaceSwap": (0.7840, 0.8674),
    "Deepfakes": (0.8620, 0.9468),
    "NeuralTextures": (0.5765, 0.6276),
    "Face2Face": (0.5902, 0.6402),
}

DASH = "—"


# ----------------------------------------------------------------------------------------------
# Metrics of one run


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
class _Run:
    """A loaded run: its metrics and the scores the ROC plots need."""

    metrics: RunMetrics
    video_scores: pd.DataFrame
    frame_scores: pd.DataFrame | None = None
    warnings: list[str] = field(default_factory=list)


def _frame(table: Any) -> pd.DataFrame:
    return table.to_pandas() if table is not None else pd.DataFrame()


def _scored(df: pd.DataFrame) -> pd.DataFrame:
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
        run_dir: a folder written by :func:`batch.evaluate.run_evaluation`.
        name: the run's name in tables (default: the folder name).
        n_boot: bootstrap resamples per confidence interval (0: no intervals).
        seed: bootstrap seed.
        val_run: take the validation rows (for the chosen threshold) from this run instead
            of ``run_dir``'s own ``val`` rows.

    Raises:
        ConfigError: not a run folder, or no predictions yet.
    """
    return _load_run(Path(run_dir), name=name, n_boot=n_boot, seed=seed, val_run=val_run).metrics


def _load_run(
    run_dir: Path,
    *,
    name: str | None,
    n_boot: int,
    seed: int,
    val_run: Path | None,
) -> _Run:
    info, predictions, faces = _load(run_dir)
    splits = set(predictions["split"].astype(str))
    eval_splits, evaluated_on = _evaluation_rows(splits)
    evaluated = predictions[predictions["split"].isin(eval_splits)]
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
    threshold: float | None = None
    note = ""
    if val is None or val.empty:
        note = (
            "no validation rows: evaluate the val split too (same --out, --split val) or pass "
            "another run's val rows"
        )
        source = None
    else:
        scored_val = _scored(val)
        threshold, note = _threshold(
            scored_val["label"].to_numpy(), scored_val["score"].to_numpy(dtype=np.float64)
        )
        if threshold is None:
            source = None

    group_by = ("dataset", "manipulation")
    video = compute_metrics(evaluated, group_by, threshold=0.5, n_boot=n_boot, seed=seed)
    video_t = (
        None
        if threshold is None
        else compute_metrics(evaluated, group_by, threshold=threshold, n_boot=n_boot, seed=seed)
    )

    frame = frame_t = None
    frame_threshold = None
    frame_scores = None
    if faces is None or faces.empty:
        frame_note = "no per-face rows in this run (it ran without per-face output)"
    else:
        frame_scores = faces[faces["video_id"].isin(set(evaluated["video_id"]))]
        frame_note = "faces of one video are not independent: no bootstrap intervals"
        if frame_scores.empty:
            frame_note = "no face of the evaluated rows was scored"
        else:
            # Frame level: each face is a sample (no CI, see the module docstring).
            frame = compute_metrics(frame_scores, group_by, threshold=0.5, n_boot=0)
        if source is not None and val_faces is not None and not frame_scores.empty:
            val_ids = set(val["video_id"]) if val is not None else set()
            vf = _scored(val_faces[val_faces["video_id"].isin(val_ids)])
            if not vf.empty:
                frame_threshold, _ = _threshold(
                    vf["label"].to_numpy(), vf["score"].to_numpy(dtype=np.float64)
                )
            if frame_threshold is not None:
                frame_t = compute_metrics(
                    frame_scores, group_by, threshold=frame_threshold, n_boot=0
                )

    fingerprint = info.get("fingerprint", {})
    models = list(fingerprint.get("models", []))
    errors = predictions[predictions["error"].notna()]
    members = _member_figures(evaluated)
    metrics = RunMetrics(
        name=name or run_dir.resolve().name,
        run_dir=str(run_dir.resolve()),
        datasets=sorted(set(predictions["dataset"].astype(str)), key=_dataset_order),
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
        threshold=threshold,
        threshold_source=source,
        threshold_note=note,
        video=video,
        video_at_threshold=video_t,
        frame_threshold=frame_threshold,
        frame=frame,
        frame_at_threshold=frame_t,
        frame_note=frame_note,
        members=members,
    )
    warnings = []
    if metrics.untrained:
        warnings.append(
            f"{len(metrics.untrained)} of {len(models)} models ran with random, untrained "
            f"weights ({', '.join(metrics.untrained)}): these figures measure untrained models"
        )
    if len(metrics.models_digests) > 1:
        warnings.append(
            f"rows were scored by {len(metrics.models_digests)} different model sets "
            f"({', '.join(metrics.models_digests)}): the figures mix them"
        )
    return _Run(metrics, evaluated, frame_scores, warnings)


def _dataset_order(name: str) -> tuple[int, str]:
    order = list(DATASET_NAMES)
    return (order.index(name) if name in order else len(order), name)


def _manipulation_order(name: str) -> tuple[int, str]:
    if name == ALL:
        return (-1, name)
    order = list(TABLE2_ORDER)
    return (order.index(name) if name in order else len(order), name)


# ----------------------------------------------------------------------------------------------
# Tables, rendered as Markdown and HTML from one structure


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        out = []
        if self.caption:
            out += [f"**{self.caption}**", ""]
        out.append(line(self.headers))
        out.append(
            "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(self.headers))) + "|"
        )
        out += [line(r) for r in self.rows]
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"

    def html(self) -> str:
        esc = html.escape
        head = "".join(f"<th>{esc(h)}</th>" for h in self.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in self.rows
        )
        caption = f"<caption>{esc(self.caption)}</caption>" if self.caption else ""
        notes = (
            "<ul class='notes'>" + "".join(f"<li>{esc(n)}</li>" for n in self.notes) + "</ul>"
            if self.notes
            else ""
        )
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"


def pct(value: float | None) -> str:
    """BA as the paper prints it: ``70.31%``."""
    return DASH if value is None else f"{100 * value:.2f}%"


def auc_text(value: float | None) -> str:
    return DASH if value is None else f"{value:.4f}"


def _with_ci(text: str, ci: tuple[float, float] | None, percent: bool) -> str:
    if ci is None or text == DASH:
        return text
    low, high = ci
    if percent:
        return f"{text} [{100 * low:.1f}, {100 * high:.1f}]"
    return f"{text} [{low:.3f}, {high:.3f}]"


def _row_of(report: MetricReport | None, dataset: str, manipulation: str) -> GroupMetrics | None:
    if report is None:
        return None
    try:
        return report.get(dataset=dataset, manipulation=manipulation)
    except KeyError:
        return None


def table1(runs: Sequence[RunMetrics], *, at_threshold: bool = False) -> Table:
    """Paper Table 1 layout, runs side by side: one row per run, BA and AUC per dataset, and
    the paper's figures as reference rows."""
    datasets = sorted(
        {d for r in runs for d in r.datasets} | {"ffpp", "celebdf", "wdf"}, key=_dataset_order
    )
    headers = ["run"]
    for d in datasets:
        headers += [f"{DATASET_NAMES.get(d, d)} BA", f"{DATASET_NAMES.get(d, d)} AUC"]
    rows = []
    for run in runs:
        report = run.video_at_threshold if at_threshold else run.video
        cells = [run.name]
        for d in datasets:
            g = _row_of(report, d, ALL)
            cells += [pct(g.balanced_accuracy if g else None), auc_text(g.auc if g else None)]
        rows.append(cells)
    for ref, figures in PAPER_TABLE1.items():
        cells = [ref]
        for d in datasets:
            ba, auc = figures.get(d, (None, None))
            cells += [pct(ba), auc_text(auc)]
        rows.append(cells)
    where = "at the validation-chosen threshold" if at_threshold else "at threshold 0.5"
    return Table(
        headers,
        rows,
        caption=f"Table 1: BA ({where}) and AUC per dataset, video level",
        notes=[
            "paper rows: figures printed in the paper (its own models and data), for reference; "
            "the paper does not state its decision threshold",
        ],
    )


def table2(runs: Sequence[RunMetrics], *, at_threshold: bool = False) -> Table | None:
    """Paper Table 2 layout for FF++ runs: BA and AUC per manipulation (each method's fakes
    against all of the run's real videos), with the paper's figures as a reference row."""
    ffpp = [r for r in runs if "ffpp" in r.datasets]
    if not ffpp:
        return None
    present = {
        row.group["manipulation"]
        for r in ffpp
        for row in r.video.rows
        if row.group.get("dataset") == "ffpp" and row.group["manipulation"] != ALL
    }
    manipulations = sorted(present | set(TABLE2_ORDER), key=_manipulation_order)
    headers = ["run"]
    for m in manipulations:
        label = TABLE2_NAMES.get(m, m)
        headers += [f"{label} BA", f"{label} AUC"]
    rows = []
    for run in ffpp:
        report = run.video_at_threshold if at_threshold else run.video
        cells = [run.name]
        for m in manipulations:
            g = _row_of(report, "ffpp", m)
            cells += [pct(g.balanced_accuracy if g else None), auc_text(g.auc if g else None)]
        rows.append(cells)
    cells = ["paper: MeVer (Table 2)"]
    for m in manipulations:
        ba, auc = PAPER_TABLE2.get(m, (None, None))
        cells += [pct(ba), auc_text(auc)]
    rows.append(cells)
    where = "at the validation-chosen threshold" if at_threshold else "at threshold 0.5"
    return Table(
        headers,
        rows,
        caption=f"Table 2: BA ({where}) and AUC per FF++ manipulation, video level",
    )


def detail_table(run: RunMetrics, level: str) -> Table | None:
    """All groups of one run at ``level`` ``"video"`` (with 95% CIs) or ``"frame"``."""
    base, at_t = (
        (run.video, run.video_at_threshold)
        if level == "video"
        else (run.frame, run.frame_at_threshold)
    )
    if base is None:
        return None
    threshold = run.threshold if level == "video" else run.frame_threshold
    t_label = DASH if threshold is None else f"{threshold:.3f}"
    headers = [
        "dataset",
        "manipulation",
        "real",
        "fake",
        "excluded",
        "BA @ 0.5",
        f"BA @ t* = {t_label}",
        "AUC",
        "TPR @ 0.5",
        "TNR @ 0.5",
    ]
    rows, notes = [], []
    ordered = sorted(
        base.rows,
        key=lambda g: (
            _dataset_order(g.group["dataset"]),
            _manipulation_order(g.group["manipulation"]),
        ),
    )
    for g in ordered:
        d, m = g.group["dataset"], g.group["manipulation"]
        t = _row_of(at_t, d, m)
        rows.append(
            [
                DATASET_NAMES.get(d, d),
                "all" if m == ALL else TABLE2_NAMES.get(m, m),
                str(g.n_real),
                str(g.n_fake),
                str(g.n_excluded),
                _with_ci(pct(g.balanced_accuracy), g.balanced_accuracy_ci, True),
                DASH
                if t is None
                else _with_ci(pct(t.balanced_accuracy), t.balanced_accuracy_ci, True),
                _with_ci(auc_text(g.auc), g.auc_ci, False),
                pct(g.tpr),
                pct(g.tnr),
            ]
        )
        for metric, reason in g.undefined.items():
            notes.append(f"{DATASET_NAMES.get(d, d)} / {m}: {metric} undefined: {reason}")
    caption = f"{'Video' if level == 'video' else 'Frame'} level"
    if level == "video" and base.n_boot:
        caption += f" (95% bootstrap CIs in brackets, {base.n_boot} stratified resamples)"
    if level == "frame":
        notes.insert(0, run.frame_note)
    notes.insert(0, "manipulation rows: that method's fakes against all real videos of the dataset")
    return Table(headers, rows, caption=caption, notes=sorted(set(notes), key=notes.index))


def runs_table(runs: Sequence[RunMetrics]) -> Table:
    headers = [
        "run",
        "datasets",
        "evaluated",
        "videos",
        "scored",
        "no face",
        "errors",
        "models",
        "t* (source)",
    ]
    rows = []
    for r in runs:
        trained = len(r.models) - len(r.untrained)
        models = (
            f"{r.models_digests[0] if r.models_digests else '?'}: {trained}/{len(r.models)} trained"
        )
        t = DASH if r.threshold is None else f"{r.threshold:.3f} ({r.threshold_source})"
        rows.append(
            [
                r.name,
                ", ".join(DATASET_NAMES.get(d, d) for d in r.datasets),
                f"{r.evaluated_on}: {r.n_evaluated}",
                str(r.n_rows),
                str(r.n_rows - r.n_no_face - r.n_errors),
                str(r.n_no_face),
                str(r.n_errors)
                + (
                    " (" + ", ".join(f"{k}: {v}" for k, v in r.error_kinds.items()) + ")"
                    if r.n_errors
                    else ""
                ),
                models,
                t,
            ]
        )
    return Table(headers, rows, caption="Runs")


# ----------------------------------------------------------------------------------------------
# ROC curves (Pillow; no plotting library needed)

_PALETTE = (
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


@dataclass
class RocLine:
    label: str
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float | None
    dashed: bool = False
    #: Index into the palette; None: the line's position.
    colour: int | None = None


def _dashed(
    draw: ImageDraw.ImageDraw,
    points: list[tuple[float, float]],
    fill: tuple[int, ...],
    width: int,
    dash: float = 8.0,
) -> None:
    """A polyline drawn in dashes of ``dash`` pixels (Pillow has no dash style)."""
    on, carry = True, 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        length = math.hypot(x1 - x0, y1 - y0)
        pos = 0.0
        while pos < length:
            step = min(dash - carry, length - pos)
            if on:
                a, b = pos / length, (pos + step) / length
                draw.line(
                    [
                        (x0 + (x1 - x0) * a, y0 + (y1 - y0) * a),
                        (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b),
                    ],
                    fill=fill,
                    width=width,
                )
            pos += step
            carry += step
            if carry >= dash:
                on, carry = not on, 0.0


def plot_roc(lines: Sequence[RocLine], path: Path, title: str, size: int = 560) -> Path:
    """Draw ROC curves (false positive rate on x, true positive rate on y) to a PNG.

    Args:
        lines: one curve each; ``fpr``/``tpr`` as returned by
            :func:`evaluation.metrics.roc_curve_points`.
        path: the PNG to write.
        title: drawn above the plot.
        size: width and height in pixels.
    """
    left, right, top, bottom = 64, 16, 40, 52
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=13)
    small = ImageFont.load_default(size=11)
    x0, y0, x1, y1 = left, top, size - right, size - bottom
    w, h = x1 - x0, y1 - y0

    def at(fx: float, fy: float) -> tuple[float, float]:
        return (x0 + fx * w, y1 - fy * h)

    for k in range(6):
        v = k / 5
        gx, _ = at(v, 0)
        _, gy = at(0, v)
        draw.line([(gx, y0), (gx, y1)], fill=(230, 230, 230))
        draw.line([(x0, gy), (x1, gy)], fill=(230, 230, 230))
        draw.text((gx, y1 + 6), f"{v:.1f}", fill="black", font=small, anchor="mt")
        draw.text((x0 - 6, gy), f"{v:.1f}", fill="black", font=small, anchor="rm")
    draw.rectangle([x0, y0, x1, y1], outline="black")
    _dashed(draw, [at(0, 0), at(1, 1)], (150, 150, 150), 1)
    draw.text(
        ((x0 + x1) / 2, size - 14),
        "false positive rate (reals called fake)",
        fill="black",
        font=font,
        anchor="mm",
    )
    axis = Image.new("RGBA", (h, 18), (255, 255, 255, 0))
    ImageDraw.Draw(axis).text(
        (h / 2, 9), "true positive rate (fakes caught)", fill="black", font=font, anchor="mm"
    )
    image.paste(axis.rotate(90, expand=True), (8, y0), axis.rotate(90, expand=True))
    draw.text((size / 2, 18), title, fill="black", font=font, anchor="mm")
    legend: list[tuple[str, tuple[int, int, int], bool]] = []
    for i, line in enumerate(lines):
        colour = _PALETTE[(i if line.colour is None else line.colour) % len(_PALETTE)]
        points = [at(float(fx), float(fy)) for fx, fy in zip(line.fpr, line.tpr, strict=True)]
        if len(points) >= 2:
            if line.dashed:
                _dashed(draw, points, colour, 2)
            else:
                draw.line(points, fill=colour, width=2, joint="curve")
        auc = DASH if line.auc is None else f"{line.auc:.3f}"
        legend.append((f"{line.label} (AUC {auc})", colour, line.dashed))
    if legend:
        line_h = 16
        text_w = max(draw.textlength(t, font=small) for t, _, _ in legend)
        bx1, by1 = x1 - 6, y1 - 6
        bx0, by0 = bx1 - text_w - 40, by1 - line_h * len(legend) - 8
        draw.rectangle([bx0, by0, bx1, by1], fill="white", outline=(180, 180, 180))
        for k, (text, colour, dashed) in enumerate(legend):
            yy = by0 + 4 + line_h * k + line_h / 2
            if dashed:
                _dashed(draw, [(bx0 + 6, yy), (bx0 + 30, yy)], colour, 2, dash=5)
            else:
                draw.line([(bx0 + 6, yy), (bx0 + 30, yy)], fill=colour, width=2)
            draw.text((bx0 + 36, yy), text, fill="black", font=small, anchor="lm")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def _roc_line(
    df: pd.DataFrame, label: str, dashed: bool = False, colour: int | None = None
) -> RocLine | None:
    scored = _scored(df)
    y = scored["label"].to_numpy()
    s = scored["score"].to_numpy(dtype=np.float64)
    try:
        curve = roc_curve_points(y, s)
    except UndefinedMetricError:
        return None
    return RocLine(label, curve.fpr, curve.tpr, roc_auc(y, s), dashed, colour)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _roc_plots(runs: Sequence[_Run], out: Path) -> dict[str, list[Path]]:
    """Per dataset: every run's video-level curve (solid) and frame-level curve (dashed);
    per run and dataset with several manipulations: one curve per manipulation."""
    plots: dict[str, list[Path]] = {}
    datasets = sorted({d for r in runs for d in r.metrics.datasets}, key=_dataset_order)
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
            path = plot_roc(lines, out / f"roc_{_slug(d)}.png", f"ROC: {DATASET_NAMES.get(d, d)}")
            plots.setdefault("datasets", []).append(path)
    for run in runs:
        for d in run.metrics.datasets:
            df = run.video_scores[run.video_scores["dataset"] == d]
            reals = df[df["label"] == 0]
            fakes = df[df["label"] == 1]
            methods = sorted(set(fakes["manipulation"].astype(str)), key=_manipulation_order)
            if len(methods) < 2:
                continue
            lines = []
            for m in methods:
                subset = pd.concat([fakes[fakes["manipulation"] == m], reals])
                if (line := _roc_line(subset, TABLE2_NAMES.get(m, m))) is not None:
                    lines.append(line)
            if lines:
                path = plot_roc(
                    lines,
                    out / f"roc_{_slug(run.metrics.name)}_{_slug(d)}_manipulations.png",
                    f"ROC per manipulation: {run.metrics.name}, {DATASET_NAMES.get(d, d)}",
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


def _sections(runs: Sequence[_Run], plots: dict[str, list[Path]]) -> list[tuple[str, Any]]:
    """The report as :data:`Items`."""
    metrics = [r.metrics for r in runs]
    items: list[tuple[str, Any]] = [
        ("h1", "DeepFake detection: evaluation report"),
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
        m = run.metrics
        items.append(("h2", f"Run {m.name}"))
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
        for path in plots.get(m.name, []):
            items.append(("img", path))
    return items


#: A document as ``(kind, content)`` items; kinds: h1, h2, h3, p, warn, table, img, list.
Items = Sequence[tuple[str, Any]]


def render_markdown(items: Items, base: Path) -> str:
    """Markdown of ``items``; image paths are written relative to ``base``."""
    parts = []
    for kind, content in items:
        if kind in ("h1", "h2", "h3"):
            parts.append("#" * int(kind[1]) + f" {content}\n")
        elif kind == "p":
            parts.append(f"{content}\n")
        elif kind == "warn":
            parts.append(f"> **WARNING**: {content}\n")
        elif kind == "table":
            parts.append(content.markdown())
        elif kind == "img":
            parts.append(f"![{content.stem}]({content.relative_to(base).as_posix()})\n")
        elif kind == "list":
            parts.append("\n".join(f"- {x}" for x in content) + "\n")
    return "\n".join(parts)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
caption { font-weight: bold; text-align: left; padding: 0.3em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td:first-child { white-space: nowrap; }
.warn { background: #fff3cd; border: 1px solid #e0b000; padding: 0.6em; margin: 0.5em 0; }
.notes { font-size: 0.85em; color: #555; }
img { max-width: 560px; margin: 0.5em 1em 0.5em 0; }
"""


def render_html(items: Items, base: Path, title: str) -> str:
    """A standalone HTML page of ``items``; image paths are written relative to ``base``."""
    esc = html.escape
    parts = []
    for kind, content in items:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{esc(content)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{esc(content)}</p>")
        elif kind == "warn":
            parts.append(f"<div class='warn'><strong>WARNING</strong>: {esc(content)}</div>")
        elif kind == "table":
            parts.append(content.html())
        elif kind == "img":
            src = esc(content.relative_to(base).as_posix())
            parts.append(f"<img src='{src}' alt='{esc(content.stem)}'>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{esc(x)}</li>" for x in content) + "</ul>")
    body = "\n".join(parts)
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


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
        _load_run(Path(d), name=n, n_boot=n_boot, seed=seed, val_run=val_run)
        for d, n in zip(run_dirs, chosen, strict=True)
    ]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = _roc_plots(runs, out)
    items = _sections(runs, plots)
    md = out / REPORT_MD
    md.write_text(render_markdown(items, out), encoding="utf-8")
    page = out / REPORT_HTML
    page.write_text(
        render_html(items, out, "DeepFake detection: evaluation report"), encoding="utf-8"
    )
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


def members_table(m: RunMetrics) -> Table:
    def pct(x: float | None) -> str:
        return DASH if x is None else f"{100 * x:.1f}"

    rows = [[f["name"], str(f["n"]), pct(f["auc"]), pct(f["ba"])] for f in m.members]
    return Table(
        ["member", "videos", "AUC %", "BA % (t = 0.5)"],
        rows,
        caption=f"Run {m.name}: each member alone and the ensemble, video level, all rows scored",
        notes=["No confidence intervals here; the ensemble's are in the tables below."],
    )
