"""Face extraction on Ray Data: dataset rows -> sampled frames -> MTCNN -> Parquet face crops.

The training data of ``dfd train`` (issue 15). Each row of a dataset (paper section 4.1, read by
:func:`batch.datasets.read_dataset`) goes to a pool of
:class:`~batch.faces_extractor.ExtractorActor` actors (:func:`batch.execution.actor_pool_batches`),
each holding one face detector; what is extracted from a row, and how videos without an official
split are split, is described in :mod:`batch.faces_extractor`. The folder written (``faces.json``
and ``parts/*.parquet``, one row per face or per failed or face-less video) is described in
:mod:`batch.faces_folder`. This module is the driver.

Resume: the driver writes parts atomically (temporary name, then rename) every ``flush_rows``
videos or ``flush_s`` seconds; a rerun into the same folder skips every video that has rows
(error rows too, unless ``retry_errors``). When a video appears in several parts, the newest part
wins. A rerun with another dataset, root or any setting that changes the crops is refused.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from batch.datasets import VideoRow, read_dataset
from batch.execution import (
    actor_pool_batches,
    check_lost,
    record_session,
    row_fields,
    worker_lost_fields,
)
from batch.faces_extractor import ExtractorActor, FaceExtractionConfig, assign_split, fingerprint
from batch.faces_folder import ERROR, FACE, FACE_SCHEMA, FACES_FILE, NO_FACE, PARTS_DIR, FacesFolder
from evaluation.runs import concat_tables
from pipeline.errors import ConfigError, DatasetLayoutError
from pipeline.version import __version__

__all__ = ["ExtractionSummary", "FaceExtractionConfig", "Progress", "extract_faces", "read_rows"]

log = logging.getLogger(__name__)


@dataclass
class ExtractionSummary:
    """What one session did."""

    out: Path
    total: int
    skipped: int
    processed: int
    errors: int
    no_face: int
    faces: int
    elapsed_s: float
    #: Rows written as ``worker-lost`` errors (their worker died on every retry).
    lost: int = 0

    def line(self) -> str:
        return (
            f"{self.total} videos: {self.skipped} already done, {self.processed} processed now "
            f"({self.errors} errors, {self.no_face} without a face), {self.faces} faces written "
            f"to {self.out / PARTS_DIR} in {self.elapsed_s:.1f} s"
        )


def _prepare(config: FaceExtractionConfig, folder: FacesFolder) -> dict[str, Any]:
    """Write ``faces.json``, or check that the folder was made with the same dataset and
    settings (mixing them would give a training set nobody can describe)."""
    current = fingerprint(config)
    if folder.exists():
        info = folder.info()
        previous = info.get("fingerprint", {})
        changed = sorted(
            k for k in set(previous) | set(current) if previous.get(k) != current.get(k)
        )
        if changed:
            shown = ", ".join(f"{k}: {previous.get(k)!r} != {current.get(k)!r}" for k in changed)
            raise ConfigError(
                f"{folder.root} holds faces extracted with other settings ({shown}); "
                "choose a new --out"
            )
        folder.clean()
    else:
        if folder.parts_dir.exists() and any(folder.parts_dir.glob("part-*.parquet")):
            raise ConfigError(f"{folder.root} has parts but no {FACES_FILE}; choose a new --out")
        info = {"created_at": datetime.now(UTC).isoformat(), "sessions": []}
    info["config"] = config.model_dump(mode="json")
    info["fingerprint"] = current
    info["service_version"] = __version__
    folder.write_info(info)
    return info


def read_rows(config: FaceExtractionConfig) -> list[VideoRow]:
    """The dataset's rows (split filter and ``limit`` applied).

    Raises:
        ConfigError, DatasetLayoutError, MissingFileError: from the reader; an empty dataset.
    """
    rows = read_dataset(config.dataset, config.root, split=config.split, **config.reader_options)
    if config.limit is not None:
        rows = rows[: config.limit]
    if not rows:
        raise DatasetLayoutError(f"{config.dataset} at {config.root} has no rows to extract")
    return rows


#: ``progress(done, total, elapsed_s)`` after every video.
Progress = Callable[[int, int, float], None]


def extract_faces(
    config: FaceExtractionConfig,
    *,
    rows: Sequence[VideoRow] | None = None,
    local: bool = False,
    progress: Progress | None = None,
) -> ExtractionSummary:
    """Extract the faces of every row of ``config``'s dataset not yet in ``config.out``.

    Args:
        config: the job's settings.
        rows: extract these rows instead of reading ``config.root`` (tests).
        local: run one :class:`ExtractorActor` in this process, without Ray.
        progress: called as ``progress(done, total, elapsed_s)`` as videos come back.

    Raises:
        ConfigError, DatasetLayoutError, MissingFileError: before any video is read. Per-video
            failures never raise: they become error rows.
    """
    started = time.perf_counter()
    folder = FacesFolder(config.out)
    if rows is None:
        rows = read_rows(config)
    info = _prepare(config, folder)
    done = folder.finished_ids(retry_errors=config.retry_errors)
    todo = [r for r in rows if r.video_id not in done]
    summary = ExtractionSummary(folder.root, len(rows), len(rows) - len(todo), 0, 0, 0, 0, 0.0)
    session: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(),
        "rows": len(rows),
        "mode": "local" if local else "ray",
    }
    if todo:
        _execute(config, folder, todo, summary, started, local, progress)
    summary.elapsed_s = time.perf_counter() - started
    record_session(folder, info, session, summary)
    check_lost(summary.lost, len(todo), config.max_lost_fraction, "extracting")
    return summary


def _blocks_local(config: FaceExtractionConfig, items: list[dict[str, Any]]) -> Iterator[pa.Table]:
    actor = ExtractorActor(config.model_dump_json())
    for item in items:
        yield actor(pa.Table.from_pylist([item]))


def _blocks_ray(config: FaceExtractionConfig, items: list[dict[str, Any]]) -> Iterator[pa.Table]:
    # Per-video errors are rows, so no block should ever fail; if one does, the video is
    # written as worker-lost by the caller rather than stopping the run.
    yield from actor_pool_batches(
        items,
        ExtractorActor,
        {"config_json": config.model_dump_json()},
        batch_format="pyarrow",
        actors=config.extractors.actors,
        num_cpus=config.extractors.num_cpus,
        num_gpus=_gpu_share(config),
        memory_mb=config.extractors.memory_mb,
        max_task_retries=config.max_task_retries,
        enable_progress_bars=False,
    )


def _gpu_share(config: FaceExtractionConfig) -> float:
    """Each actor's GPU share: none on CPU, else the configured or an even share of one GPU."""
    if not config.faces.device.startswith("cuda"):
        return 0.0
    if config.extractors.num_gpus is not None:
        return config.extractors.num_gpus
    return 1.0 / config.extractors.actors


