"""Shared pieces of the command line: typed errors become one-line messages and exit codes."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from pipeline.errors import DfdError

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True, soft_wrap=True)  # one line per error, never wrapped
out_console = Console()

#: ``--backend`` of every command that scores faces (validated by ``InferenceSettings``).
BackendOpt = Annotated[
    str,
    typer.Option(help="auto (ONNX Runtime on CPU, torch on CUDA), torch, onnx or openvino."),
]


#: ``--ensemble`` of every command that scores faces (over ``$DFD_ENSEMBLE`` and the manifest's
#: default, ``dfd models use``).
EnsembleOpt = Annotated[
    str | None,
    typer.Option(
        help="Named ensemble of the manifest: paper, mesonet, or your own "
        "(default: $DFD_ENSEMBLE, else `dfd models use`, else auto)."
    ),
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


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
