"""``dfd faces extract``: face crops of a dataset for training (Parquet), on Ray Data.

``dfd faces extract --dataset ffpp --root /data/FaceForensics++ --out faces/ffpp`` samples frames
of every video, detects faces with the analysis' MTCNN and writes the crops with their labels and
splits into ``faces/ffpp/parts`` (see :mod:`batch.faces`). Rerun the same command to resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dfd.common import cli_errors, err_console, out_console
from pipeline.errors import BadInputError, ConfigError

app = typer.Typer(help="Face crops for training.", no_args_is_help=True)


@app.command("extract")
def extract(
    dataset: Annotated[str, typer.Option(help="ffpp, celebdf, wdf, dfdc or csv.")],
    root: Annotated[Path, typer.Option(help="The dataset's folder (for csv: the manifest file).")],
    out: Annotated[Path, typer.Option(help="The faces folder (rerun to resume).")],
    split: Annotated[
        str | None, typer.Option(help="Only this split: train, val, test or unspecified.")
    ] = None,
    max_frames: Annotated[int, typer.Option(help="Frames sampled per video.")] = 32,
    val_fraction: Annotated[
        float, typer.Option(help="Share of videos without an official split that go to val.")
    ] = 0.2,
    all_faces: Annotated[
        bool, typer.Option("--all-faces", help="Keep every face of a frame, not the best one.")
    ] = False,
    actors: Annotated[int, typer.Option(help="Detector actors in the pool.")] = 2,
    cpus_per_actor: Annotated[float, typer.Option(help="Logical CPUs per actor.")] = 0.5,
    gpus_per_actor: Annotated[
        float | None, typer.Option(help="GPU share per actor with cuda (default: an even share).")
    ] = None,
    device: Annotated[str, typer.Option(help="Torch device of the detector: cpu or cuda.")] = "cpu",
    limit: Annotated[int | None, typer.Option(help="Only the first N rows (a smoke test).")] = None,
    retry_errors: Annotated[
        bool, typer.Option("--retry-errors", help="Rerun videos that ended in an error.")
    ] = False,
    option: Annotated[
        list[str] | None,
        typer.Option(help="Reader option KEY=VALUE, e.g. compression=c40 (repeatable)."),
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="One extractor in this process, without Ray.")
    ] = False,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: RAY_ADDRESS or local).")
    ] = None,
) -> None:
    """Detect faces in a dataset's videos and write labelled crops as Parquet parts."""
    run_extract(
        dataset, root, out, split, max_frames, val_fraction, all_faces, actors, cpus_per_actor,
        device, limit, retry_errors, option, local, address, gpus_per_actor,
    )  # fmt: skip


@cli_errors
def run_extract(
    dataset: str,
    root: Path,
    out: Path,
    split: str | None,
    max_frames: int,
    val_fraction: float,
    all_faces: bool,
    actors: int,
    cpus_per_actor: float,
    device: str,
    limit: int | None,
    retry_errors: bool,
    option: list[str] | None,
    local: bool,
    address: str | None,
    gpus_per_actor: float | None = None,
) -> None:
    from typing import get_args

    from pydantic import ValidationError

    from batch.datasets import DatasetName
    from batch.faces import FaceExtractionConfig, extract_faces, read_rows
    from dfd.evaluate_cmd import _reader_options
    from pipeline.faces import FaceSettings

    if dataset not in get_args(DatasetName):
        raise BadInputError(
            f"unknown dataset {dataset!r}; choose one of {', '.join(get_args(DatasetName))}"
        )
    try:
        config = FaceExtractionConfig(
            dataset=dataset,  # validated here (a Literal)
            root=root,
            out=out,
            split=split,
            reader_options=_reader_options(option),
            max_frames=max_frames,
            val_fraction=val_fraction,
            keep="all" if all_faces else "best",
            faces=FaceSettings(device=device),
            limit=limit,
            retry_errors=retry_errors,
            actors=actors,
            actor_num_cpus=cpus_per_actor,
            actor_num_gpus=gpus_per_actor,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{where}: {first['msg']}") from exc

    rows = read_rows(config)
    err_console.print(f"{len(rows)} rows of {dataset} at {root}")
    started_ray = False
    if not local:
        import ray

        if not ray.is_initialized():
            with err_console.status("starting Ray"):
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            started_ray = True
    try:
        summary = extract_faces(config, rows=rows, local=local)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    out_console.print(summary.line(), markup=False, highlight=False, soft_wrap=True)
