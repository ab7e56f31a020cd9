"""Evaluation runs on Ray Data: dataset rows -> the method's stages -> Parquet predictions.

A run streams the rows of a dataset (paper section 4.1) through the stages of
:mod:`batch.stages`: decoding and shot boundaries on CPU actors, face detection and the ensemble
on model actor pools that batch shots of several videos together, face tracks as plain tasks.
The model stages load the same model classes the CLI and the Serve deployments use, or reach the
deployments of a running Serve application instead (:mod:`batch.models`). This module is the
driver: the run folder's fingerprint, the stream of tasks assembled into one row per video
(:class:`batch.assemble.VideoAssembler`) and written as Parquet parts, and
:func:`score_sequentially`, the same method in a plain loop (:class:`batch.scoring.RowScorer`).

The run folder's layout, schemas and reading rules belong to :mod:`evaluation.runs` (the reports
read it from there); this module writes through :class:`evaluation.runs.RunFolder`. The driver
writes a part every ``flush_rows`` rows or ``flush_s`` seconds, so a run that stops loses at most
one part; a rerun into the same folder skips every video already written (resumable). When a
video appears in several parts (``retry_errors``), the newest part wins. A video that cannot be
scored becomes a row with ``error`` set and no score,
never a crash and never a neutral score; a video without any face gets no score and no error
(that is an answer, and the metrics count it apart).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from batch.assemble import VideoAssembler
from batch.datasets import VideoRow, read_dataset
from batch.execution import (
    check_lost,
    record_session,
    resolve_devices,
    row_fields,
    worker_lost_fields,
)
from batch.models import build_models, serve_models
from batch.scoring import RowScorer, ScoredRow
from batch.stages import ScoreStage
from batch.stream import stream_tasks
from evaluation.runs import RUN_FILE, RunFolder, face_schema, prediction_schema
from pipeline.errors import ConfigError, DfdError
from pipeline.models.member import expected_infos, models_digest, pin_ensemble
from pipeline.version import __version__

if TYPE_CHECKING:
    from batch.config import EvaluationConfig
    from pipeline.analyze import AnalysisSettings
    from pipeline.model_access import PipelineModels

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# Fingerprints: what must not change between the sessions of one run


#: Settings that change how fast a run goes, never its scores; left out of the fingerprint.
_EXECUTION_ONLY: dict[str, Any] = {
    "inference": {"device", "backend", "precision", "batch_size", "onnx_threads", "channels_last"},
    "faces": {"device", "batch_size"},
    "segmentation": {"batch_size"},
    "download": True,
    "galleries": True,
    "gallery_max_side": True,
    "gallery_max_tiles": True,
    "collage_max_tiles": True,
    "shot_workers": True,
}


def analysis_digest(analysis: AnalysisSettings) -> str:
    """Short hash of the analysis settings that shape the scores (paper numbers, models)."""
    dumped = analysis.model_dump(mode="json", exclude=_EXECUTION_ONLY)
    return hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# The driver


@dataclass
class RunSummary:
    """What one session of a run did. ``rows_per_s`` counts rows processed in this session."""

    run_dir: Path
    total: int
    skipped: int
    processed: int
    errors: int
    no_face: int
    elapsed_s: float
    #: Rows written as ``worker-lost`` errors (their worker died on every retry).
    lost: int = 0

    @property
    def rows_per_s(self) -> float:
        return self.processed / self.elapsed_s if self.elapsed_s > 0 else 0.0


#: ``progress(done, total, elapsed_s)`` after every row written to the buffer.
RunProgress = Callable[[int, int, float], None]


def _fingerprint(config: EvaluationConfig) -> dict[str, Any]:
    fingerprint: dict[str, Any] = {
        "dataset": config.dataset,
        "root": str(Path(config.root).expanduser().resolve()),
        "analysis_digest": analysis_digest(config.analysis),
        "service_version": __version__,
    }
    if config.serve_app is None:
        infos = expected_infos(config.analysis.inference)
    else:  # what the running deployments hold, as they describe themselves
        infos = serve_models(config.serve_app).model_infos()
        fingerprint["serve_app"] = config.serve_app
    fingerprint["models_digest"] = models_digest(infos)
    fingerprint["ensemble"] = config.analysis.inference.ensemble
    fields = ("name", "version", "weights", "sha256", "trained_on", "licence", "source", "weight")
    fingerprint["models"] = [{k: getattr(i, k) for k in fields} for i in infos]
    return fingerprint


def _prepare(config: EvaluationConfig, folder: RunFolder) -> dict[str, Any]:
    """Write ``run.json``, or check that a folder being resumed was made with the same models,
    settings and dataset (mixing them would make the figures meaningless)."""
    fingerprint = _fingerprint(config)
    if folder.exists():
        info = folder.info()
        previous = info.get("fingerprint", {})
        for key in ("dataset", "root", "analysis_digest", "models_digest"):
            if key in previous and key in fingerprint and previous[key] != fingerprint[key]:
                raise ConfigError(
                    f"{folder.root} holds a run made with another {key.replace('_', ' ')} "
                    f"({previous[key]} != {fingerprint[key]}); choose a new --out to start "
                    "a new run"
                )
        folder.clean()
    else:
        if folder.predictions_dir.exists() and any(folder.predictions_dir.iterdir()):
            raise ConfigError(
                f"{folder.root} has predictions but no {RUN_FILE}; choose a new --out"
            )
        info = {"created_at": datetime.now(UTC).isoformat(), "sessions": []}
    info["config"] = config.model_dump(mode="json")
    info["fingerprint"] = {**info.get("fingerprint", {}), **fingerprint}
    folder.write_info(info)
    return info


def _lost_rows(rows: Sequence[VideoRow], dataset: str, member_names: Sequence[str]) -> pa.Table:
    """Error rows for videos whose worker died on every retry (they are not left unscored)."""
    now = datetime.now(UTC)
    records = [
        {
            **row_fields(r, dataset),
            **worker_lost_fields("analysing"),
            "service_version": __version__,
            "finished_at": now,
        }
        for r in rows
    ]
    return pa.Table.from_pylist(records, schema=prediction_schema(member_names))


def run_evaluation(
    config: EvaluationConfig,
    *,
    rows: Sequence[VideoRow] | None = None,
    progress: RunProgress | None = None,
) -> RunSummary:
    """Score every row of ``config``'s dataset not yet in ``config.out``, on Ray Data.

    Starts a local Ray instance when none is connected (``RAY_ADDRESS`` is honoured).

    Args:
        config: the run's settings.
        rows: score these rows instead of reading ``config.root`` (tests, benchmarks).
        progress: called as ``progress(done, total, elapsed_s)`` as rows come back.

    Returns:
        What this session did; the predictions are in ``config.out``.

    Raises:
        ConfigError, CheckpointError, UntrainedWeightsError, DatasetLayoutError: before any
            actor starts. Per-video failures never raise: they become error rows.
        RunFailedError: more than ``max_lost_fraction`` of the rows lost their worker (after
            they are written as error rows and the session is recorded).
    """
    import ray

    started = time.perf_counter()
    if config.serve_app is None:
        # Every actor runs the ensemble resolved here, whatever its environment says.
        inference = pin_ensemble(config.analysis.inference)
        analysis = config.analysis.model_copy(update={"inference": inference})
        config = config.model_copy(update={"analysis": analysis})
    folder = RunFolder(config.out)
    if rows is None:
        rows = read_dataset(
            config.dataset, config.root, split=config.split, **config.reader_options
        )
    if config.serve_app is not None and not ray.is_initialized():
        ray.init()  # the Serve application is asked which models it runs
    info = _prepare(config, folder)
    done_ids = folder.finished_ids(retry_errors=config.retry_errors)
    todo = [r for r in rows if r.video_id not in done_ids]
    summary = RunSummary(folder.root, len(rows), len(rows) - len(todo), 0, 0, 0, 0.0)
    session: dict[str, Any] = {"started_at": datetime.now(UTC).isoformat(), "rows": len(rows)}
    if todo:
        if not ray.is_initialized():
            ray.init()
        _execute(config, folder, todo, summary, started, progress)
    summary.elapsed_s = time.perf_counter() - started
    record_session(folder, info, session, summary)
    check_lost(summary.lost, len(todo), config.max_lost_fraction, "analysing")
    return summary


def _execute(
    config: EvaluationConfig,
    folder: RunFolder,
    todo: Sequence[VideoRow],
    summary: RunSummary,
    started: float,
    progress: RunProgress | None,
) -> None:
    items = {r.video_id: {**dataclasses.asdict(r), "dataset": config.dataset} for r in todo}
    assembler = VideoAssembler(items, config.threshold)
    predictions: list[dict[str, Any]] = []
    faces: list[dict[str, Any]] = []
    last_flush = time.perf_counter()

    def flush() -> None:
        nonlocal last_flush
        last_flush = time.perf_counter()
        if predictions:
            names = assembler.member_names
            table = pa.Table.from_pylist(predictions, schema=prediction_schema(names))
            face_table = None
            if config.per_face:
                face_table = pa.Table.from_pylist(faces, schema=face_schema(names))
            folder.write_part(table, face_table)
        predictions.clear()
        faces.clear()

    tasks = stream_tasks(
        config, list(items.values()), ScoreStage, {}, progress_bars=progress is None
    )
    for task in tasks:
        scored = assembler.add(task)
        if scored is None:
            continue
        predictions.append(scored.prediction)
        if config.per_face:
            faces.extend(scored.faces)
        _count(summary, scored.prediction)
        if progress is not None:
            progress(summary.processed, len(todo), time.perf_counter() - started)
        if (
            len(predictions) >= config.flush_rows
            or time.perf_counter() - last_flush >= config.flush_s
        ):
            flush()
    flush()
    unfinished = set(assembler.unfinished())
    lost = [r for r in todo if r.video_id in unfinished]
    if lost:
        names = list(assembler.member_names)
        if not names:
            with contextlib.suppress(DfdError):
                names = [i.name for i in expected_infos(config.analysis.inference)]
        folder.write_part(_lost_rows(lost, config.dataset, names), None)
        summary.processed += len(lost)
        summary.errors += len(lost)
        summary.lost = len(lost)
        log.error("%d video(s) lost their worker on every retry; written as error rows", len(lost))


def _count(summary: RunSummary, prediction: dict[str, Any]) -> None:
    summary.processed += 1
    summary.errors += prediction["error"] is not None
    summary.no_face += prediction["error"] is None and prediction["score"] is None


def score_sequentially(
    config: EvaluationConfig,
    rows: Sequence[VideoRow],
    models: PipelineModels | None = None,
) -> list[ScoredRow]:
    """A plain in-process loop over ``rows`` with one set of models (no Ray): the baseline of
    ``dfd bench evaluate`` and a reference for tests. Keeps only the scored rows in memory."""
    settings = resolve_devices(config.analysis)
    if models is None:
        models = build_models(config.model_copy(update={"analysis": settings}))
    scorer = RowScorer(
        models,
        settings,
        threshold=config.threshold,
        per_face=config.per_face,
        trim_memory=config.trim_memory,
    )
    return [scorer.score(row, config.dataset) for row in rows]
