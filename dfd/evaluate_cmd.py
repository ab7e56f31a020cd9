"""``dfd evaluate``, ``dfd report`` and ``dfd model-card``: paper section 4 from the command line.

``dfd evaluate --dataset celebdf --root /data/Celeb-DF-v2 --out runs/cdf`` scores every video of
the dataset on Ray Data (resumable: rerun the same command to finish a stopped run) and writes the
paper's tables for the run into ``runs/cdf/report``. ``dfd report RUN...`` compares runs side by
side; ``dfd model-card`` renders the model card from the manifest and a report.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from dfd.common import (
    AddressOpt,
    BackendOpt,
    DeviceOpt,
    EnsembleOpt,
    ReaderOptionOpt,
    cli_errors,
    config_error,
    err_console,
    out_console,
    ray_session,
    reader_options,
    stage_layout,
)

if TYPE_CHECKING:
    from batch.config import EvaluationConfig


def _rich(table: Any) -> RichTable:
    """An :class:`evaluation.report.Table` for the terminal."""
    out = RichTable(title=table.caption or None)
    for i, header in enumerate(table.headers):
        out.add_column(header, justify="left" if i == 0 else "right")
    for row in table.rows:
        out.add_row(*row)
    return out


@cli_errors
def evaluate(
    dataset: Annotated[str, typer.Option(help="ffpp, celebdf, wdf, dfdc or csv.")],
    root: Annotated[Path, typer.Option(help="The dataset's folder (for csv: the manifest file).")],
    out: Annotated[Path, typer.Option(help="The run folder (rerun to resume).")],
    split: Annotated[
        str | None, typer.Option(help="Only this split: train, val, test or unspecified.")
    ] = None,
    model_dir: Annotated[Path | None, typer.Option(help="Model directory.")] = None,
    actors: Annotated[
        int, typer.Option(help="Actors of each model stage (face detection, the ensemble).")
    ] = 1,
    decode_actors: Annotated[
        int, typer.Option(help="Actors decoding videos and finding shots (CPU).")
    ] = 1,
    detect_batch: Annotated[int, typer.Option(help="Shots per face-detection call.")] = 2,
    score_batch: Annotated[int, typer.Option(help="Shots per ensemble call.")] = 16,
    object_store_mb: Annotated[
        int | None, typer.Option(help="Cap on the object store the run holds at once (MiB).")
    ] = None,
    serve_app: Annotated[
        str | None,
        typer.Option(help="Score through this running Serve application's deployments."),
    ] = None,
    backend: BackendOpt = "auto",
    ensemble: EnsembleOpt = None,
    device: DeviceOpt = "auto",
    cpus_per_actor: Annotated[float, typer.Option(help="Logical CPUs per actor.")] = 0.5,
    gpus_per_actor: Annotated[
        float | None,
        typer.Option(help="GPU share per model actor (default: an even share of the GPUs)."),
    ] = None,
    actor_memory_mb: Annotated[
        int | None, typer.Option(help="Memory each model actor reserves (MiB; default none).")
    ] = None,
    max_frames: Annotated[int, typer.Option(help="Frames per shot for faces (paper: 64).")] = 64,
    per_face: Annotated[
        bool, typer.Option(help="Also write one row per face (frame-level metrics).")
    ] = True,
    retry_errors: Annotated[
        bool, typer.Option("--retry-errors", help="Rerun rows that ended in an error.")
    ] = False,
    limit: Annotated[int | None, typer.Option(help="Only the first N rows (a smoke test).")] = None,
    option: ReaderOptionOpt = None,
    address: AddressOpt = None,
    report: Annotated[bool, typer.Option(help="Write OUT/report when the run ends.")] = True,
) -> None:
    """Score a dataset on Ray Data and write per-video predictions (Parquet) and the tables."""
    from pydantic import ValidationError

    from batch.config import EvaluationConfig, batch_analysis_settings
    from pipeline.faces import FaceSettings
    from pipeline.models import InferenceSettings

    try:
        inference = InferenceSettings.model_validate(
            {"model_dir": model_dir, "backend": backend, "device": device, "ensemble": ensemble}
        )
        faces = FaceSettings(
            max_frames_per_shot=max_frames, device=device if device.startswith("cuda") else "cpu"
        )
        stages = stage_layout(
            decode_actors=decode_actors, actors=actors, cpus_per_actor=cpus_per_actor,
            gpus_per_actor=gpus_per_actor, actor_memory_mb=actor_memory_mb,
            detect_batch=detect_batch, final_batch=score_batch,
        )  # fmt: skip
        config = EvaluationConfig(
            dataset=dataset,
            root=root,
            out=out,
            split=split,
            reader_options=reader_options(option),
            analysis=batch_analysis_settings().model_copy(
                update={"inference": inference, "faces": faces}
            ),
            decode=stages["decode"],
            detect=stages["detect"],
            score=stages["final"],
            object_store_mb=object_store_mb,
            per_face=per_face,
            serve_app=serve_app,
            retry_errors=retry_errors,
        )
    except ValidationError as exc:
        raise config_error(exc) from exc
    run_evaluate(config, limit=limit, address=address, report=report)


def run_evaluate(
    config: EvaluationConfig, *, limit: int | None, address: str | None, report: bool
) -> None:
    """Score the rows of ``config`` (the first ``limit``) on Ray, connected to ``address`` or
    a local Ray started here; print the summary and write ``OUT/report`` when ``report``."""
    from batch.datasets import read_dataset, summarize
    from batch.evaluate import run_evaluation

    rows = read_dataset(config.dataset, config.root, split=config.split, **config.reader_options)
    if limit is not None:
        rows = rows[:limit]
    counts = summarize(rows)
    err_console.print(
        f"{len(rows)} rows: "
        + ", ".join(
            f"{n} {'fake' if label else 'real'} {m} ({s})"
            for (s, m, label), n in sorted(counts.items())
        )
    )
    with ray_session(address), _rows_bar() as progress:
        summary = run_evaluation(config, rows=rows, progress=progress)
    out = config.out
    out_console.print(
        f"{summary.total} rows: {summary.skipped} already done, {summary.processed} scored now "
        f"({summary.rows_per_s:.2f} rows/s), {summary.no_face} without a face, "
        f"{summary.errors} errors; predictions in {out}/predictions"
    )
    if report:
        _report([out], out / "report", None, None, 1000)


@contextlib.contextmanager
def _rows_bar() -> Iterator[Callable[[int, int, float], None]]:
    """A progress bar of scored rows on stderr; yields the run's ``progress`` callback."""
    with Progress(
        TextColumn("scoring"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} rows"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err_console,
    ) as bar:
        task: TaskID | None = None

        def progress(done: int, total: int, elapsed_s: float) -> None:
            nonlocal task
            if task is None:
                task = bar.add_task("scoring", total=total, rate="")
            rate = f"{done / elapsed_s:.2f} rows/s" if elapsed_s > 0 else ""
            bar.update(task, completed=done, total=total, rate=rate)

        yield progress


