"""Adversarial robustness figures (paper 4.2.3, Table 3) and their report.

Two halves:

* **How visible an attack is**, per face: L1 / L2 / Linf norms of the perturbation, PSNR and SSIM
  between the clean and the attacked crop. Crops are ``(N, 3, H, W)`` float in [0, 1] (the
  detectors' input space, where the attack works), so norms are in those units: a norm-inf of
  0.2 is 51 grey levels.
* **What an attack run did**, per run folder written by :mod:`batch.attack`: balanced accuracy
  clean versus attacked per dataset and norm (Table 3's layout), AUC, attack success rate,
  perturbation size and visibility, plus the beyond-the-paper runs (transfer from one member,
  black-box query budgets against a per-key rate limit, purification defences), rendered to
  Markdown and HTML with a strip of example faces.

Conventions are those of :mod:`evaluation.metrics`: label 1 = fake, a video is predicted fake when
``score >= threshold``, failed rows (``error`` set) and rows without a face (no score) are excluded
from every metric and counted.
"""

from __future__ import annotations

import html
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

from evaluation.metrics import compute_metrics
from pipeline.errors import BadInputError, MissingFileError

# ----------------------------------------------------------------------------------------------
# Per-face perturbation size and visibility

#: SSIM constants of Wang et al. (2004) for a data range of 1.
_SSIM_K1, _SSIM_K2 = 0.01, 0.03
_SSIM_WINDOW, _SSIM_SIGMA = 11, 1.5


def _as_tensor(x: Any) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.detach().to(torch.float64)


def _check_pair(clean: torch.Tensor, attacked: torch.Tensor) -> None:
    if clean.shape != attacked.shape or clean.ndim != 4:
        raise ValueError(
            f"clean and attacked must be (N, C, H, W) of equal shape, got "
            f"{tuple(clean.shape)} and {tuple(attacked.shape)}"
        )


def perturbation_norms(clean: Any, attacked: Any) -> dict[str, np.ndarray]:
    """L1, L2 and Linf norms of ``attacked - clean`` per face.

    Args:
        clean, attacked: ``(N, C, H, W)`` float in [0, 1] (tensor or array).

    Returns:
        ``{"l1": (N,), "l2": (N,), "linf": (N,)}`` float64, over all ``C*H*W`` values of a face.
    """
    a, b = _as_tensor(clean), _as_tensor(attacked)
    _check_pair(a, b)
    delta = (b - a).reshape(len(a), -1)
    return {
        "l1": delta.abs().sum(dim=1).numpy(),
        "l2": delta.pow(2).sum(dim=1).sqrt().numpy(),
        "linf": delta.abs().amax(dim=1).numpy() if delta.shape[1] else np.zeros(len(a)),
    }


def psnr(clean: Any, attacked: Any) -> np.ndarray:
    """Peak signal-to-noise ratio per face, in dB, for a peak of 1.0; ``inf`` when identical.

    Args:
        clean, attacked: ``(N, C, H, W)`` float in [0, 1].

    Returns:
        ``(N,)`` float64.
    """
    a, b = _as_tensor(clean), _as_tensor(attacked)
    _check_pair(a, b)
    mse = (b - a).pow(2).reshape(len(a), -1).mean(dim=1).numpy()
    with np.errstate(divide="ignore"):
        return np.where(mse > 0, -10.0 * np.log10(np.maximum(mse, 1e-300)), np.inf)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def ssim(clean: Any, attacked: Any) -> np.ndarray:
    """Structural similarity per face (Wang et al. 2004), mean over channels, in [-1, 1].

    The reference formulation: an 11x11 Gaussian window with sigma 1.5, ``K1 = 0.01``,
    ``K2 = 0.03``, data range 1, and statistics only where the window fits inside the image
    ("valid", as in the authors' MATLAB code). Images smaller than 11 pixels use the largest odd
    window that fits. 1.0 means identical.

    Args:
        clean, attacked: ``(N, C, H, W)`` float in [0, 1].

    Returns:
        ``(N,)`` float64.
    """
    a, b = _as_tensor(clean), _as_tensor(attacked)
    _check_pair(a, b)
    n, c, h, w = a.shape
    size = min(_SSIM_WINDOW, h, w)
    size -= 1 - size % 2  # odd
    g = _gaussian_window(size, _SSIM_SIGMA if size == _SSIM_WINDOW else size / 7.0)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, size, size).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)

    c1, c2 = _SSIM_K1**2, _SSIM_K2**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return value.reshape(n, -1).mean(dim=1).numpy()


