"""Shared pieces of the command line: typed errors become one-line messages and exit codes;
the options and parsing several commands share."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from pipeline.errors import ConfigError, DfdError

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True, soft_wrap=True)  # one line per error, never wrapped
out_console = Console()

#: ``--backend`` of every command that scores faces (validated by ``InferenceSettings``).
BackendOpt = Annotated[
    str,
    typer.Option(help="auto (ONNX Runtime on CPU, torch on CUDA), torch, onnx or openvino."),
]


#: ``--device`` of the commands that run models: ``cpu``, ``cuda`` or ``auto``.
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or auto.")]


#: ``--ensemble`` of every command that scores faces (over ``$DFD_ENSEMBLE`` and the manifest's
#: default, ``dfd models use``).
EnsembleOpt = Annotated[
    str | None,
    typer.Option(
        help="Named ensemble of the manifest: paper, mesonet, or your own "
        "(default: $DFD_ENSEMBLE, else `dfd models use`, else auto)."
    ),
]


#: ``--option`` of the commands that read a dataset (parsed by :func:`reader_options`).
ReaderOptionOpt = Annotated[
    list[str] | None,
    typer.Option(help="Reader option KEY=VALUE, e.g. compression=c40 (repeatable)."),
]


#: ``--address`` of the commands that run on Ray (local Ray is started when there is none).
AddressOpt = Annotated[
    str | None, typer.Option(help="Ray cluster address (default: RAY_ADDRESS or local).")
]


def cli_errors(fn: F) -> F:
    """Turn a :class:`DfdError` into ``dfd: <title>: <detail>`` on stderr and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DfdError as exc:
            err_console.print(
                f"dfd: {exc.title.lower()}: {exc.detail}", markup=False, highlight=False
            )
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


def config_error(exc: ValidationError, *, tidy: bool = False) -> ConfigError:
    """The first problem pydantic found in a command's settings, as ``<field>: <message>``;
    ``tidy`` drops pydantic's ``Value error, `` prefix, and the field when the whole model
    failed a check."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    if not tidy:
        return ConfigError(f"{where}: {first['msg']}")
    message = str(first["msg"]).removeprefix("Value error, ")
    return ConfigError(f"{where}: {message}" if where else message)


def stage_layout(
    *,
    decode_actors: int,
    actors: int,
    cpus_per_actor: float,
    gpus_per_actor: float | None,
    actor_memory_mb: int | None,
    detect_batch: int,
    final_batch: int,
) -> dict[str, Any]:
    """The stages of a dataset run (``dfd evaluate``, ``dfd attack``) from their shared flags:
    ``decode``, ``detect`` and ``final`` (the run's last model stage), as ``StageSettings``."""
    from batch.config import StageSettings

    def model(batch_size: int) -> StageSettings:
        return StageSettings(
            actors=actors, num_cpus=cpus_per_actor, num_gpus=gpus_per_actor,
            memory_mb=actor_memory_mb, batch_size=batch_size,
        )  # fmt: skip

    return {
        "decode": StageSettings(actors=decode_actors, num_cpus=cpus_per_actor),
        "detect": model(detect_batch),
        "final": model(final_batch),
    }


def reader_options(options: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values parsed as JSON when they are JSON (lists, numbers)."""
    parsed: dict[str, Any] = {}
    for item in options or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option takes KEY=VALUE, got {item!r}")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Ray at ``address`` (default: ``RAY_ADDRESS`` or a new local one) unless this process is
    connected already; shuts down only a session it started."""
    import ray

    started_ray = False
    if not ray.is_initialized():
        with err_console.status("starting Ray"):
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        started_ray = True
    try:
        yield
    finally:
        if started_ray:
            ray.shutdown()


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
