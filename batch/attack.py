"""Adversarial robustness runs (paper 4.1.3 and 4.2.3): attack every face, re-score every video.

For each dataset row the run extracts faces exactly as the clean analysis does and keeps its
clean scores, attacks each kept face crop with ART's Projected Gradient Descent wrapped around
the *whole* ensemble, targeted towards "real" as in the paper, re-scores the attacked crops with
the same members and re-aggregates them by the same rule, so clean and attacked video scores sit
side by side in one Parquet file. The layout of the code:

* :mod:`batch.attack_config`: :class:`AttackRunSettings` (analysis, attack, Ray layout).
* :mod:`batch.attack_model`: the detector as ART sees it (two-class logits, the scorer).
* :mod:`batch.attack_faces`: :class:`FaceAttacker`, a batch of face crops attacked and re-scored.
* :mod:`batch.attack_video`: one dataset row attacked in this process (:class:`VideoAttacker`),
  and the aggregation of attacked faces into a row that both kinds of run share.
* :mod:`batch.attack_stage`: the attack stage of a Ray run and the driver's row assembly.
* this module: the driver, :func:`run_attack`.

Beyond the paper, each by option and each recorded in the run's ``attack.json``:

* ``transfer_from``: the perturbation is crafted on one member and scored by the whole ensemble.
* ``black_box``: ART's HopSkipJump (decision-based) or Square (score-based) attack on the
  ensemble's output only, counting the queries it needed (each face image sent = one query);
  the report sets them against the service's per-key rate limit. Results are projected onto the
  same ``eps`` ball as PGD (HopSkipJump minimises distance but does not bound it).
* ``defence``: ART's JPEG compression, spatial smoothing or feature squeezing applied to the
  detectors' input, scored on clean and on attacked crops (the attacker does not know about
  it): clean accuracy lost versus attacked accuracy regained.

On Ray, a run streams through the evaluation run's stages (:mod:`batch.stream`: decoding, face
detection and face tracks sized by ``decode`` and ``detect``), whose last stage is the attack
(``attackers``: an actor pool attacking the faces of ``attackers.batch_size`` shots, of several
videos, per call); the driver assembles one row per video and writes Parquet part files as rows
complete (every ``flush_rows`` rows or ``flush_s`` seconds); a rerun skips rows already written
(``retry_errors`` retries failed ones). A failure at any stage becomes its row's error, never a
neutral score; a row whose worker died on every retry is a ``worker-lost`` error row.

The run folder's layout, the attack's settings and the reading rules belong to
:mod:`evaluation.attack_runs` (the robustness report reads runs from there); the helpers every
Ray Data run shares (error fields, devices, sessions) are in :mod:`batch.execution`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from batch.attack_config import AttackRunSettings
from batch.attack_faces import FaceAttacker
from batch.attack_stage import AttackAssembler, AttackStage
from batch.attack_video import VideoAttacker, row_columns
from batch.datasets import VideoRow
from batch.execution import check_lost, worker_lost_fields
from batch.stream import stream_tasks
from evaluation.attack_runs import AttackFolder, AttackSettings, check_or_write_config
from pipeline.errors import ConfigError
from pipeline.models.member import expected_infos, pin_ensemble
from pipeline.version import __version__

#: What ``dfd attack`` and the benchmarks import from here.
__all__ = [
    "AttackRunOutcome",
    "AttackRunSettings",
    "AttackSettings",
    "FaceAttacker",
    "run_attack",
]

log = logging.getLogger(__name__)


@dataclass
class AttackRunOutcome:
    """What one invocation did. ``scores`` is the consolidated Parquet file."""

    out: Path
    scores: Path
    total: int
    skipped: int
    processed: int
    errors: int
    seconds: float
    member_names: list[str] = field(default_factory=list)
    #: Rows written as ``worker-lost`` errors (their worker died on every retry).
    lost: int = 0


def _config_record(
    settings: AttackRunSettings, dataset: str, root: str, models: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "service_version": __version__,
        "dataset": dataset,
        "root": root,
        "attack": settings.attack.model_dump(mode="json"),
        "analysis": settings.analysis.model_dump(mode="json", exclude={"galleries"}),
        "models": models,
    }


def _pick_examples(rows: Sequence[VideoRow], n: int) -> set[str]:
    """The first ``n`` rows by id, half of them fake (more of one class when the other lacks)."""
    ordered = sorted(rows, key=lambda r: r.video_id)
    fakes = [r.video_id for r in ordered if r.label == 1]
    reals = [r.video_id for r in ordered if r.label == 0]
    n_fake = min(len(fakes), n - min(len(reals), n // 2))
    n_real = min(len(reals), n - n_fake)
    return set(fakes[:n_fake] + reals[:n_real])


def _todo(
    rows: Sequence[VideoRow], folder: AttackFolder, retry_errors: bool
) -> tuple[list[VideoRow], int]:
    """The rows still to attack, and how many are skipped (written before; error rows too,
    unless ``retry_errors``)."""
    skip = folder.finished_ids(retry_errors=retry_errors)
    todo = [r for r in rows if r.video_id not in skip]
    return todo, len(rows) - len(todo)


class _RowWriter:
    """Buffers result rows and writes them as parts of ``folder``: every ``flush_rows`` rows or
    after ``flush_s`` seconds (checked as rows arrive), and on :meth:`flush`. Example PNGs are
    written as their row arrives (:meth:`AttackFolder.write_example`), not buffered."""

    def __init__(self, folder: AttackFolder, flush_rows: int, flush_s: float = math.inf) -> None:
        self.folder = folder
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self.last_flush = time.perf_counter()
        self.ids: set[str] = set()
        self.buffer: list[dict[str, Any]] = []
        self.written = 0
        self.errors = 0

    def add(self, record: dict[str, Any]) -> None:
        record = self.folder.write_example(record)
        self.errors += record.get("error") is not None
        self.ids.add(str(record["video_id"]))
        self.buffer.append(record)
        if (
            len(self.buffer) >= self.flush_rows
            or time.perf_counter() - self.last_flush >= self.flush_s
        ):
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.perf_counter()
        if not self.buffer:
            return
        self.folder.write_part(self.buffer)
        self.written += len(self.buffer)
        self.buffer = []


def run_attack(
    rows: Sequence[VideoRow],
    out: Path,
    settings: AttackRunSettings | None = None,
    *,
    dataset: str,
    root: str | Path = "",
    use_ray: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> AttackRunOutcome:
    """Attack ``rows`` into the run folder ``out``; resumes what an earlier call left.

    Args:
        rows: dataset rows (:func:`batch.datasets.read_dataset`).
        out: run folder: ``attack.json``, ``parts/*.parquet``, ``scores.parquet``,
            ``examples/*.png``.
        settings: analysis, attack and actor-pool settings.
        dataset: dataset name written in every row (the report groups by it).
        root: dataset root, recorded in ``attack.json``.
        use_ray: False attacks row by row in this process (no Ray), e.g. for debugging.
        progress: ``progress(done, total)`` after each row.

    Raises:
        ConfigError: ``out`` holds a different attack, or ``transfer_from`` names no member.
        RunFailedError: more than ``max_lost_fraction`` of the rows lost their worker (after
            they are written as error rows).
    """
    settings = settings or AttackRunSettings()
    # Every actor runs the ensemble resolved here, whatever its environment says.
    inference = pin_ensemble(settings.analysis.inference)
    settings = settings.model_copy(
        update={"analysis": settings.analysis.model_copy(update={"inference": inference})}
    )
    out = Path(out)
    t0 = time.perf_counter()
    folder = AttackFolder(out)
    models = _model_records(settings)
    check_or_write_config(out, _config_record(settings, dataset, str(root), models))
    folder.clean()
    todo, skipped = _todo(rows, folder, settings.retry_errors)
    examples = _pick_examples(rows, settings.examples)
    items = [
        {**dataclasses.asdict(r), "dataset": dataset, "example": r.video_id in examples}
        for r in todo
    ]
    writer = _RowWriter(folder, settings.flush_rows, settings.flush_s)
    report = progress or (lambda done, total: None)
    done = 0

    def add(record: dict[str, Any]) -> None:
        nonlocal done
        writer.add({k: _plain(v) for k, v in record.items()})
        done += 1
        report(skipped + done, len(rows))

    if items and not use_ray:
        attacker = VideoAttacker.load(settings)
        for item, row in zip(items, todo, strict=True):
            add(attacker.process(row, dataset, bool(item["example"])))
    lost = 0
    if items and use_ray:
        _stream(items, settings, add)
        for row in todo:
            if row.video_id not in writer.ids:
                writer.add(_lost_row(row, dataset))
                lost += 1
    writer.flush()
    scores = folder.consolidate()
    check_lost(lost, len(todo), settings.max_lost_fraction, "attacking")
    return AttackRunOutcome(
        out=out,
        scores=scores,
        total=len(rows),
        skipped=skipped,
        processed=writer.written,
        errors=writer.errors,
        seconds=time.perf_counter() - t0,
        member_names=[m["name"] for m in models],
        lost=lost,
    )


def _model_records(settings: AttackRunSettings) -> list[dict[str, Any]]:
    """Member identity for ``attack.json``, read from the manifest (no model is loaded here),
    by the ensemble's own rules (:func:`pipeline.models.ensemble.expected_infos`).

    Raises:
        ConfigError: ``transfer_from`` names no member.
        CheckpointError: a checkpoint the manifest names is missing.
    """
    infos = expected_infos(settings.analysis.inference)
    names = [i.name for i in infos]
    transfer = settings.attack.transfer_from
    if transfer is not None and transfer not in names:
        raise ConfigError(
            f"transfer_from {transfer!r} is not a member; members: {', '.join(names)}"
        )
    keys = ("name", "version", "sha256", "weights", "trained_on", "input_size", "licence")
    return [{k: getattr(i, k) for k in keys} for i in infos]


def _plain(value: Any) -> Any:
    """pandas/numpy scalars -> Python values; NaN -> None (missing, not a number)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _lost_row(row: VideoRow, dataset: str) -> dict[str, Any]:
    """An error row for a video whose worker died on every retry (never left unscored)."""
    log.error("%s: the worker died on every retry; written as an error row", row.video_id)
    return {**row_columns(row, dataset), **worker_lost_fields("attacking")}


def _stream(
    items: list[dict[str, Any]],
    settings: AttackRunSettings,
    add: Callable[[dict[str, Any]], None],
) -> None:
    """The staged run: the evaluation's first stages, the attack stage, rows assembled here."""
    by_id = {str(item["video_id"]): item for item in items}
    assembler = AttackAssembler(by_id, settings.attack.threshold)
    attack_json = settings.attack.model_dump_json()
    for task in stream_tasks(settings, items, AttackStage, {"attack_json": attack_json}):
        record = assembler.add(task)
        if record is not None:
            add(record)