def amplify(delta: np.ndarray) -> tuple[np.ndarray, float]:
    """A perturbation made visible: ``(H, W, 3)`` float -> uint8 image and the factor used.

    Grey (128) is no change; the largest change in either direction reaches 0 or 255. Returns
    the image and the amplification factor (how many times larger than life it is shown).
    """
    peak = float(np.abs(delta).max()) if delta.size else 0.0
    factor = 0.5 / peak if peak > 0 else 1.0
    image = np.clip(0.5 + delta * factor, 0.0, 1.0)
    return (image * 255.0 + 0.5).astype(np.uint8), factor


# ----------------------------------------------------------------------------------------------
# Run summaries


class ExampleFace(BaseModel):
    """One face of the strip: files relative to the run folder, scores in [0, 1]."""

    model_config = ConfigDict(frozen=True)

    video_id: str
    label: int
    clean_score: float
    attacked_score: float
    amplification: float
    clean: str
    perturbation: str
    attacked: str


class RunSummary(BaseModel):
    """The figures of one attack run (one dataset, one attack), computed from its Parquet rows.

    BA and AUC are over videos with a score (rows that failed or had no face are excluded and
    counted). ``attack_success_rate``: share of the fake videos detected before the attack
    (clean score >= threshold) that score below the threshold after it (the attack's target is
    "real"). ``face_success_rate``: the same over faces of every video. Perturbation figures are
    means over attacked faces; PSNR leaves out faces the attack did not change (infinite PSNR).
    """

    model_config = ConfigDict(frozen=True)

    run: str
    path: str
    dataset: str
    kind: str
    attack: str
    norm: str
    eps: float
    eps_step: float
    max_iter: int
    transfer_from: str | None
    black_box: str | None
    defence: str | None
    rate_per_min: int
    threshold: float
    untrained_members: list[str]
    n_rows: int
    n_errors: int
    n_no_face: int
    n_scored: int
    n_faces: int
    ba_clean: float | None
    ba_attacked: float | None
    auc_clean: float | None
    auc_attacked: float | None
    undefined: str
    n_fakes_detected: int
    attack_success_rate: float | None
    face_success_rate: float | None
    l1: float | None
    l2: float | None
    linf: float | None
    psnr: float | None
    ssim: float | None
    queries_per_face: float | None
    queries_per_video: float | None
    minutes_per_video: float | None
    queries_total: int
    ba_defended_clean: float | None
    ba_defended_attacked: float | None
    examples: list[ExampleFace]


#: Columns a summary reads; a run with no row yet (or error rows only) lacks some.
_SUMMARY_COLUMNS = (
    "video_id", "label", "clean_score", "attacked_score", "error", "n_faces",
    "n_faces_fake_clean", "n_faces_flipped", "n_unchanged", "queries_total", "l1_mean",
    "l2_mean", "linf_mean", "psnr_mean", "ssim_mean", "defended_clean_score",
    "defended_attacked_score", "example",
)  # fmt: skip


def _read_run(run_dir: Path) -> tuple[dict[str, Any], Any]:
    from batch.attack import read_config, read_scores

    config = read_config(run_dir)
    frame = read_scores(run_dir)
    for column in _SUMMARY_COLUMNS:
        if column not in frame:
            frame[column] = None
    return config, frame


def _ba_auc(
    frame: Any, column: str, dataset: str, threshold: float
) -> tuple[float | None, float | None, str]:
    if column not in frame or frame[column].isna().all():
        return None, None, f"no {column}"
    records = [
        {"dataset": dataset, "label": int(r["label"]), "score": r[column], "error": r["error"]}
        for r in frame.to_dict("records")
    ]
    row = compute_metrics(records, ("dataset",), threshold=threshold, n_boot=0).rows[0]
    return row.balanced_accuracy, row.auc, "; ".join(sorted(set(row.undefined.values())))


def _weighted(frame: Any, column: str, weights: Any) -> float | None:
    values = frame[column].to_numpy(dtype=np.float64) if column in frame else np.zeros(0)
    w = np.asarray(weights, dtype=np.float64)
    keep = np.isfinite(values) & (w > 0)
    if not keep.any():
        return None
    return float((values[keep] * w[keep]).sum() / w[keep].sum())


