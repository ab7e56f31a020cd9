"""``dfd models``: list, verify, init, import and export the ensemble's model directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from dfd.common import cli_errors, out_console
from pipeline.errors import CheckpointError
from pipeline.models.backends import OnnxRunner, export_onnx
from pipeline.models.checkpoint import file_sha256, load_checkpoint
from pipeline.models.manifest import ModelDirectory, resolve_model_dir
from pipeline.models.networks import build_network, calibrate_untrained
from pipeline.models.preprocess import normalise

app = typer.Typer(
    help="Manage the model directory (manifest and checkpoints).", no_args_is_help=True
)

ModelDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--model-dir", help="Model directory (default: $DFD_MODEL_DIR or $DFD_HOME/models)."
    ),
]


def _status(directory: ModelDirectory, name: str) -> dict[str, object]:
    spec = directory.load().member(name)
    path = directory.checkpoint_path(spec)
    if path is None:
        weights = "random-init"
    elif not path.exists():
        weights = "missing"
    else:
        weights = "present"
    return {**spec.model_dump(mode="json"), "weights": weights}


@app.command("list")
@cli_errors
def list_(
    model_dir: ModelDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the members, their specs and whether their weights are present."""
    directory = resolve_model_dir(model_dir)
    manifest = directory.load()
    members = [_status(directory, m.name) for m in manifest.members]
    if as_json:
        payload = {
            "model_dir": str(directory.root),
            "ensemble_version": manifest.ensemble_version,
            "members": members,
        }
        print(json.dumps(payload, indent=2))
        return
    table = Table(title=f"models in {directory.root}")
    for col in ("name", "architecture", "backbone", "input", "weights", "version", "trained on"):
        table.add_column(col)
    for m in members:
        table.add_row(
            str(m["name"]),
            str(m["architecture"]),
            str(m["backbone"]),
            str(m["input_size"]),
            str(m["weights"]),
            str(m["version"]),
            str(m["trained_on"]),
        )
    out_console.print(table)


@app.command()
@cli_errors
def init(
    model_dir: ModelDirOpt = None,
    preset: Annotated[str, typer.Option(help="paper (full size) or tiny (tests)")] = "paper",
    input_size: Annotated[int | None, typer.Option(help="Input side in pixels.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing manifest.")] = False,
) -> None:
    """Write a manifest for the paper's five members (untrained until checkpoints are imported)."""
    if preset not in ("paper", "tiny"):
        raise typer.BadParameter("preset must be 'paper' or 'tiny'")
    directory = resolve_model_dir(model_dir, create_default=False)
    manifest = directory.init(preset, input_size, force)  # type: ignore[arg-type]
    print(f"wrote {directory.manifest_path} with {len(manifest.members)} members (no weights yet)")


@app.command("import")
@cli_errors
def import_(
    name: Annotated[str, typer.Argument(help="Member name, as in `dfd models list`.")],
    checkpoint: Annotated[Path, typer.Argument(help="State dict (.pt or .safetensors).")],
    version: Annotated[str, typer.Option(help="Version of these weights.")],
    trained_on: Annotated[str, typer.Option(help="Training data, e.g. 'DFDC'.")],
    model_dir: ModelDirOpt = None,
) -> None:
    """Copy a trained checkpoint into the model directory and record its sha256."""
    directory = resolve_model_dir(model_dir)
    spec = directory.import_checkpoint(name, checkpoint, version=version, trained_on=trained_on)
    print(f"{spec.name}: {spec.checkpoint} sha256 {spec.sha256}")


@app.command()
@cli_errors
def verify(model_dir: ModelDirOpt = None) -> None:
    """Check every checkpoint's sha256 and load it strictly; exit 4 on the first problem."""
    directory = resolve_model_dir(model_dir)
    manifest = directory.load()
    for spec in manifest.members:
        path = directory.checkpoint_path(spec)
        if path is None:
            print(f"{spec.name}: no checkpoint (runs with random weights)")
            continue
        load_checkpoint(build_network(spec), path, spec.sha256)
        print(f"{spec.name}: ok ({path.name}, sha256 {file_sha256(path)[:12]}...)")


@app.command()
@cli_errors
def export(
    out: Annotated[Path, typer.Option(help="Output folder for the exported files.")],
    model_dir: ModelDirOpt = None,
    fmt: Annotated[Literal["onnx"], typer.Option("--format", help="Export format.")] = "onnx",
    check: Annotated[bool, typer.Option(help="Compare each export with torch eager.")] = True,
) -> None:
    """Export every member to ONNX (dynamic batch), checked against eager on a random batch."""
    import numpy as np
    import torch

    directory = resolve_model_dir(model_dir)
    for spec in directory.load().members:
        net = build_network(spec)
        path = directory.checkpoint_path(spec)
        if path is not None:
            load_checkpoint(net, path, spec.sha256)
        else:  # the same untrained network the ensemble runs (see Member.load)
            calibrate_untrained(net, spec)
        target = export_onnx(net, spec, out / f"{spec.name}.onnx")
        line = f"{spec.name}: {target}"
        if check:
            # Face-like smooth images, normalised as the member expects (white noise is far out
            # of distribution and amplifies float32 rounding in any runtime).
            size = (spec.input_size, spec.input_size)
            smooth = torch.nn.functional.interpolate(
                torch.rand(4, 3, 6, 6), size=size, mode="bilinear"
            )
            x = normalise(smooth, spec.mean, spec.std)
            with torch.inference_mode():
                ref = net(x).numpy()
            diff = float(np.abs(OnnxRunner(target)(x) - ref).max())
            # float32 kernels differ between runtimes: compare relative to the logits' scale.
            rel = diff / max(1.0, float(np.abs(ref).max()))
            if rel > 1e-3:
                raise CheckpointError(
                    f"export of {spec.name} differs from eager by {diff:.2e} ({rel:.1e} relative)"
                )
            line += f" (max |logit diff| vs eager {diff:.1e}, {rel:.1e} relative)"
        print(line)
