"""The robustness report (paper 4.2.3, Table 3): attack runs laid out in Markdown and HTML.

The figures of each run come from :mod:`evaluation.attack_summary`; the report lays them out as
balanced accuracy clean versus attacked per dataset and norm (Table 3's layout), a detail table
per run (AUC, attack success rate, perturbation size and visibility), the beyond-the-paper runs
(transfer from one member, black-box query budgets against a per-key rate limit, purification
defences), and a strip of example faces per run. Tables and pages are rendered with
:mod:`evaluation.render`.
"""

from __future__ import annotations

import html
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from evaluation.attack_runs import CONFIG_FILE
from evaluation.attack_summary import ExampleFace, RunSummary, summarize_run
from evaluation.render import Table, dataset_name, html_page, number, pct, pp_change
from pipeline.errors import BadInputError, MissingFileError

TITLE = "Adversarial robustness"
_NORM_ORDER = {"1": 0, "2": 1, "inf": 2}

#: A run's example faces: ``(heading, [(face, (clean, perturbation, attacked) paths)])``, paths
#: relative to the report folder.
Strip = tuple[str, list[tuple[ExampleFace, tuple[str, str, str]]]]


# ----------------------------------------------------------------------------------------------
# Tables


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
            cells.append(pct(hit[-1].ba_attacked) if hit else "")
        rows.append([dataset_name(dataset), pct(clean), *cells])
    return Table(header, rows, align=False)


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
            dataset_name(s.dataset),
            s.attack,
            f"{s.n_scored} / {s.n_errors} / {s.n_no_face}",
            pct(s.ba_clean),
            pct(s.ba_attacked),
            number(s.auc_clean, 4),
            number(s.auc_attacked, 4),
            pct(s.attack_success_rate),
            pct(s.face_success_rate),
            number(s.l1, 2),
            number(s.l2, 3),
            number(s.linf, 3),
            number(s.psnr, 1),
            number(s.ssim, 3),
        ]
        for s in summaries
    ]
    return Table(header, rows, align=False)


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
                dataset_name(s.dataset),
                str(s.transfer_from),
                f"{s.norm} / {s.eps:g}",
                pct(s.ba_clean),
                pct(s.ba_attacked),
                pct(s.attack_success_rate),
                pct(w.ba_attacked) if w else "not run",
            ]
        )
    return Table(header, rows, align=False)


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
                dataset_name(s.dataset),
                s.black_box,
                f"{s.norm} / {s.eps:g}",
                pct(s.ba_clean),
                pct(s.ba_attacked),
                pct(s.attack_success_rate),
                number(s.queries_per_face, 1),
                number(s.queries_per_video, 1),
                str(s.rate_per_min),
                number(s.minutes_per_video, 1),
                number(hours, 2),
            ]
        )
    return Table(header, rows, align=False)


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
                dataset_name(s.dataset),
                s.attack,
                s.defence,
                pct(s.ba_clean),
                pct(s.ba_defended_clean),
                pp_change(s.ba_defended_clean, s.ba_clean),
                pct(s.ba_attacked),
                pct(s.ba_defended_attacked),
                pp_change(s.ba_defended_attacked, s.ba_attacked),
            ]
        )
    return Table(header, rows, align=False)


# ----------------------------------------------------------------------------------------------
# The report


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
        if not is_attack_run(Path(run_dir)):
            raise MissingFileError(f"{run_dir} is not an attack run folder (no {CONFIG_FILE})")
    summaries = [summarize_run(Path(d), threshold) for d in run_dirs]
    strips = _copy_examples(summaries, out_dir, examples_per_run)
    untrained = sorted({m for s in summaries for m in s.untrained_members})
    warning = (
        f"WARNING: {len(untrained)} member(s) ran with random, untrained weights "
        f"({', '.join(untrained)}): these figures say nothing about the trained service."
        if untrained
        else ""
    )
    sections = _sections(summaries)
    notes = _NOTES.format(t=threshold)
    md_path = out_dir / "robustness.md"
    md_path.write_text(_markdown(warning, notes, sections, strips), encoding="utf-8")
    html_path = out_dir / "robustness.html"
    html_path.write_text(_html(warning, notes, sections, strips), encoding="utf-8")
    json_path = out_dir / "robustness.json"
    json_path.write_text(
        json.dumps([s.model_dump(mode="json") for s in summaries], indent=2) + "\n",
        encoding="utf-8",
    )
    return RobustnessReport(
        markdown=md_path, html=html_path, json_path=json_path, summaries=summaries
    )


def _sections(summaries: Sequence[RunSummary]) -> list[tuple[str, Table]]:
    """Table 3 and the detail table always; the others for the runs that used their option."""
    sections: list[tuple[str, Table]] = [
        ("Balanced accuracy under PGD (paper Table 3 layout)", _table3(summaries)),
        ("Every run", _detail(summaries)),
    ]
    for title, table in (
        ("Transfer attacks: crafted on one member, scored by the ensemble", _transfer(summaries)),
        ("Black-box attacks: queries against the per-key rate limit", _black_box(summaries)),
        ("Input-purification defences", _defence(summaries)),
    ):
        if table.rows:
            sections.append((title, table))
    return sections


def _markdown(
    warning: str, notes: str, sections: Sequence[tuple[str, Table]], strips: Sequence[Strip]
) -> str:
    md = [f"# {TITLE}", ""]
    if warning:
        md += [f"> **{warning}**", ""]
    md += [notes, ""]
    for title, table in sections:
        md += [f"## {title}", "", table.markdown().rstrip("\n"), ""]
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
    return "\n".join(md) + "\n"


def _html(
    warning: str, notes: str, sections: Sequence[tuple[str, Table]], strips: Sequence[Strip]
) -> str:
    body = [f"<h1>{TITLE}</h1>"]
    if warning:
        body.append(f'<p class="warn"><strong>{html.escape(warning)}</strong></p>')
    body.append(f"<p>{html.escape(notes)}</p>")
    for title, table in sections:
        body += [f"<h2>{html.escape(title)}</h2>", table.html()]
    if strips:
        body.append("<h2>Example faces</h2>")
        for run, faces in strips:
            body.append(f"<h3>{html.escape(run)}</h3>")
            body += [_strip_html(f, paths) for f, paths in faces]
    return html_page(TITLE, "\n".join(body))


def _strip_html(f: ExampleFace, paths: tuple[str, str, str]) -> str:
    """One face: clean, amplified perturbation and attacked crops, with their scores."""
    c, p, a = paths
    label = "fake" if f.label == 1 else "real"
    return (
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


def _copy_examples(summaries: Sequence[RunSummary], out_dir: Path, per_run: int) -> list[Strip]:
    """Copy each run's example images next to the report; return their report-relative paths.

    Fakes come first: they are what an attack towards "real" is about.
    """
    strips: list[Strip] = []
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
    return (Path(run_dir) / CONFIG_FILE).is_file()
