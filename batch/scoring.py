"""Scoring one dataset row with the whole method, in one process: :class:`RowScorer` (the plain
loop of ``dfd bench evaluate`` and the reference the staged run is tested against), and the
functions both it and the staged run (:mod:`batch.stages`) build their rows with.

Each row runs :class:`pipeline.analyze.Analyzer` on one video: shots, faces, face tracks, the
ensemble and the aggregation of paper 3.1. WildDeepfake rows are face sequences: the faces are
already cut, so detection and segmentation are skipped and the sequence is one shot holding one
track. A video that cannot be scored becomes a row with ``error`` set and no score, never a crash
and never a neutral score; a video without any face gets no score and no error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch.datasets import VideoRow, iter_face_sequence
from batch.execution import error_fields, row_fields, rss_mb, worker_id
from evaluation.runs import SEQUENCE_CHUNK, member_column
from pipeline.aggregate import max_or_none, track_score
from pipeline.errors import DfdError
from pipeline.memory import release_free_memory
from pipeline.models.member import models_digest
from pipeline.steps import batched
from pipeline.version import __version__

if TYPE_CHECKING:
    from pipeline.analyze import AnalysisSettings, Analyzer
    from pipeline.model_access import PipelineModels
    from pipeline.result import ShotResult

log = logging.getLogger(__name__)

#: The face-row columns a video's identity gives every face.
_FACE_IDENTITY = ("video_id", "dataset", "label", "manipulation", "split")


@dataclass
class ScoredRow:
    """One prediction row (columns of :func:`evaluation.runs.prediction_schema`) and its face
    rows."""

    prediction: dict[str, Any]
    faces: list[dict[str, Any]]


def member_columns(
    values: Mapping[str, float | None], member_names: Sequence[str]
) -> dict[str, float | None]:
    """``member_<name>`` columns from per-member values (None where a member has none)."""
    return {member_column(m): values.get(m) for m in member_names}


def video_record(
    shots: Sequence[ShotResult],
    frames_sampled: int,
    duration_s: float | None,
    member_names: Sequence[str],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Prediction and face columns of an analysed video or image from its shots; the video is
    the max over its shots (paper 3.1), and per-member video scores follow the same rule as the
    ensemble's: track = mean of faces, shot = max, video = max."""
    faces: list[dict[str, Any]] = []
    video_members: dict[str, float | None] = dict.fromkeys(member_names)
    for shot in shots:
        for cluster in shot.clusters:
            for face in cluster.faces:
                faces.append(
                    {
                        "shot": shot.index,
                        "track": cluster.id,
                        "frame_index": face.frame_index,
                        "time_s": face.time_s,
                        "detection_confidence": face.detection_confidence,
                        "score": face.score,
                        **member_columns(face.member_scores, member_names),
                    }
                )
            for m in member_names:
                track = sum(f.member_scores[m] for f in cluster.faces) / len(cluster.faces)
                current = video_members[m]
                video_members[m] = track if current is None else max(current, track)
    record = {
        "score": max_or_none([s.score for s in shots]),
        **member_columns(video_members, member_names),
        "n_faces": sum(len(c.faces) for s in shots for c in s.clusters),
        "n_faces_detected": sum(s.faces_detected for s in shots),
        "n_tracks": sum(len(s.clusters) for s in shots),
        "n_shots": len(shots),
        "frames_sampled": frames_sampled,
        "duration_s": duration_s,
    }
    return record, faces


