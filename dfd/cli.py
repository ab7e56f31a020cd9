"""The ``dfd`` command line (``dfd --help``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dfd import (
    analyze_cmd,
    attack_cmd,
    bench_cmd,
    evaluate_cmd,
    faces_cmd,
    models_cmd,
    serve_cmd,
    status_cmd,
    train_cmd,
)
from dfd.common import BackendOpt, EnsembleOpt, cli_errors, err_console, out_console, setup_logging
from dfd.version import __version__

try:  # typer >= 0.22 runs its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer on the real click
    from click import exceptions as click_errors  # type: ignore[no-redef]

app = typer.Typer(
    help="DeepFake detection: shots, faces, face tracks and a five-model ensemble.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(models_cmd.app, name="models")
app.add_typer(bench_cmd.app, name="bench")
app.add_typer(faces_cmd.app, name="faces")
app.command("analyze")(analyze_cmd.analyze)
app.command("attack")(attack_cmd.attack)
app.add_typer(serve_cmd.keys_app, name="keys")
app.command("serve")(serve_cmd.serve_command)
app.command("submit")(serve_cmd.submit_command)
app.command("status")(status_cmd.status)
app.command("evaluate")(evaluate_cmd.evaluate)
app.command("report")(evaluate_cmd.report)
app.command("model-card")(evaluate_cmd.model_card)
app.command("train")(train_cmd.train)


def _version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    setup_logging(verbose)


@app.command("score-faces")
@cli_errors
def score_faces(
    images: Annotated[list[Path], typer.Argument(help="Face crops (JPEG, PNG, WebP, BMP).")],
    model_dir: models_cmd.ModelDirOpt = None,
    backend: BackendOpt = "auto",
    ensemble: EnsembleOpt = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the scores as JSON.")
    ] = None,
) -> None:
    """Score pre-cropped face images with the ensemble (no face detection)."""
    from pipeline.media import load_image
    from pipeline.models import Ensemble, InferenceSettings

    crops = [load_image(p) for p in images]
    settings = InferenceSettings.model_validate(
        {"model_dir": model_dir, "backend": backend, "ensemble": ensemble}
    )
    scorer = Ensemble.load(settings)
    pred = scorer.predict(crops)
    for w in scorer.warnings():
        err_console.print(f"[bold yellow]WARNING[/]: {w}")
    rows = [
        {"image": str(p), "probability": float(pred.probability[i]), "members": pred.member_dict(i)}
        for i, p in enumerate(images)
    ]
    table = Table(title="DeepFake probability per face image")
    table.add_column("image")
    table.add_column("ensemble", justify="right")
    for name in pred.member_names:
        table.add_column(name, justify="right")
    for i, path in enumerate(images):
        table.add_row(
            str(path),
            f"{pred.probability[i]:.3f}",
            *(f"{v:.3f}" for v in pred.member_probabilities[i]),
        )
    out_console.print(table)
    if json_out is not None:
        payload = {
            "service_version": __version__,
            "ensemble": scorer.name,
            "models": [vars(info) for info in scorer.infos],
            "warnings": scorer.warnings(),
            "faces": rows,
        }
        json_out.write_text(json.dumps(payload, indent=2) + "\n")


def main() -> None:
    """Run ``dfd``; a usage error (unknown option, bad value) is one line on stderr, exit 2."""
    try:
        code = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        # `dfd` or `dfd models` alone: their help, as click would print it.
        err_console.print(exc.format_message(), markup=False, highlight=False)
        sys.exit(exc.exit_code)
    except click_errors.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "dfd"
        err_console.print(
            f"dfd: usage: {exc.format_message()} (see `{where} --help`)",
            markup=False,
            highlight=False,
        )
        sys.exit(exc.exit_code)
    except click_errors.ClickException as exc:
        err_console.print(f"dfd: {exc.format_message()}", markup=False, highlight=False)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("dfd: interrupted", markup=False, highlight=False)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
