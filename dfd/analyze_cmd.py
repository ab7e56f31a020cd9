"""``dfd analyze SOURCE``: the whole method in one process, with progress and a summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from dfd.common import BackendOpt, DeviceOpt, EnsembleOpt, cli_errors, err_console, out_console
from pipeline.result import Result

if TYPE_CHECKING:
    from pipeline.analyze import AnalysisSettings


def _summary(result: Result) -> Table:
    score = "none (no face)" if result.score is None else f"{result.score:.3f}"
    table = Table(
        title=f"DeepFake probability: {score} ({result.label}) — {result.source.media_type}, "
        f"{len(result.shots)} shot(s), {result.faces_total} face(s)"
    )
    for col in ("shot", "start s", "end s", "score", "label", "tracks: faces (score)", "dropped"):
        table.add_column(col, justify="right" if col != "tracks: faces (score)" else "left")
    for shot in result.shots:
        tracks = ", ".join(f"{len(c.faces)} ({c.score:.3f})" for c in shot.clusters) or "-"
        table.add_row(
            str(shot.index) + (" *" if shot.index == result.top_shot else ""),
            f"{shot.start_s:.2f}",
            f"{shot.end_s:.2f}",
            "-" if shot.score is None else f"{shot.score:.3f}",
            shot.label,
            tracks,
            str(shot.dropped_clusters),
        )
    return table


@cli_errors
def analyze(
    source: Annotated[
        str, typer.Argument(help="URL (http/https, share links, platforms) or local file.")
    ],
    out: Annotated[Path, typer.Option(help="Folder for the galleries and the JSON result.")] = Path(
        "dfd-out"
    ),
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Write the JSON result here (default: OUT/<id>/result.json)."),
    ] = None,
    model_dir: Annotated[Path | None, typer.Option(help="Model directory.")] = None,
    backend: BackendOpt = "auto",
    ensemble: EnsembleOpt = None,
    device: DeviceOpt = "auto",
    no_galleries: Annotated[
        bool, typer.Option("--no-galleries", help="Skip the pictures.")
    ] = False,
    allow_private_addresses: Annotated[
        bool, typer.Option(help="Allow URLs on loopback/private networks (trusted use only).")
    ] = False,
    proxy: Annotated[
        str | None, typer.Option(help="Download proxy, e.g. socks5h://127.0.0.1:9050.")
    ] = None,
) -> None:
    """Analyse an image or a video: shots, faces, face tracks, scores, galleries."""
    from pipeline.analyze import AnalysisSettings
    from pipeline.download import DownloadSettings
    from pipeline.models import InferenceSettings

    settings = AnalysisSettings(
        inference=InferenceSettings.model_validate(
            {"model_dir": model_dir, "backend": backend, "device": device, "ensemble": ensemble}
        ),
        download=DownloadSettings(allow_private_addresses=allow_private_addresses, proxy=proxy),
        galleries=not no_galleries,
    )
    run_analyze(settings, source, out, json_out)


def run_analyze(settings: AnalysisSettings, source: str, out: Path, json_out: Path | None) -> None:
    """Analyse ``source`` with progress bars; artefacts into ``out/<content hash>``, the result
    JSON there (or to ``json_out``), and the summary table on stdout."""
    from pipeline.analyze import STAGES, load_analyzer
    from serve.storage import LocalStorage

    with err_console.status("loading models"):
        analyzer = load_analyzer(settings)
    staging = LocalStorage(out / ".incoming")
    with Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                for other in tasks.values():  # earlier stages are complete
                    t = bar.tasks[other]
                    bar.update(other, completed=t.total or 1, total=t.total or 1)
                tasks[stage] = bar.add_task(stage, total=total or None)
            bar.update(tasks[stage], completed=done, total=total or None)

        result = analyzer.analyze(source, staging, progress=progress)
    assert all(stage in STAGES for stage in tasks)
    # Artefacts land in a folder named by the content hash, so reruns replace, never mix.
    final = out / result.source.sha256[:16]
    if final.exists():
        import shutil

        shutil.rmtree(final)
    (out / ".incoming").rename(final)
    target = json_out or final / "result.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(result.model_dump_json(indent=2) + "\n")
    for w in result.warnings:
        err_console.print(f"[bold yellow]WARNING[/]: {w}")
    out_console.print(_summary(result))
    out_console.print(f"result: {target}\npictures: {final}/")
