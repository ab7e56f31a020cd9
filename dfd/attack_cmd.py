"""``dfd attack``: an adversarial robustness run over a dataset (paper 4.1.3), on Ray Data.

Example (the paper's setting): ``dfd attack --dataset celebdf --root ~/data/Celeb-DF-v2
--norm inf --eps 0.2 --max-iter 5 --out runs/cdf-pgd-inf``. Rerunning the same command resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from dfd.common import (
    BackendOpt,
    DeviceOpt,
    EnsembleOpt,
    cli_errors,
    config_error,
    err_console,
    out_console,
    stage_layout,
)

if TYPE_CHECKING:
    from batch.attack import AttackRunSettings
    from batch.datasets import DatasetName, VideoRow


@cli_errors
def attack(
    dataset: Annotated[str, typer.Option(help="ffpp, celebdf, wdf, dfdc or csv.")],
    root: Annotated[Path, typer.Option(help="Dataset folder (official layout), or the CSV file.")],
    out: Annotated[Path, typer.Option(help="Run folder (created; rerun to resume).")],
    norm: Annotated[str, typer.Option(help="PGD norm: inf, 1 or 2.")] = "inf",
    eps: Annotated[float, typer.Option(help="Budget in the norm, [0, 1] pixel units.")] = 0.2,
    eps_step: Annotated[float, typer.Option(help="Step per iteration (ART's default 0.1).")] = 0.1,
    max_iter: Annotated[int, typer.Option(help="PGD iterations (paper: 5).")] = 5,
    split: Annotated[str | None, typer.Option(help="Only this split (train/val/test).")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N rows by video id.")] = None,
    transfer_from: Annotated[
        str | None, typer.Option(help="Craft on this member alone; the ensemble scores.")
    ] = None,
    black_box: Annotated[
        str | None, typer.Option(help="hopskipjump or square instead of PGD.")
    ] = None,
    max_queries: Annotated[int, typer.Option(help="Black-box query budget per face.")] = 1000,
    rate_per_min: Annotated[
        int, typer.Option(help="Per-key rate limit the black-box queries are set against.")
    ] = 60,
    defence: Annotated[
        str | None, typer.Option(help="Also score through jpeg, smoothing or squeeze.")
    ] = None,
    model_dir: Annotated[Path | None, typer.Option(help="Model directory.")] = None,
    backend: BackendOpt = "auto",
    ensemble: EnsembleOpt = None,
    device: DeviceOpt = "auto",
    max_frames_per_shot: Annotated[int, typer.Option(help="Paper: 64.")] = 64,
    actors: Annotated[
        int, typer.Option(help="Actors of each model stage (face detection, the attack).")
    ] = 1,
    decode_actors: Annotated[
        int, typer.Option(help="Actors decoding videos and finding shots (CPU).")
    ] = 1,
    detect_batch: Annotated[int, typer.Option(help="Shots per face-detection call.")] = 2,
    attack_batch: Annotated[
        int, typer.Option(help="Shots per attack call (their faces attacked together).")
    ] = 4,
    object_store_mb: Annotated[
        int | None, typer.Option(help="Cap on the object store the run holds at once (MiB).")
    ] = None,
    cpus_per_actor: Annotated[float, typer.Option(help="Logical CPUs per actor.")] = 0.5,
    gpus_per_actor: Annotated[
        float | None,
        typer.Option(help="GPU share per model actor (default: an even share of the GPUs)."),
    ] = None,
    actor_memory_mb: Annotated[
        int | None, typer.Option(help="Memory each model actor reserves (MiB; default none).")
    ] = None,
    torch_threads: Annotated[int, typer.Option(help="torch threads per actor (0: all).")] = 1,
    examples: Annotated[int, typer.Option(help="Rows that keep an example face.")] = 8,
    retry_errors: Annotated[bool, typer.Option(help="Redo rows that failed before.")] = False,
    local: Annotated[bool, typer.Option("--local", help="In this process, without Ray.")] = False,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: start a local one).")
    ] = None,
) -> None:
    """Attack every face of a dataset with ART and write clean and attacked scores side by side."""
    from pydantic import ValidationError

    from batch.attack import AttackRunSettings, AttackSettings
    from batch.datasets import read_dataset
    from pipeline.analyze import AnalysisSettings
    from pipeline.faces import FaceSettings
    from pipeline.models import InferenceSettings

    try:
        inference = InferenceSettings.model_validate(
            {"model_dir": model_dir, "backend": backend, "device": device, "ensemble": ensemble}
        )
        attack_settings = AttackSettings(
            norm=norm, eps=eps, eps_step=eps_step, max_iter=max_iter, transfer_from=transfer_from,
            black_box=black_box, max_queries=max_queries, rate_per_min=rate_per_min,
            defence=defence,
        )  # fmt: skip
        faces = FaceSettings(
            max_frames_per_shot=max_frames_per_shot,
            device=device if device.startswith("cuda") else "cpu",
        )
        stages = stage_layout(
            decode_actors=decode_actors, actors=actors, cpus_per_actor=cpus_per_actor,
            gpus_per_actor=gpus_per_actor, actor_memory_mb=actor_memory_mb,
            detect_batch=detect_batch, final_batch=attack_batch,
        )  # fmt: skip
        settings = AttackRunSettings(
            analysis=AnalysisSettings(inference=inference, faces=faces, galleries=False),
            attack=attack_settings,
            decode=stages["decode"],
            detect=stages["detect"],
            attackers=stages["final"],
            object_store_mb=object_store_mb,
            torch_threads=torch_threads,
            examples=examples,
            retry_errors=retry_errors,
        )
    except ValidationError as exc:
        raise config_error(exc, tidy=True) from None
    rows = read_dataset(cast("DatasetName", dataset), root, split=split)  # it checks the name
    if limit is not None:
        rows = rows[:limit]
    run_attack_cmd(settings, rows, dataset, root, out, local=local, ray_address=ray_address)


def run_attack_cmd(
    settings: AttackRunSettings,
    rows: list[VideoRow],
    dataset: str,
    root: Path,
    out: Path,
    *,
    local: bool,
    ray_address: str | None,
) -> None:
    """Attack ``rows`` into the run folder ``out``, in this process when ``local``, else on Ray
    at ``ray_address`` (default: a new local Ray); print the outcome."""
    from batch.attack import run_attack
    from evaluation.attack_summary import summarize_run

    if not local:
        import ray

        if not ray.is_initialized():
            ray.init(address=ray_address)
    err_console.print(f"{len(rows)} rows; attack: {settings.attack.describe()}")
    outcome = run_attack(
        rows,
        out,
        settings,
        dataset=dataset,
        root=root,
        use_ray=not local,
        progress=lambda done, total: err_console.print(f"{done}/{total}", end="\r"),
    )
    err_console.print()  # end the progress line
    summary = summarize_run(outcome.out)
    for name in summary.untrained_members:
        err_console.print(f"[bold yellow]WARNING[/]: member {name} ran with random weights")

    def pct(v: float | None) -> str:
        return "—" if v is None else f"{100 * v:.2f}%"

    out_console.print(
        f"{outcome.processed} rows attacked, {outcome.skipped} already done, "
        f"{outcome.errors} errors, {outcome.seconds:.0f} s\n"
        f"BA clean {pct(summary.ba_clean)} -> attacked {pct(summary.ba_attacked)}; "
        f"attack success {pct(summary.attack_success_rate)}\nscores: {outcome.scores}"
    )
