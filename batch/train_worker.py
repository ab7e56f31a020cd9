"""The loop every Ray Train worker runs: the member's network, Adam, binary cross-entropy on the
fake logit, validation on every epoch, and a checkpoint per epoch from rank 0.

Each checkpoint folder holds the current weights, the best weights so far, the optimiser and
``state.json`` (run id, epoch, step, history, best epoch), so a restarted or resumed run goes on
from the newest one. Mixed precision (float16 autocast, gradient scaling) on CUDA.
"""

from __future__ import annotations

import json
import math
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.metrics import balanced_accuracy, roc_auc
from pipeline.models.spec import MemberSpec

#: Files inside each Ray Train checkpoint.
MODEL_FILE, BEST_FILE, OPTIMIZER_FILE, STATE_FILE = (
    "model.safetensors",
    "best.safetensors",
    "optimizer.pt",
    "state.json",
)


def _defined(
    metric: Callable[[np.ndarray, np.ndarray], float], labels: np.ndarray, scores: np.ndarray
) -> float:
    """``metric`` of the evaluation reports, NaN where it is undefined (one class)."""
    from evaluation.metrics import UndefinedMetricError

    try:
        return metric(labels.astype(np.int8), scores)
    except UndefinedMetricError:
        return float("nan")


def _peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _gather(values: np.ndarray) -> np.ndarray:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, values)
    return np.concatenate(out)


def _state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    inner = getattr(model, "module", model)  # DistributedDataParallel wraps the network
    return {k: v.detach().cpu().clone().contiguous() for k, v in inner.state_dict().items()}


def _round_to_fp16(model: torch.nn.Module) -> None:
    """Put every floating tensor of ``model`` (weights and batch-norm statistics) on the float16
    grid, in place."""
    with torch.no_grad():
        for tensor in getattr(model, "module", model).state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())


def _better(metrics: dict[str, float], best: dict[str, float] | None) -> bool:
    if best is None:
        return True
    auc, best_auc = metrics["val_auc"], best["val_auc"]
    if math.isnan(best_auc) and not math.isnan(auc):
        return True
    if auc != best_auc and not math.isnan(auc):
        return auc > best_auc
    return metrics["val_loss"] < best["val_loss"]


@dataclass
class _Trainee:
    """What one worker trains with: the (possibly distributed) network and its optimisation."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: torch.nn.Module
    device: torch.device
    #: float16 autocast (CUDA only).
    amp: bool


@dataclass
class _Progress:
    """Where a run stands: epochs done, optimiser steps, per-epoch metrics, the best epoch."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] | None = None
    best_state: dict[str, torch.Tensor] | None = None


@dataclass
class _Epoch:
    """One epoch of training on this worker: losses, images and where the time went."""

    losses: list[float]
    images: int
    steps: int
    data_s: float
    compute_s: float
    train_s: float