def summarize_run(run_dir: Path, threshold: float = 0.5) -> RunSummary:
    """Figures of one run folder written by :func:`batch.attack.run_attack`.

    Raises:
        MissingFileError: ``run_dir`` has no ``attack.json``.
    """
    run_dir = Path(run_dir)
    config, frame = _read_run(run_dir)
    attack = config["attack"]
    dataset = str(config["dataset"])
    failed = frame["error"].notna() if "error" in frame else np.zeros(len(frame), bool)
    ok = frame[~failed]
    scored = ok[ok["clean_score"].notna()]
    n_faces = ok["n_faces"].fillna(0).to_numpy() if "n_faces" in ok else np.zeros(len(ok))
    ba_c, auc_c, why_c = _ba_auc(frame, "clean_score", dataset, threshold)
    ba_a, auc_a, why_a = _ba_auc(frame, "attacked_score", dataset, threshold)
    fakes = scored[scored["label"] == 1]
    detected = fakes[fakes["clean_score"] >= threshold]
    asr = float((detected["attacked_score"] < threshold).mean()) if len(detected) else None
    fake_faces = float(ok["n_faces_fake_clean"].fillna(0).sum()) if len(ok) else 0.0
    flipped = float(ok["n_faces_flipped"].fillna(0).sum()) if len(ok) else 0.0
    changed = n_faces - (ok["n_unchanged"].fillna(0).to_numpy() if len(ok) else 0)
    queries_total = int(ok["queries_total"].fillna(0).sum()) if len(ok) else 0
    black_box = attack.get("black_box")
    with_faces = ok[ok["n_faces"].fillna(0) > 0] if len(ok) else ok
    per_video = queries_total / len(with_faces) if black_box and len(with_faces) else None
    rate = int(attack.get("rate_per_min", 60))
    ba_dc = ba_da = None
    if attack.get("defence"):
        ba_dc, _, _ = _ba_auc(frame, "defended_clean_score", dataset, threshold)
        ba_da, _, _ = _ba_auc(frame, "defended_attacked_score", dataset, threshold)
    examples = []
    if "example" in frame:
        for r in frame[frame["example"].notna()].to_dict("records"):
            prefix = str(r["example"])
            examples.append(
                ExampleFace(
                    video_id=str(r["video_id"]),
                    label=int(r["label"]),
                    clean_score=float(r["example_clean_score"]),
                    attacked_score=float(r["example_attacked_score"]),
                    amplification=float(r["example_amplification"]),
                    clean=f"{prefix}-clean.png",
                    perturbation=f"{prefix}-perturbation.png",
                    attacked=f"{prefix}-attacked.png",
                )
            )
    describe = _describe(attack)
    return RunSummary(
        run=run_dir.name,
        path=str(run_dir),
        dataset=dataset,
        kind=black_box or ("transfer" if attack.get("transfer_from") else "pgd"),
        attack=describe,
        norm=str(attack["norm"]),
        eps=float(attack["eps"]),
        eps_step=float(attack["eps_step"]),
        max_iter=int(attack["max_iter"]),
        transfer_from=attack.get("transfer_from"),
        black_box=black_box,
        defence=attack.get("defence"),
        rate_per_min=rate,
        threshold=threshold,
        untrained_members=[m["name"] for m in config["models"] if m["weights"] != "trained"],
        n_rows=len(frame),
        n_errors=int(np.asarray(failed).sum()),
        n_no_face=int(len(ok) - len(scored)),
        n_scored=len(scored),
        n_faces=int(n_faces.sum()),
        ba_clean=ba_c,
        ba_attacked=ba_a,
        auc_clean=auc_c,
        auc_attacked=auc_a,
        undefined="; ".join(sorted({w for w in (why_c, why_a) if w})),
        n_fakes_detected=len(detected),
        attack_success_rate=asr,
        face_success_rate=flipped / fake_faces if fake_faces else None,
        l1=_weighted(ok, "l1_mean", n_faces),
        l2=_weighted(ok, "l2_mean", n_faces),
        linf=_weighted(ok, "linf_mean", n_faces),
        psnr=_weighted(ok, "psnr_mean", changed),
        ssim=_weighted(ok, "ssim_mean", n_faces),
        queries_per_face=queries_total / n_faces.sum() if black_box and n_faces.sum() else None,
        queries_per_video=per_video,
        minutes_per_video=per_video / rate if per_video is not None else None,
        queries_total=queries_total,
        ba_defended_clean=ba_dc,
        ba_defended_attacked=ba_da,
        examples=examples,
    )


