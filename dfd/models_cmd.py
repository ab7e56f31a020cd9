"""``dfd models``: list, init, use, fetch, import, verify and export the model directory, and
push it to or pull it from object storage."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from dfd.common import cli_errors, out_console
from pipeline.errors import CheckpointError
from pipeline.models.backends import OnnxRunner, export_onnx
from pipeline.models.checkpoint import file_sha256, load_checkpoint
from pipeline.models.manifest import AUTO, ModelDirectory, default_model_dir, resolve_model_dir
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
    active, specs = manifest.resolve(directory)
    if as_json:
        payload = {
            "model_dir": str(directory.root),
            "ensemble_version": manifest.ensemble_version,
            "ensembles": manifest.ensembles,
            "default_ensemble": manifest.default_ensemble,
            "active_ensemble": active,
            "active_members": [s.name for s in specs],
            "members": members,
        }
        print(json.dumps(payload, indent=2))
        return
    table = Table(title=f"models in {directory.root}")
    columns = ("name", "architecture", "input", "output", "weights", "licence", "trained on")
    for col in columns:
        table.add_column(col)
    for m in members:
        table.add_row(
            str(m["name"]),
            f"{m['architecture']} {m['backbone']}".strip(),
            str(m["input_size"]),
            str(m["output"]),
            str(m["weights"]),
            str(m["licence"]),
            str(m["trained_on"]),
        )
    out_console.print(table)
    for name, listed in manifest.ensembles.items():
        mark = " (active)" if name == active else ""
        out_console.print(f"ensemble {name}{mark}: {', '.join(listed)}", highlight=False)
    if active not in manifest.ensembles:
        out_console.print(f"active: {active}: {', '.join(s.name for s in specs)}", highlight=False)
    default = manifest.default_ensemble
    out_console.print(f"default ensemble: {default} (change with `dfd models use NAME`)")


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
    target: Annotated[
        list[str],
        typer.Argument(
            help="NAME FILE: a state dict for a member of the manifest; with --format, FILE: "
            "a checkpoint exactly as its authors publish it.",
            show_default=False,
        ),
    ],
    version: Annotated[str, typer.Option(help="Version of these weights.")],
    trained_on: Annotated[str, typer.Option(help="Training data, e.g. 'FF++ c23'.")],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="Upstream family: mesonet-keras, sbi, selimsef, icpr2020dfdc, deepfakebench, "
            "fsfm. The member gets that family's architecture, preprocessing and output rule.",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Member name for --format (default: from the file).")
    ] = None,
    variant: Annotated[
        str | None,
        typer.Option(help="Architecture variant for --format when the keys cannot tell."),
    ] = None,
    ensemble: Annotated[
        list[str] | None,
        typer.Option(help="Add the member to this named ensemble (repeatable; created if new)."),
    ] = None,
    licence: Annotated[
        str | None, typer.Option(help="Licence of the weights (default: the family's).")
    ] = None,
    model_dir: ModelDirOpt = None,
) -> None:
    """Add trained weights: a state dict for a member, or an upstream checkpoint (--format)."""
    directory = resolve_model_dir(model_dir)
    if fmt is None:
        if len(target) != 2:
            raise typer.BadParameter("give NAME FILE (or --format FAMILY FILE)")
        member, checkpoint = target[0], Path(target[1])
        spec = directory.import_checkpoint(
            member, checkpoint, version=version, trained_on=trained_on, licence=licence
        )
        if ensemble:
            directory.save(directory.load().with_member(spec, tuple(ensemble)))
    else:
        from pipeline.models.importers import import_format

        if len(target) != 1:
            raise typer.BadParameter("with --format give one FILE (the member name is --name)")
        checkpoint = Path(target[0])
        member = name or _member_name(fmt, checkpoint)
        imported = import_format(fmt, checkpoint, member, variant)
        spec = directory.add_member(
            imported,
            version=version,
            trained_on=trained_on,
            licence=licence,
            source=f"{imported.spec.source} (sha256 {file_sha256(checkpoint)})".strip(),
            ensembles=tuple(ensemble or ()),
        )
    print(f"{spec.name}: {spec.checkpoint} sha256 {spec.sha256}")


def _member_name(fmt: str, path: Path) -> str:
    """A member name from the format and the file name: lower case, ``[a-z0-9_]``."""
    stem = re.sub(r"[^a-z0-9]+", "_", path.stem.lower()).strip("_")
    return f"{fmt.replace('-', '_')}_{stem}"[:64] or fmt.replace("-", "_")


@app.command()
@cli_errors
def use(
    ensemble: Annotated[str, typer.Argument(help="A named ensemble of the manifest, or auto.")],
    model_dir: ModelDirOpt = None,
) -> None:
    """Make ENSEMBLE the one `dfd analyze`, the service, evaluation and attacks run
    ($DFD_ENSEMBLE and --ensemble still override it)."""
    directory = resolve_model_dir(model_dir)
    manifest = directory.use(ensemble)
    active, specs = manifest.resolve(directory)
    note = " (auto)" if ensemble == AUTO else ""
    print(f"default ensemble: {ensemble}{note}; runs {active}: {', '.join(s.name for s in specs)}")


@app.command()
@cli_errors
def fetch(
    name: Annotated[str, typer.Argument(help="A known member or ensemble, e.g. mesonet.")],
    mirror: Annotated[
        str | None,
        typer.Option(
            help="A folder or http(s) base URL laid out like shared/weights "
            "(default: $DFD_WEIGHTS_MIRROR, else the pinned upstream URLs)."
        ),
    ] = None,
    model_dir: ModelDirOpt = None,
) -> None:
    """Download a known member's published weights, check their sha256, convert and record
    them (licence and source) in the manifest; on any failure nothing changes."""
    from pipeline.models.fetch import fetch_members

    directory = resolve_model_dir(model_dir, create_default=False)
    for spec in fetch_members(directory, name, mirror=mirror):
        print(f"{spec.name}: {spec.checkpoint} ({spec.licence}; {spec.source})")


StoreArg = Annotated[
    str, typer.Argument(help="s3://BUCKET/PREFIX (credentials: AWS variables) or a folder.")
]
EndpointOpt = Annotated[
    str | None,
    typer.Option(help="S3 endpoint (MinIO), e.g. http://minio.internal:9000; default AWS."),
]


@app.command()
@cli_errors
def push(store: StoreArg, model_dir: ModelDirOpt = None, endpoint_url: EndpointOpt = None) -> None:
    """Upload the model directory (manifest, checkpoints, aux/) and an index of every file's
    sha256 to object storage, for cluster nodes to pull."""
    from serve.model_sync import model_store, push_models

    storage, prefix = model_store(store, endpoint_url)
    report = push_models(resolve_model_dir(model_dir, create_default=False), storage, prefix)
    print(f"pushed {len(report.copied)} files to {store}")


@app.command()
@cli_errors
def pull(store: StoreArg, model_dir: ModelDirOpt = None, endpoint_url: EndpointOpt = None) -> None:
    """Download a pushed model directory: each file checked against the index's sha256, files
    already in place kept, the manifest last; on any failure no file changes."""
    from serve.model_sync import model_store, pull_models

    storage, prefix = model_store(store, endpoint_url)
    directory = ModelDirectory(model_dir or default_model_dir())
    report = pull_models(storage, prefix, directory)
    print(
        f"pulled {len(report.copied)} files into {directory.root} "
        f"({len(report.kept)} already there)"
    )


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
            # of distribution and amplifies float32 rounding in any runtime). Seeded: the same
            # batch on every run, so that a check that passed once passes again.
            size = (spec.input_size, spec.input_size)
            coarse = torch.rand(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))
            smooth = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear")
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
