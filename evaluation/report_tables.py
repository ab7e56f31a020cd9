"""The report's tables: paper Tables 1 and 2 with the paper's own figures, per-run details,
the runs and the members.

Each function takes :class:`~evaluation.run_metrics.RunMetrics` and returns a
:class:`~evaluation.render.Table`; the report (:mod:`evaluation.report`) and the model card
(:mod:`evaluation.model_card`) place them in their documents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from evaluation.group_metrics import ALL, GroupMetrics, MetricReport
from evaluation.render import DASH, Table, dataset_name, dataset_order, number, pct
from evaluation.run_metrics import RunMetrics

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


def manipulation_order(name: str) -> tuple[int, str]:
    """Sort key: ``all`` first, then paper Table 2's order, then the rest by name."""
    if name == ALL:
        return (-1, name)
    order = list(TABLE2_ORDER)
    return (order.index(name) if name in order else len(order), name)


def manipulation_name(manipulation: str) -> str:
    """A manipulation as paper Table 2 spells it."""
    return TABLE2_NAMES.get(manipulation, manipulation)


def _auc(value: float | None) -> str:
    """AUC as the paper prints it: ``0.7705``."""
    return number(value, 4)


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


def _ba_auc(g: GroupMetrics | None) -> list[str]:
    return [pct(g.balanced_accuracy if g else None), _auc(g.auc if g else None)]


def _paper_row(
    label: str, figures: Mapping[str, tuple[float, float]], keys: Sequence[str]
) -> list[str]:
    """A reference row of figures printed in the paper, ``key -> (BA, AUC)``."""
    cells = [label]
    for key in keys:
        ba, auc = figures.get(key, (None, None))
        cells += [pct(ba), _auc(auc)]
    return cells


def _where(at_threshold: bool) -> str:
    return "at the validation-chosen threshold" if at_threshold else "at threshold 0.5"


def table1(runs: Sequence[RunMetrics], *, at_threshold: bool = False) -> Table:
    """Paper Table 1 layout, runs side by side: one row per run, BA and AUC per dataset, and
    the paper's figures as reference rows."""
    datasets = sorted(
        {d for r in runs for d in r.datasets} | {"ffpp", "celebdf", "wdf"}, key=dataset_order
    )
    headers = ["run"]
    for d in datasets:
        headers += [f"{dataset_name(d)} BA", f"{dataset_name(d)} AUC"]
    rows = []
    for run in runs:
        report = run.video_at_threshold if at_threshold else run.video
        cells = [run.name]
        for d in datasets:
            cells += _ba_auc(_row_of(report, d, ALL))
        rows.append(cells)
    rows += [_paper_row(ref, figures, datasets) for ref, figures in PAPER_TABLE1.items()]
    return Table(
        headers,
        rows,
        caption=f"Table 1: BA ({_where(at_threshold)}) and AUC per dataset, video level",
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
    manipulations = sorted(present | set(TABLE2_ORDER), key=manipulation_order)
    headers = ["run"]
    for m in manipulations:
        label = manipulation_name(m)
        headers += [f"{label} BA", f"{label} AUC"]
    rows = []
    for run in ffpp:
        report = run.video_at_threshold if at_threshold else run.video
        cells = [run.name]
        for m in manipulations:
            cells += _ba_auc(_row_of(report, "ffpp", m))
        rows.append(cells)
    rows.append(_paper_row("paper: MeVer (Table 2)", PAPER_TABLE2, manipulations))
    return Table(
        headers,
        rows,
        caption=f"Table 2: BA ({_where(at_threshold)}) and AUC per FF++ manipulation, video level",
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
            dataset_order(g.group["dataset"]),
            manipulation_order(g.group["manipulation"]),
        ),
    )
    for g in ordered:
        d, m = g.group["dataset"], g.group["manipulation"]
        t = _row_of(at_t, d, m)
        rows.append(
            [
                dataset_name(d),
                "all" if m == ALL else manipulation_name(m),
                str(g.n_real),
                str(g.n_fake),
                str(g.n_excluded),
                _with_ci(pct(g.balanced_accuracy), g.balanced_accuracy_ci, True),
                DASH
                if t is None
                else _with_ci(pct(t.balanced_accuracy), t.balanced_accuracy_ci, True),
                _with_ci(_auc(g.auc), g.auc_ci, False),
                pct(g.tpr),
                pct(g.tnr),
            ]
        )
        for metric, reason in g.undefined.items():
            notes.append(f"{dataset_name(d)} / {m}: {metric} undefined: {reason}")
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
                ", ".join(dataset_name(d) for d in r.datasets),
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


def members_table(m: RunMetrics) -> Table:
    rows = [
        [f["name"], str(f["n"]), pct(f["auc"], 1, unit=""), pct(f["ba"], 1, unit="")]
        for f in m.members
    ]
    return Table(
        ["member", "videos", "AUC %", "BA % (t = 0.5)"],
        rows,
        caption=f"Run {m.name}: each member alone and the ensemble, video level, all rows scored",
        notes=["No confidence intervals here; the ensemble's are in the tables below."],
    )