def _execute(
    config: FaceExtractionConfig,
    folder: FacesFolder,
    todo: Sequence[VideoRow],
    summary: ExtractionSummary,
    started: float,
    local: bool,
    progress: Progress | None,
) -> None:
    items = [{**dataclasses.asdict(r), "dataset": config.dataset} for r in todo]
    buffer: list[pa.Table] = []
    buffered: set[str] = set()
    seen: set[str] = set()
    last_flush = time.perf_counter()

    def flush() -> None:
        nonlocal last_flush
        last_flush = time.perf_counter()
        if buffer:
            folder.write_part(concat_tables(buffer))
            buffer.clear()
            buffered.clear()

    blocks = _blocks_local(config, items) if local else _blocks_ray(config, items)
    for block in blocks:
        if not block.num_rows:
            continue
        block = block.cast(FACE_SCHEMA)
        buffer.append(block)
        statuses: dict[str, str] = {}
        for vid, status in zip(
            block.column("video_id").to_pylist(), block.column("status").to_pylist(), strict=True
        ):
            statuses.setdefault(vid, status)
            summary.faces += status == FACE
        for status in statuses.values():
            summary.processed += 1
            summary.errors += status == ERROR
            summary.no_face += status == NO_FACE
        seen.update(statuses)
        buffered.update(statuses)
        if progress is not None:
            progress(summary.processed, len(todo), time.perf_counter() - started)
        if len(buffered) >= config.flush_rows or time.perf_counter() - last_flush >= config.flush_s:
            flush()
    flush()
    lost = [r for r in todo if r.video_id not in seen]
    if lost:
        folder.write_part(_lost_rows(lost, config))
        summary.processed += len(lost)
        summary.errors += len(lost)
        summary.lost = len(lost)
        log.error("%d video(s) lost their worker on every retry; written as error rows", len(lost))


def _lost_rows(rows: Sequence[VideoRow], config: FaceExtractionConfig) -> pa.Table:
    """Error rows for videos whose worker died on every retry."""
    now = datetime.now(UTC)
    records = []
    for r in rows:
        split, source = assign_split(r.video_id, r.split, config.val_fraction)
        records.append(
            {
                **row_fields(r, config.dataset),
                "split": split,
                "split_source": source,
                "status": ERROR,
                **worker_lost_fields("extracting"),
                "stage": "worker",
                "service_version": __version__,
                "finished_at": now,
            }
        )
    return pa.Table.from_pylist(records, schema=FACE_SCHEMA)
