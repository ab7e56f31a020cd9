"""The faces folder as training sees it, and its rows turned into the member's input.

:func:`plan_faces` reads the labels (not the pictures) of a faces folder of ``dfd faces extract``
(:mod:`batch.faces_folder`) and :func:`check_plan` refuses a set that cannot train or validate.
:func:`faces_dataset` is the Ray Data stream Ray Train's workers iterate: one read task per
Parquet part, then :func:`prepare_batch`, which turns each row into the member's input exactly as
scoring does (its own crop margin out of the extracted crop, resize rule, input size, mean and
std: :func:`pipeline.models.ensemble.member_crops`, :mod:`pipeline.models.preprocess`), after the
paper's augmentations and Face-Cutout (:mod:`pipeline.training.augment`) for training rows, and
with self-blended pseudo-fakes (:mod:`pipeline.training.sbi`) when asked.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from batch.faces_folder import FACE, PARTS_DIR, FacesFolder, decode_crop
from batch.train_config import TrainConfig
from pipeline.errors import BadInputError, ConfigError
from pipeline.models.spec import MemberSpec

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

#: Columns of the faces parts that training reads.
COLUMNS = [
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
    from pipeline.models.member import member_crops
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
        [pq.read_table(str(path), columns=COLUMNS) for path in batch["part"]],
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


def val_sample(plan: FacesPlan, config: TrainConfig, spec: MemberSpec, n: int) -> torch.Tensor:
    """Up to ``n`` validation inputs, read in this process (the fp16 check)."""
    xs: list[np.ndarray] = []
    for part in plan.parts:
        table = pq.read_table(part, columns=COLUMNS).to_pydict()
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