def report(
    runs: Annotated[
        list[Path], typer.Argument(help="Run folders written by `dfd evaluate` or `dfd attack`.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Report folder (default: RUN/report for one run, else ./dfd-report)."),
    ] = None,
    name: Annotated[
        list[str] | None, typer.Option(help="Names of the runs in tables (one per run).")
    ] = None,
    val_run: Annotated[
        Path | None, typer.Option(help="Choose thresholds on this run's val rows.")
    ] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples per interval.")] = 1000,
) -> None:
    """Markdown and HTML report: paper Tables 1 and 2, CIs, ROC curves, runs side by side."""
    target = out or (runs[0] / "report" if len(runs) == 1 else Path("dfd-report"))
    cli_errors(_report)(runs, target, name, val_run, n_boot)


def _report(
    runs: list[Path], out: Path, names: list[str] | None, val_run: Path | None, n_boot: int
) -> None:
    from evaluation.report import write_report
    from evaluation.report_tables import table1, table2
    from evaluation.robustness import is_attack_run, render_robustness_report

    # Attack runs (`dfd attack`) get the robustness report (paper Table 3 layout) beside it.
    attacks = [r for r in runs if is_attack_run(r)]
    runs = [r for r in runs if not is_attack_run(r)]
    if attacks:
        with err_console.status("computing robustness figures"):
            robust = render_robustness_report(attacks, out / "robustness")
        out_console.print(f"robustness report: {robust.markdown}\n                   {robust.html}")
    if not runs:
        return
    with err_console.status("computing metrics"):
        files = write_report(runs, out, names=names, n_boot=n_boot, val_run=val_run)
    for run in files.runs:
        if run.untrained:
            err_console.print(
                f"[bold yellow]WARNING[/]: {run.name}: {len(run.untrained)} models ran untrained "
                f"({', '.join(run.untrained)}): the figures measure untrained models"
            )
    out_console.print(_rich(table1(files.runs)))
    t2 = table2(files.runs)
    if t2 is not None:
        out_console.print(_rich(t2))
    out_console.print(f"report: {files.markdown}\n        {files.html}")


def model_card(
    run: Annotated[
        Path | None,
        typer.Option(help="A report folder (or a folder of reports, or a run folder)."),
    ] = None,
    model_dir: Annotated[Path | None, typer.Option(help="Model directory.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write here (.html for HTML); default: print Markdown.")
    ] = None,
) -> None:
    """The model card (Mitchell et al.) from the model manifest and the latest report."""
    cli_errors(_model_card)(run, model_dir, out)


def _model_card(run: Path | None, model_dir: Path | None, out: Path | None) -> None:
    from evaluation.model_card import render_model_card

    html = out is not None and out.suffix.lower() in (".html", ".htm")
    fmt: Literal["html", "markdown"] = "html" if html else "markdown"
    text = render_model_card(model_dir, run, fmt=fmt)
    if out is None:
        print(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    out_console.print(f"model card: {out}")