def sequence_record(
    scores: Sequence[float],
    member_scores: Sequence[Mapping[str, float]],
    member_names: Sequence[str],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Prediction and face columns of a face sequence (WildDeepfake) from its faces' scores, in
    sequence order: one shot, one track, so the video's score is the mean of its faces'."""
    faces = [
        {
            "shot": 0,
            "track": 0,
            "frame_index": i,
            "time_s": None,
            "detection_confidence": None,
            "score": score,
            **member_columns(members, member_names),
        }
        for i, (score, members) in enumerate(zip(scores, member_scores, strict=True))
    ]
    per_member = {m: track_score([s[m] for s in member_scores]) for m in member_names}
    record = {
        "score": track_score(scores),
        **member_columns(per_member, member_names),
        "n_faces": len(scores),
        "n_faces_detected": len(scores),
        "n_tracks": 1,
        "n_shots": 1,
        "frames_sampled": len(scores),
        "duration_s": None,
    }
    return record, faces


def finish_record(
    record: dict[str, Any],
    faces: list[dict[str, Any]],
    row: VideoRow,
    dataset: str,
    *,
    threshold: float,
    digest: str,
    elapsed_s: float,
    worker: str,
    node: str | None,
    worker_rss_mb: float,
) -> ScoredRow:
    """A prediction row's identity and bookkeeping columns around its scores (``record``: the
    columns of :func:`video_record`, :func:`sequence_record` or :func:`error_fields`)."""
    base = row_fields(row, dataset)
    score = record.get("score")
    record.setdefault("error_kind", None)
    record.setdefault("error", None)
    record.update(base)
    record["label_pred"] = None if score is None else int(score >= threshold)
    record["service_version"] = __version__
    record["models_digest"] = digest
    record["elapsed_s"] = round(elapsed_s, 4)
    record["finished_at"] = datetime.now(UTC)
    record["worker"] = worker
    record["node"] = node
    record["worker_rss_mb"] = round(worker_rss_mb, 1)
    for face in faces:
        face.update({k: base[k] for k in _FACE_IDENTITY})
    return ScoredRow(record, faces)


class RowScorer:
    """Scores dataset rows with one set of models: the paper's method per video, faces as given
    for face sequences. Stateless between rows; safe to reuse for a whole run.
    """

    def __init__(
        self,
        models: PipelineModels,
        settings: AnalysisSettings,
        *,
        threshold: float = 0.5,
        per_face: bool = True,
        trim_memory: bool = True,
        node: str | None = None,
    ) -> None:
        from pipeline.analyze import Analyzer

        self.models = models
        self.node = node
        self.trim_memory = trim_memory
        self.settings = settings
        self.threshold = threshold
        self.per_face = per_face
        self.analyzer: Analyzer = Analyzer(models, settings)
        infos = models.model_infos()
        self.member_names = [i.name for i in infos]
        self.models_digest = models_digest(infos)

    def score(self, row: VideoRow, dataset: str) -> ScoredRow:
        """Score one row. Never raises for a bad video: the row comes back with ``error`` set."""
        from pipeline.artefacts import MemorySink

        t0 = time.perf_counter()
        faces: list[dict[str, Any]] = []
        record: dict[str, Any]
        try:
            if row.kind == "face_sequence":
                record, faces = self._face_sequence(row)
            else:
                # Galleries are off in batch settings; the sink only receives what slips through.
                result = self.analyzer.analyze_file(Path(row.path), MemorySink())
                record, faces = video_record(
                    result.shots,
                    result.source.frames_sampled,
                    result.source.duration_s,
                    self.member_names,
                )
        except Exception as exc:  # typed, or a bug or a library failure: record it, go on
            if not isinstance(exc, DfdError):
                log.exception("scoring %s failed", row.video_id)
            record, faces = error_fields(exc), []
        if self.trim_memory:
            release_free_memory()
        scored = finish_record(
            record,
            faces,
            row,
            dataset,
            threshold=self.threshold,
            digest=self.models_digest,
            elapsed_s=time.perf_counter() - t0,
            worker=worker_id(),
            node=self.node,
            worker_rss_mb=rss_mb(),
        )
        return scored if self.per_face else ScoredRow(scored.prediction, [])

    def _face_sequence(self, row: VideoRow) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """WildDeepfake: the crops are the faces, scored in chunks of ``SEQUENCE_CHUNK``."""
        scores: list[float] = []
        members: list[dict[str, float]] = []
        for chunk in batched(iter_face_sequence(row), SEQUENCE_CHUNK):
            pred = self.models.score_faces(chunk)
            scores.extend(float(p) for p in pred.probability)
            members.extend(pred.member_dict(i) for i in range(len(chunk)))
        return sequence_record(scores, members, self.member_names)