def _describe(attack: dict[str, Any]) -> str:
    from batch.attack import AttackSettings

    return AttackSettings.model_validate(attack).describe()


# ----------------------------------------------------------------------------------------------
# Rendering


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100.0 * value:.2f}%"


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}f}"


def _pp(after: float | None, before: float | None) -> str:
    if after is None or before is None:
        return "—"
    return f"{100.0 * (after - before):+.2f} pp"


Table = tuple[list[str], list[list[str]]]


def _table3(summaries: Sequence[RunSummary]) -> Table:
    """Paper Table 3: BA per dataset (rows) and PGD norm (columns), clean BA first."""
    pgd = [s for s in summaries if s.kind == "pgd"]
    settings = sorted({(s.norm, s.eps) for s in pgd}, key=lambda k: (_NORM_ORDER[k[0]], k[1]))
    header = ["Dataset", "clean", *(f"norm-{n} (eps {e:g})" for n, e in settings)]
    rows = []
    for dataset in sorted({s.dataset for s in pgd}):
        mine = [s for s in pgd if s.dataset == dataset]
        clean = next((s.ba_clean for s in mine if s.ba_clean is not None), None)
        cells = []
        for key in settings:
            hit = [s for s in mine if (s.norm, s.eps) == key]
            cells.append(_pct(hit[-1].ba_attacked) if hit else "")
        rows.append([_PRETTY.get(dataset, dataset), _pct(clean), *cells])
    return header, rows


_NORM_ORDER = {"1": 0, "2": 1, "inf": 2}
_PRETTY = {
    "ffpp": "FaceForensics++",
    "celebdf": "CelebDF",
    "wdf": "WildDeepFake",
    "dfdc": "DFDC",
    "csv": "CSV manifest",
}


def _detail(summaries: Sequence[RunSummary]) -> Table:
    header = [
        "Run",
        "Dataset",
        "Attack",
        "Videos (scored / errors / no face)",
        "BA clean",
        "BA attacked",
        "AUC clean",
        "AUC attacked",
        "Attack success (videos)",
        "Attack success (faces)",
        "L1",
        "L2",
        "Linf",
        "PSNR dB",
        "SSIM",
    ]
    rows = [
        [
            s.run,
            _PRETTY.get(s.dataset, s.dataset),
            s.attack,
            f"{s.n_scored} / {s.n_errors} / {s.n_no_face}",
            _pct(s.ba_clean),
            _pct(s.ba_attacked),
            _num(s.auc_clean, 4),
            _num(s.auc_attacked, 4),
            _pct(s.attack_success_rate),
            _pct(s.face_success_rate),
            _num(s.l1, 2),
            _num(s.l2, 3),
            _num(s.linf, 3),
            _num(s.psnr, 1),
            _num(s.ssim, 3),
        ]
        for s in summaries
    ]
    return header, rows


def _transfer(summaries: Sequence[RunSummary]) -> Table:
    white = {(s.dataset, s.norm, s.eps): s for s in summaries if s.kind == "pgd"}
    header = [
        "Dataset",
        "Crafted on",
        "Norm / eps",
        "BA clean",
        "BA attacked (ensemble)",
        "Attack success",
        "White-box BA (same norm, eps)",
    ]
    rows = []
    for s in summaries:
        if s.kind != "transfer":
            continue
        w = white.get((s.dataset, s.norm, s.eps))
        rows.append(
            [
                _PRETTY.get(s.dataset, s.dataset),
                str(s.transfer_from),
                f"{s.norm} / {s.eps:g}",
                _pct(s.ba_clean),
                _pct(s.ba_attacked),
                _pct(s.attack_success_rate),
                _pct(w.ba_attacked) if w else "not run",
            ]
        )
    return header, rows


