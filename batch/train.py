"""``dfd train``: train or fine-tune one member on a faces folder with Ray Train.

The data are the crops ``dfd faces extract`` wrote: Ray Data reads the Parquet parts and turns
each row into the member's input exactly as scoring does (:mod:`batch.train_data`). A
``TorchTrainer`` runs :func:`batch.train_worker.train_loop` on every worker; each worker iterates
its shard with ``iter_torch_batches``. The recipe is the paper's (section 3.2): Adam, learning
rate 1e-4, batch 32, 25 epochs; mixed precision on CUDA (:class:`batch.train_config.TrainConfig`).
This module is the driver: it checks the input, prepares the run folder, runs the trainer and
hands the best epoch to :func:`batch.train_member.write_member`.

The run folder::

    RUN/train.json     the settings, the member, where the weights started, the fingerprint
    RUN/ray/train/     Ray Train's storage: one checkpoint per epoch (the two newest kept), each
                       with the current weights, the best weights so far, the optimiser and
                       ``state.json`` (epoch, step, history, best epoch)

``--resume RUN`` continues from the newest checkpoint (same faces, member and recipe; more
epochs are allowed). Only when training ends well are the best weights written into the model
directory, as a new version of the member with a :class:`~pipeline.models.spec.TrainingRecord`;
nothing in the model directory changes before that.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from batch.train_config import EXECUTION_ONLY, TrainConfig
from batch.train_data import FacesPlan, check_plan, faces_dataset, plan_faces
from batch.train_member import initial_state, resolve_member, write_member
from batch.train_worker import BEST_FILE, STATE_FILE, train_loop
from pipeline.errors import ConfigError, DfdError
from pipeline.models.spec import MemberSpec
from pipeline.version import __version__

if TYPE_CHECKING:
    from pipeline.models.manifest import Manifest, ModelDirectory

__all__ = [
    "RAY_DIR",
    "RUN_NAME",
    "TRAIN_FILE",
    "TrainConfig",
    "TrainSummary",
    "describe_history",
    "fingerprint",
    "latest_checkpoint",
    "train",
]

log = logging.getLogger(__name__)

TRAIN_FILE = "train.json"
RAY_DIR = "ray"
RUN_NAME = "train"


@dataclass
class TrainSummary:
    """What a finished run did."""

    out: Path
    member: MemberSpec
    epochs: int
    best: dict[str, float]
    history: list[dict[str, float]]
    elapsed_s: float
    model_dir: Path

    def line(self) -> str:
        b = self.best
        return (
            f"{self.member.name} {self.member.version}: best epoch {int(b['epoch'])} of "
            f"{self.epochs}, validation AUC {b['val_auc']:.4f}, balanced accuracy "
            f"{b['val_balanced_accuracy']:.4f} on {int(b['val_frames'])} faces; written to "
            f"{self.model_dir} in {self.elapsed_s:.0f} s"
        )


def fingerprint(config: TrainConfig, plan: FacesPlan) -> str:
    settings = config.model_dump(mode="json", exclude=EXECUTION_ONLY)
    settings["faces"] = plan.digest
    settings["init"] = str(Path(config.init).resolve()) if config.init else None
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def latest_checkpoint(run: Path) -> Path | None:
    """The newest checkpoint folder of a run (by the epoch its ``state.json`` records)."""
    found = []
    for state in (run / RAY_DIR / RUN_NAME).glob(f"checkpoint_*/{STATE_FILE}"):
        try:
            found.append((json.loads(state.read_text())["epoch"], state.parent))
        except (OSError, ValueError, KeyError):
            continue
    return max(found)[1] if found else None


def _prepare_run(config: TrainConfig, resume: bool, run_id: str, init_line: str) -> Path | None:
    """Write ``train.json`` of a new run, or check a resumed one; its newest checkpoint."""
    out = Path(config.out)
    record = out / TRAIN_FILE
    if resume:
        if not record.is_file():
            raise ConfigError(f"--resume {out}: not a training run (no {TRAIN_FILE})")
        stored = json.loads(record.read_text())
        if stored.get("run_id") != run_id:
            raise ConfigError(
                f"--resume {out}: that run trained {stored.get('member')!r} on other faces or "
                "with another recipe; start a new run folder"
            )
        return latest_checkpoint(out)
    if record.is_file():
        raise ConfigError(f"{out} holds a training run already: pass --resume to continue it")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty: choose a new run folder")
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "run_id": run_id,
        "member": config.member,
        "init": init_line,
        "config": config.model_dump(mode="json"),
        "service_version": __version__,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    record.write_text(json.dumps(payload, indent=2) + "\n")
    return None


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    write: bool = True,
    connect: Callable[[], object] | None = None,
) -> TrainSummary:
    """Train ``config.member`` on ``config.faces``; write the best weights into the model
    directory when training ends well (``write=False``: leave it alone, a benchmark).

    Every check of the input runs first; then ``connect`` (e.g. ``ray.init``) is called, so a
    bad invocation fails before Ray starts. Without ``connect`` Ray must be initialised."""
    import ray

    started = time.perf_counter()
    directory, spec = resolve_member(config)
    plan = plan_faces(Path(config.faces))
    check_plan(plan, config)
    manifest, save_as = _check_target(config, spec, plan, directory)
    run_id = fingerprint(config, plan)
    init_state, init_line = initial_state(config, directory, spec)
    resume_from = _prepare_run(config, resume, run_id, init_line)
    if resume and resume_from is None:
        log.warning("no checkpoint in %s yet: starting from the beginning", config.out)
    if connect is not None:
        connect()
    _check_room(config, float(ray.cluster_resources().get("CPU", 0.0)))

    trainer = _trainer(config, plan, spec, run_id, init_state, resume_from)
    best, history, best_state = _fit(trainer)
    member = (
        spec
        if not write
        else write_member(
            config, plan, directory, manifest, spec, save_as, init_line, best, best_state, history
        )
    )
    return TrainSummary(
        out=Path(config.out),
        member=member,
        epochs=len(history),
        best=best,
        history=history,
        elapsed_s=time.perf_counter() - started,
        model_dir=directory.root,
    )


def _check_target(
    config: TrainConfig, spec: MemberSpec, plan: FacesPlan, directory: ModelDirectory
) -> tuple[Manifest, str]:
    """The model directory's manifest and the name the result is saved as, once the faces and
    the name fit the member."""
    if spec.crop_margin > plan.margin + 1e-6:
        raise ConfigError(
            f"member {spec.name} crops faces at margin {spec.crop_margin}, the faces were "
            f"extracted at {plan.margin}: extract them again with a wider margin"
        )
    save_as = config.save_as or spec.name
    manifest = directory.load()
    if save_as != spec.name and save_as in [m.name for m in manifest.members]:
        existing = manifest.member(save_as)
        if existing.architecture_digest() != spec.architecture_digest():
            raise ConfigError(f"--save-as {save_as}: a member of another architecture has it")
    return manifest, save_as


def _trainer(
    config: TrainConfig,
    plan: FacesPlan,
    spec: MemberSpec,
    run_id: str,
    init_state: dict[str, torch.Tensor],
    resume_from: Path | None,
) -> Any:
    """The ``TorchTrainer`` of the run: :func:`train_loop` on ``config.workers`` workers, one
    checkpoint per epoch into the run folder, the training and validation streams."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    loop = {
        "spec": spec.model_dump(mode="json"),
        "init_state": ray.put(init_state),
        "run_id": run_id,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "amp": config.amp,
        "max_steps_per_epoch": config.max_steps_per_epoch,
        "torch_threads": config.torch_threads,
        "fp16_grid": config.fp16_grid,
        "resume_from": (
            None if resume_from is None else ray.train.Checkpoint.from_directory(str(resume_from))
        ),
    }
    resources: dict[str, float] = {"CPU": config.cpus_per_worker}
    if config.gpus_per_worker:
        resources["GPU"] = config.gpus_per_worker
    return TorchTrainer(
        train_loop,
        train_loop_config=loop,
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.workers,
            use_gpu=config.gpus_per_worker > 0,
            resources_per_worker=resources,
        ),
        run_config=ray.train.RunConfig(
            name=RUN_NAME,
            storage_path=str((Path(config.out) / RAY_DIR).resolve()),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=0),
        ),
        datasets={
            "train": faces_dataset(plan, config, spec, train=True),
            "val": faces_dataset(plan, config, spec, train=False),
        },
    )


