"""``dfd faces extract``: face crops of a dataset for training (Parquet), on Ray Data.

``dfd faces extract --dataset ffpp --root /data/FaceForensics++ --out faces/ffpp`` samples frames
of every video, detects faces with the analysis' MTCNN and writes the crops with their labels and
splits into ``faces/ffpp/parts`` (see :mod:`batch.faces`). Rerun the same command to resume.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, get_args

import typer

from dfd.common import (
    AddressOpt,
    ReaderOptionOpt,
    cli_errors,
    config_error,
    err_console,
    out_console,
    ray_session,
    reader_options,
)
from pipeline.errors import BadInputError

if TYPE_CHECKING:
    from batch.faces import FaceExtractionConfig

app = typer.Typer(help="Face crops for training.", no_args_is_help=True)


@app.command("extract")
@cli_errors
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
    option: ReaderOptionOpt = None,
    local: Annotated[
        bool, typer.Option("--local", help="One extractor in this process, without Ray.")
    ] = False,
    address: AddressOpt = None,
) -> None:
    """Detect faces in a dataset's videos and write labelled crops as Parquet parts."""
    from pydantic import ValidationError

    from batch.config import StageSettings
    from batch.datasets import DatasetName
    from batch.faces import FaceExtractionConfig
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
            reader_options=reader_options(option),
            max_frames=max_frames,
            val_fraction=val_fraction,
            keep="all" if all_faces else "best",
            faces=FaceSettings(device=device),
            limit=limit,
            retry_errors=retry_errors,
            extractors=StageSettings(
                actors=actors, num_cpus=cpus_per_actor, num_gpus=gpus_per_actor
            ),
        )
    except ValidationError as exc:
        raise config_error(exc) from exc
    run_extract(config, local=local, address=address)


def run_extract(config: FaceExtractionConfig, *, local: bool, address: str | None) -> None:
    """Extract the faces of ``config``'s dataset: in this process when ``local``, else on Ray
    at ``address`` (default: ``RAY_ADDRESS`` or a new local one); print the summary."""
    from batch.faces import extract_faces, read_rows

    rows = read_rows(config)
    err_console.print(f"{len(rows)} rows of {config.dataset} at {config.root}")
    with contextlib.nullcontext() if local else ray_session(address):
        summary = extract_faces(config, rows=rows, local=local)
    out_console.print(summary.line(), markup=False, highlight=False, soft_wrap=True)
