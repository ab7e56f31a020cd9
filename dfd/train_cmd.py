"""``dfd train``: train or fine-tune one member on a faces folder with Ray Train.

``dfd train --faces faces/ffpp --member meso4_df --out runs/meso4-ft`` fine-tunes on the crops of
``dfd faces extract`` with the paper's recipe and writes the best epoch into the model directory
as a new version of the member (see :mod:`batch.train`). ``--resume RUN`` continues a run.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dfd.common import AddressOpt, cli_errors, config_error, err_console, out_console
from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from batch.train import TrainConfig


@cli_errors
def train(
    faces: Annotated[Path, typer.Option(help="A faces folder of `dfd faces extract`.")],
    member: Annotated[
        str, typer.Option(help="Member to train: one of the manifest, or sbi_lite0.")
    ],
    out: Annotated[Path | None, typer.Option(help="A new run folder.")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue this run folder from its newest checkpoint.")
    ] = None,
    init: Annotated[Path | None, typer.Option(help="Start from this checkpoint file.")] = None,
    from_member: Annotated[
        str | None, typer.Option(help="Start from this member's trained weights.")
    ] = None,
    init_backbone: Annotated[
        bool,
        typer.Option(
            "--init-backbone", help="Start the backbone from ImageNet weights (EfficientNet-Lite)."
        ),
    ] = False,
    save_as: Annotated[
        str | None, typer.Option(help="Record the result under this member name.")
    ] = None,
    ensemble: Annotated[
        list[str] | None, typer.Option(help="Ensemble the trained member joins (repeatable).")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Epochs (paper: 25).")] = 25,
    batch_size: Annotated[int, typer.Option(help="Faces per step and worker (paper: 32).")] = 32,
    lr: Annotated[float, typer.Option(help="Adam learning rate (paper: 1e-4).")] = 1e-4,
    weight_decay: Annotated[float, typer.Option(help="Adam weight decay.")] = 0.0,
    no_augment: Annotated[
        bool, typer.Option("--no-augment", help="Train without the paper's augmentations.")
    ] = False,
    cutout_p: Annotated[float, typer.Option(help="Probability of Face-Cutout.")] = 0.5,
    sbi: Annotated[
        bool,
        typer.Option("--sbi", help="Self-blended pseudo-fakes from the real training faces."),
    ] = False,
    max_steps: Annotated[
        int | None, typer.Option(help="At most this many steps per epoch (a smoke test).")
    ] = None,
    fp16: Annotated[
        bool, typer.Option("--fp16", help="Store float16 weights (checked within 1e-3).")
    ] = False,
    fp16_grid: Annotated[
        bool,
        typer.Option(
            "--fp16-grid", help="Keep the weights on the float16 grid (exact --fp16 storage)."
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the validation pseudo-fakes.")] = 0,
    workers: Annotated[int, typer.Option(help="Ray Train workers.")] = 1,
    cpus_per_worker: Annotated[float, typer.Option(help="Logical CPUs per worker.")] = 1.0,
    gpus_per_worker: Annotated[float, typer.Option(help="GPUs per worker (0: CPU).")] = 0.0,
    torch_threads: Annotated[int, typer.Option(help="Torch threads per worker (0: all).")] = 0,
    model_dir: Annotated[Path | None, typer.Option(help="Model directory.")] = None,
    address: AddressOpt = None,
) -> None:
    """Train a member with Ray Train; the best epoch becomes a new version of it."""
    from pydantic import ValidationError

    from batch.train import TrainConfig

    if (out is None) == (resume is None):
        raise ConfigError("give --out for a new run or --resume RUN to continue one")
    try:
        config = TrainConfig(
            faces=faces, member=member, out=out or resume, model_dir=model_dir, init=init,
            from_member=from_member, init_backbone=init_backbone, save_as=save_as,
            ensembles=tuple(ensemble or []), epochs=epochs, batch_size=batch_size, lr=lr,
            weight_decay=weight_decay, augment=not no_augment, cutout_p=cutout_p, sbi=sbi,
            seed=seed, fp16=fp16, fp16_grid=fp16_grid, max_steps_per_epoch=max_steps,
            workers=workers, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
            torch_threads=torch_threads, command=shlex.join(["dfd", *sys.argv[1:]]),
        )  # fmt: skip
    except ValidationError as exc:
        raise config_error(exc) from exc
    run_train(config, resume=resume is not None, address=address)


def run_train(config: TrainConfig, *, resume: bool, address: str | None) -> None:
    """Train (or, with ``resume``, continue) the run of ``config`` on Ray at ``address``
    (default: ``RAY_ADDRESS`` or a new local one, started only when the run needs it); print
    the epochs and the outcome."""
    import ray

    from batch.train import describe_history
    from batch.train import train as train_member

    started_ray = False

    def connect() -> None:
        nonlocal started_ray
        if not ray.is_initialized():
            with err_console.status("starting Ray"):
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            started_ray = True

    try:
        summary = train_member(config, resume=resume, connect=connect)
    finally:
        if started_ray:
            ray.shutdown()
    for line in describe_history(summary.history):
        err_console.print(line, markup=False, highlight=False)
    out_console.print(summary.line(), markup=False, highlight=False, soft_wrap=True)