def _fit(
    trainer: Any,
) -> tuple[dict[str, float], list[dict[str, float]], dict[str, torch.Tensor]]:
    """Run the trainer; the best epoch's metrics, the history and the best weights."""
    import ray.train
    from safetensors.torch import load_file

    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise DfdError(f"training failed, the model directory is unchanged: {_cause(exc)}") from exc
    if result.checkpoint is None:
        raise DfdError("training ended without a checkpoint; the model directory is unchanged")
    with result.checkpoint.as_directory() as folder:
        state_info = json.loads((Path(folder) / STATE_FILE).read_text())
        best_state = load_file(str(Path(folder) / BEST_FILE))
    best, history = state_info["best"], state_info["history"]
    if best is None or math.isnan(best["val_auc"]):
        raise DfdError("training produced no validation AUC; the model directory is unchanged")
    return best, history, best_state


def _check_room(config: TrainConfig, cpus: float) -> None:
    """Refuse a run whose workers would leave no CPU for reading and preprocessing (it would
    wait forever, not fail)."""
    needed = config.workers * config.cpus_per_worker + config.data_cpus
    if cpus and needed > cpus + 1e-9:
        raise ConfigError(
            f"{config.workers} workers x {config.cpus_per_worker} CPUs leave no room for the "
            f"data tasks ({config.data_cpus} CPU) on a cluster of {cpus:g} CPUs; lower "
            "--cpus-per-worker"
        )


def _cause(exc: BaseException) -> str:
    """The worker's own error, one line."""
    text = str(exc).strip().splitlines()
    for line in reversed(text):
        if re.match(r"^\w+(Error|Exception)\b", line.strip()):
            return line.strip()
    return text[-1] if text else type(exc).__name__


def describe_history(history: Sequence[dict[str, float]]) -> list[str]:
    """One line per epoch for the command line."""
    return [
        f"epoch {int(h['epoch'])}: train loss {h['train_loss']:.4f}, val loss "
        f"{h['val_loss']:.4f}, val AUC {h['val_auc']:.4f}, {h['images_per_s']:.1f} images/s"
        for h in history
    ]