def _black_box(summaries: Sequence[RunSummary]) -> Table:
    header = [
        "Dataset",
        "Attack",
        "Norm / eps",
        "BA clean",
        "BA attacked",
        "Attack success",
        "Queries / face",
        "Queries / video",
        "Rate limit (per min)",
        "Minutes of access / video",
        "Hours for the dataset",
    ]
    rows = []
    for s in summaries:
        if s.black_box is None:
            continue
        hours = s.queries_total / s.rate_per_min / 60.0
        rows.append(
            [
                _PRETTY.get(s.dataset, s.dataset),
                s.black_box,
                f"{s.norm} / {s.eps:g}",
                _pct(s.ba_clean),
                _pct(s.ba_attacked),
                _pct(s.attack_success_rate),
                _num(s.queries_per_face, 1),
                _num(s.queries_per_video, 1),
                str(s.rate_per_min),
                _num(s.minutes_per_video, 1),
                _num(hours, 2),
            ]
        )
    return header, rows


def _defence(summaries: Sequence[RunSummary]) -> Table:
    header = [
        "Dataset",
        "Attack",
        "Defence",
        "BA clean",
        "BA clean, defended",
        "Change on clean",
        "BA attacked",
        "BA attacked, defended",
        "Change on attacked (regained)",
    ]
    rows = []
    for s in summaries:
        if s.defence is None:
            continue
        rows.append(
            [
                _PRETTY.get(s.dataset, s.dataset),
                s.attack,
                s.defence,
                _pct(s.ba_clean),
                _pct(s.ba_defended_clean),
                _pp(s.ba_defended_clean, s.ba_clean),
                _pct(s.ba_attacked),
                _pct(s.ba_defended_attacked),
                _pp(s.ba_defended_attacked, s.ba_attacked),
            ]
        )
    return header, rows


def _markdown_table(table: Table) -> str:
    header, rows = table
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(table: Table) -> str:
    header, rows = table
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class RobustnessReport(BaseModel):
    """What :func:`render_robustness_report` wrote."""

    markdown: Path
    html: Path
    json_path: Path
    summaries: list[RunSummary]


_NOTES = (
    "BA: balanced accuracy at threshold {t:g} (a video is fake when its score >= {t:g}); "
    'videos that failed or had no face are excluded. Every attack targets "real" '
    "(paper 4.2.3). Perturbation norms are over the whole (3, S, S) face crop in [0, 1] units; "
    "PSNR and SSIM compare clean and attacked crops (higher = less visible)."
)

_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "th:first-child,td:first-child{text-align:left}"
    ".warn{background:#fff3cd;border:1px solid #e0c060;padding:.5em 1em}"
    ".strip{display:flex;gap:12px;align-items:flex-start;margin:.5em 0}"
    "figure{margin:0;text-align:center;font-size:.85em}"
    "figure img{width:160px;height:160px;image-rendering:pixelated;border:1px solid #999}"
)