def train_loop(loop: dict[str, Any]) -> None:
    """One Ray Train worker: the member's network, Adam, BCE on the fake logit, a checkpoint
    per epoch from rank 0 (current and best weights, optimiser, history)."""
    import ray
    import ray.train
    import ray.train.torch

    from pipeline.models.registry import build_network

    if loop["torch_threads"]:
        torch.set_num_threads(loop["torch_threads"])
    spec = MemberSpec.model_validate(loop["spec"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = ray.train.torch.get_device()
    net = build_network(spec)
    net.load_state_dict(ray.get(loop["init_state"]), strict=True)
    model = ray.train.torch.prepare_model(net)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=loop["lr"], weight_decay=loop["weight_decay"]
    )
    amp = bool(loop["amp"]) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    trainee = _Trainee(model, optimizer, scaler, loss_fn, device, amp)

    # A restarted run's own checkpoint, else the newest one of the run folder (``--resume``).
    checkpoint = ray.train.get_checkpoint() or loop["resume_from"]
    progress = _Progress()
    if checkpoint is not None:
        progress = _restore(checkpoint, trainee, loop["run_id"])

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    for epoch in range(progress.epoch, loop["epochs"]):
        trained = _train_epoch(trainee, train_shard, loop)
        progress.step += trained.steps
        validated = _validate(trainee, val_shard, loop["batch_size"])
        metrics = _epoch_metrics(trained, validated, epoch + 1, progress.step, rank)
        metrics["fp16_grid"] = float(loop["fp16_grid"])
        best = progress.best
        if _better(metrics, best) or (
            loop["fp16_grid"] and best is not None and not best.get("fp16_grid")
        ):
            progress.best, progress.best_state = dict(metrics), _state_of(model)
        progress.history.append(metrics)
        if rank == 0:
            _report_checkpoint(metrics, trainee, progress, loop["run_id"], epoch + 1)
        else:
            ray.train.report(metrics)


def _restore(checkpoint: Any, trainee: _Trainee, run_id: str) -> _Progress:
    """Load the weights and optimiser of ``checkpoint`` into ``trainee``; where the run stood."""
    from safetensors.torch import load_file

    with checkpoint.as_directory() as folder:
        state = json.loads((Path(folder) / STATE_FILE).read_text())
        if state["run_id"] != run_id:
            raise ValueError("the checkpoint belongs to another training run")
        getattr(trainee.model, "module", trainee.model).load_state_dict(
            load_file(str(Path(folder) / MODEL_FILE)), strict=True
        )
        trainee.optimizer.load_state_dict(
            torch.load(
                Path(folder) / OPTIMIZER_FILE, map_location=trainee.device, weights_only=True
            )
        )
        best_state = load_file(str(Path(folder) / BEST_FILE))
        return _Progress(state["epoch"], state["step"], state["history"], state["best"], best_state)


def _train_epoch(trainee: _Trainee, shard: Any, loop: dict[str, Any]) -> _Epoch:
    """One pass over this worker's shard (or ``max_steps_per_epoch`` steps of it)."""
    model, optimizer, scaler, device = (
        trainee.model,
        trainee.optimizer,
        trainee.scaler,
        trainee.device,
    )
    batch_size, max_steps = loop["batch_size"], loop["max_steps_per_epoch"]
    model.train()
    losses: list[float] = []
    images, data_s, compute_s, steps = 0, 0.0, 0.0, 0
    started = time.perf_counter()
    tick = started
    for batch in shard.iter_torch_batches(
        batch_size=batch_size,
        dtypes=torch.float32,
        device=device,
        local_shuffle_buffer_size=4 * batch_size,
    ):
        x, y = batch["x"], batch["label"]
        got = time.perf_counter()
        data_s += got - tick
        if len(y) < 2:  # batch norm needs two samples in training mode
            tick = time.perf_counter()
            continue
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=trainee.amp):
            loss = trainee.loss_fn(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if loop["fp16_grid"]:
            _round_to_fp16(model)
        if device.type == "cuda":
            torch.cuda.synchronize()
        losses.append(float(loss.detach()))
        images += len(y)
        steps += 1
        tick = time.perf_counter()
        compute_s += tick - got
        if max_steps is not None and steps >= max_steps:
            break
    train_s = time.perf_counter() - started
    return _Epoch(losses, images, steps, data_s, compute_s, train_s)


def _validate(
    trainee: _Trainee, shard: Any, batch_size: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Scores ``(N,)``, labels ``(N,)`` and summed loss of the validation faces of every worker."""
    model, device = trainee.model, trainee.device
    model.eval()
    scores, labels, val_losses = [], [], []
    with torch.no_grad():
        for batch in shard.iter_torch_batches(
            batch_size=batch_size, dtypes=torch.float32, device=device
        ):
            logits = model(batch["x"]).float()
            val_losses.append(float(trainee.loss_fn(logits, batch["label"])) * len(logits))
            scores.append(torch.sigmoid(logits).cpu().numpy())
            labels.append(batch["label"].cpu().numpy())
    all_scores = _gather(np.concatenate(scores) if scores else np.zeros(0, np.float32))
    all_labels = _gather(np.concatenate(labels) if labels else np.zeros(0, np.float32))
    total_loss = float(_gather(np.array([sum(val_losses)], np.float64)).sum())
    return all_scores, all_labels, total_loss


def _epoch_metrics(
    trained: _Epoch,
    validated: tuple[np.ndarray, np.ndarray, float],
    epoch: int,
    step: int,
    rank: int,
) -> dict[str, float]:
    """The epoch's line of the history (throughput over every worker, gathered here)."""
    all_scores, all_labels, total_loss = validated
    images, train_s = trained.images, trained.train_s
    throughput = _gather(np.array([images, train_s, _peak_rss_mb()], np.float64)).reshape(-1, 3)
    return {
        "epoch": float(epoch),
        "step": float(step),
        "train_loss": float(np.mean(trained.losses)) if trained.losses else float("nan"),
        "val_loss": total_loss / max(1, len(all_labels)),
        "val_auc": _defined(roc_auc, all_labels, all_scores),
        "val_balanced_accuracy": _defined(balanced_accuracy, all_labels, all_scores),
        "val_frames": float(len(all_labels)),
        "train_images": float(images),
        "train_s": train_s,
        "data_s": trained.data_s,
        "compute_s": trained.compute_s,
        "images_per_s": images / train_s if train_s > 0 else 0.0,
        # Every worker together: images of all shards over the slowest worker's time.
        "images_per_s_all": float(throughput[:, 0].sum() / max(throughput[:, 1].max(), 1e-9)),
        "peak_rss_mb": _peak_rss_mb(),
        "peak_rss_mb_max": float(throughput[:, 2].max()),
        "rank": float(rank),
    }


def _report_checkpoint(
    metrics: dict[str, float], trainee: _Trainee, progress: _Progress, run_id: str, epoch: int
) -> None:
    """Rank 0: report ``metrics`` with a checkpoint of the run after ``epoch`` epochs."""
    import ray.train
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_file(_state_of(trainee.model), str(folder / MODEL_FILE))
        assert progress.best_state is not None
        save_file(progress.best_state, str(folder / BEST_FILE))
        torch.save(trainee.optimizer.state_dict(), folder / OPTIMIZER_FILE)
        state = {
            "run_id": run_id,
            "epoch": epoch,
            "step": progress.step,
            "history": progress.history,
            "best": progress.best,
        }
        (folder / STATE_FILE).write_text(json.dumps(state, indent=2))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
