"""What every Ray Data run in ``batch`` shares: the Data context, the actor pool that streams one
dataset row per task, worker identity and memory, devices inside actors, chunking, and the fields
of error rows (a failed row, a row whose worker died)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import socket
import warnings
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from batch.datasets import VideoRow
from evaluation.runs import WORKER_LOST, PartsFolder
from pipeline.errors import DfdError, RunFailedError

if TYPE_CHECKING:
    from pipeline.analyze import AnalysisSettings


@contextlib.contextmanager
def data_context(**fields: Any) -> Iterator[None]:
    """Set Ray Data context fields for one execution, then put them back."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = {k: getattr(ctx, k) for k in fields}
    for k, v in fields.items():
        setattr(ctx, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)


def actor_pool_batches(
    items: list[dict[str, Any]],
    actor: type,
    constructor_kwargs: dict[str, Any],
    *,
    batch_format: str,
    actors: int,
    num_cpus: float,
    num_gpus: float | None,
    max_task_retries: int,
    memory_mb: int | None = None,
    **context: Any,
) -> Iterator[Any]:
    """Result batches of ``actor`` (a ``map_batches`` callable class) over ``items``, as a pool
    of ``actors`` copies produces them (order not kept: rows are keyed by ``video_id``).

    One item per block: each video is one task, so the pool balances long and short videos.
    Errored blocks do not stop the run (``max_errored_blocks=-1``): the caller writes the items
    that never came back as :func:`worker_lost_fields` rows. ``context``: further Ray Data
    context fields for this execution (e.g. ``enable_progress_bars``). Starts a local Ray when
    none is connected.
    """
    import ray

    if not ray.is_initialized():
        ray.init()
    with data_context(max_errored_blocks=-1, **context):
        ds: Any = ray.data.from_items(items, override_num_blocks=len(items))
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing remote options as extra keywords but offers no named
            # parameter for max_task_retries; without it a video that kills its worker would
            # be retried forever (Ray Data's default is -1).
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            ds = ds.map_batches(
                actor,
                fn_constructor_kwargs=constructor_kwargs,
                batch_size=1,
                batch_format=batch_format,
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                memory=None if memory_mb is None else memory_mb * 2**20,
                max_task_retries=max_task_retries,
            )
        yield from ds.iter_batches(batch_size=None, batch_format=batch_format)


def rss_mb() -> float:
    """This process's resident memory in MiB."""
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


@functools.cache
def worker_id() -> str:
    """``host:pid`` of this process: which actor scored a row."""
    return f"{socket.gethostname()}:{os.getpid()}"


def error_fields(exc: BaseException) -> dict[str, Any]:
    """An error row's ``error_kind`` and one-line ``error`` (typed errors keep their kind)."""
    if isinstance(exc, DfdError):
        return {"error_kind": exc.kind, "error": exc.detail}
    return {"error_kind": "internal", "error": f"{type(exc).__name__}: {exc}"}


def row_fields(row: VideoRow, dataset: str) -> dict[str, Any]:
    """The columns every output row starts with: the dataset row's (all but ``sequence``) and
    the dataset's name."""
    return {
        "video_id": row.video_id,
        "dataset": dataset,
        "path": row.path,
        "label": row.label,
        "manipulation": row.manipulation,
        "split": row.split,
        "kind": row.kind,
    }


def row_from_item(item: Mapping[str, Any]) -> VideoRow:
    """The :class:`VideoRow` of a pipeline item (its fields, plus others such as ``dataset``)."""
    fields = {f.name for f in dataclasses.fields(VideoRow)}
    return VideoRow(**{k: v for k, v in item.items() if k in fields})


def check_lost(lost: int, attempted: int, allowed: float, activity: str) -> None:
    """Fail a run whose rows were lost to dead workers beyond ``allowed`` (a share of the
    ``attempted`` rows), once they are written as error rows.

    Raises:
        RunFailedError: ``lost / attempted > allowed``.
    """
    if attempted and lost / attempted > allowed:
        raise RunFailedError(
            f"{lost} of {attempted} videos ({lost / attempted:.0%}) lost their worker on every "
            f"retry while {activity} (allowed: {allowed:.0%}); they are written as worker-lost "
            "error rows: see the Ray worker logs, fix the cause and rerun with --retry-errors"
        )


def worker_lost_fields(activity: str) -> dict[str, Any]:
    """``error_kind`` and ``error`` of a row whose worker died on every retry (crash, out of
    memory): such a row is written as an error, never left unscored. ``activity``: what the
    worker was doing (``"scoring"``, ``"extracting"``, ``"attacking"``)."""
    return {
        "error_kind": WORKER_LOST,
        "error": f"the worker process died while {activity} this video (crash or out of memory) "
        "on every retry; see the Ray worker logs",
    }


def resolve_devices(settings: AnalysisSettings) -> AnalysisSettings:
    """``device="auto"``: CUDA when this process sees a GPU, and MTCNN follows the ensemble there.

    Inside a Ray actor that reserved no GPU, Ray hides every GPU, so "auto" means CPU.
    """
    import torch

    if settings.inference.device != "auto":
        return settings
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inference = settings.inference.model_copy(update={"device": device})
    faces = settings.faces
    if device == "cuda" and faces.device == "cpu":
        faces = faces.model_copy(update={"device": "cuda"})
    return settings.model_copy(update={"inference": inference, "faces": faces})


def record_session(
    folder: PartsFolder, info: dict[str, Any], session: dict[str, Any], summary: Any
) -> None:
    """Append one session to the folder's JSON description: when it finished and what it did
    (the fields of ``summary``, a dataclass of counts and ``elapsed_s``, but its folder and its
    total of rows)."""
    counts = {
        k: v for k, v in dataclasses.asdict(summary).items() if k not in ("run_dir", "out", "total")
    }
    counts["elapsed_s"] = round(counts["elapsed_s"], 2)
    session.update(finished_at=datetime.now(UTC).isoformat(), **counts)
    info["sessions"] = [*info.get("sessions", []), session]
    folder.write_info(info)