def render_robustness_report(
    run_dirs: Sequence[Path],
    out_dir: Path,
    *,
    threshold: float = 0.5,
    examples_per_run: int = 4,
) -> RobustnessReport:
    """Render attack runs to ``robustness.md``, ``robustness.html`` and ``robustness.json``.

    Sections: the paper's Table 3 (BA per dataset and PGD norm, clean first), a detail table per
    run (AUC, attack success, L1/L2/Linf, PSNR, SSIM), transfer, black-box (queries against the
    per-key rate limit) and defence tables for the runs that used those options, and a strip of
    example faces per run (clean, amplified perturbation, attacked, with scores; the images are
    copied to ``out_dir/examples/<run>/``).

    Args:
        run_dirs: folders written by :func:`batch.attack.run_attack` (or ``dfd attack``).
        out_dir: where the report goes (created).
        threshold: decision threshold of BA and of the success rates.
        examples_per_run: faces shown per run.

    Raises:
        MissingFileError: a folder is not an attack run.
        BadInputError: no run folder given.
    """
    if not run_dirs:
        raise BadInputError("no attack run folder given; pass at least one --run folder")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for run_dir in run_dirs:
        if not (Path(run_dir) / "attack.json").is_file():
            raise MissingFileError(f"{run_dir} is not an attack run folder (no attack.json)")
    summaries = [summarize_run(Path(d), threshold) for d in run_dirs]
    strips = _copy_examples(summaries, out_dir, examples_per_run)
    untrained = sorted({m for s in summaries for m in s.untrained_members})
    warning = (
        f"WARNING: {len(untrained)} member(s) ran with random, untrained weights "
        f"({', '.join(untrained)}): these figures say nothing about the trained service."
        if untrained
        else ""
    )
    sections: list[tuple[str, Table]] = [
        ("Balanced accuracy under PGD (paper Table 3 layout)", _table3(summaries)),
        ("Every run", _detail(summaries)),
    ]
    for title, table in (
        ("Transfer attacks: crafted on one member, scored by the ensemble", _transfer(summaries)),
        ("Black-box attacks: queries against the per-key rate limit", _black_box(summaries)),
        ("Input-purification defences", _defence(summaries)),
    ):
        if table[1]:
            sections.append((title, table))
    notes = _NOTES.format(t=threshold)

    md = ["# Adversarial robustness", ""]
    if warning:
        md += [f"> **{warning}**", ""]
    md += [notes, ""]
    for title, table in sections:
        md += [f"## {title}", "", _markdown_table(table), ""]
    if strips:
        md += ["## Example faces", "", "clean | perturbation (amplified) | attacked", ""]
        for run, faces in strips:
            md += [f"### {run}", "", "| clean | perturbation | attacked |", "|---|---|---|"]
            for f, (c, p, a) in faces:
                md.append(
                    f"| ![clean]({c})<br>{html.escape(f.video_id)}<br>p = {f.clean_score:.3f} "
                    f"| ![perturbation]({p})<br>x{f.amplification:.3g} "
                    f"| ![attacked]({a})<br>p = {f.attacked_score:.3f} |"
                )
            md.append("")
    md_path = out_dir / "robustness.md"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")

    body = ["<h1>Adversarial robustness</h1>"]
    if warning:
        body.append(f'<p class="warn"><strong>{html.escape(warning)}</strong></p>')
    body.append(f"<p>{html.escape(notes)}</p>")
    for title, table in sections:
        body += [f"<h2>{html.escape(title)}</h2>", _html_table(table)]
    if strips:
        body.append("<h2>Example faces</h2>")
        for run, faces in strips:
            body.append(f"<h3>{html.escape(run)}</h3>")
            for f, (c, p, a) in faces:
                label = "fake" if f.label == 1 else "real"
                body.append(
                    '<div class="strip">'
                    f'<figure><img src="{html.escape(c)}" alt="clean face">'
                    f"<figcaption>{html.escape(f.video_id)} ({label})<br>clean: "
                    f"p = {f.clean_score:.3f}</figcaption></figure>"
                    f'<figure><img src="{html.escape(p)}" alt="perturbation">'
                    f"<figcaption>perturbation x{f.amplification:.3g}</figcaption></figure>"
                    f'<figure><img src="{html.escape(a)}" alt="attacked face">'
                    f"<figcaption>attacked: p = {f.attacked_score:.3f}</figcaption></figure>"
                    "</div>"
                )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Adversarial robustness</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    html_path = out_dir / "robustness.html"
    html_path.write_text(page, encoding="utf-8")
    json_path = out_dir / "robustness.json"
    json_path.write_text(
        json.dumps([s.model_dump(mode="json") for s in summaries], indent=2) + "\n",
        encoding="utf-8",
    )
    return RobustnessReport(
        markdown=md_path, html=html_path, json_path=json_path, summaries=summaries
    )


def _copy_examples(
    summaries: Sequence[RunSummary], out_dir: Path, per_run: int
) -> list[tuple[str, list[tuple[ExampleFace, tuple[str, str, str]]]]]:
    """Copy each run's example images next to the report; return their report-relative paths.

    Fakes come first: they are what an attack towards "real" is about.
    """
    strips = []
    used: set[str] = set()
    for s in summaries:
        if not s.examples or per_run == 0:
            continue
        name = s.run
        while name in used:
            name += "_"
        used.add(name)
        target = out_dir / "examples" / name
        target.mkdir(parents=True, exist_ok=True)
        faces = []
        for f in sorted(s.examples, key=lambda e: (-e.label, e.video_id))[:per_run]:
            paths = []
            for rel in (f.clean, f.perturbation, f.attacked):
                source = Path(s.path) / rel
                shutil.copyfile(source, target / source.name)
                paths.append(f"examples/{name}/{source.name}")
            faces.append((f, (paths[0], paths[1], paths[2])))
        strips.append((f"{s.run}: {s.attack}", faces))
    return strips


def is_attack_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` was written by an attack run (``dfd report`` routes it here)."""
    return (Path(run_dir) / "attack.json").is_file()
