"""Scoring one dataset row with the whole method: :class:`RowScorer` (plain Python, used by the
Ray actors and by plain loops alike) and :class:`VideoScorer`, the Ray Data actor around it.

Each row runs :class:`pipeline.analyze.Analyzer` on one video: shots, faces, face tracks, the
ensemble and the aggregation of paper 3.1. WildDeepfake rows are face sequences: the faces are
already cut, so detection and segmentation are skipped and the sequence is one shot holding one
track. A video that cannot be scored becomes a row with ``error`` set and no score, never a crash
and never a neutral score; a video without any face gets no score and no error.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from batch.datasets import VideoRow, iter_face_sequence
from batch.execution import (
    batched,
    error_fields,
    resolve_devices,
    row_fields,
    row_from_item,
    rss_mb,
    worker_id,
)
from batch.models import build_models
from evaluation.runs import SEQUENCE_CHUNK, face_schema, member_column, prediction_schema
from pipeline.errors import DfdError
from pipeline.memory import release_free_memory
from pipeline.models.ensemble import models_digest
from pipeline.version import __version__

if TYPE_CHECKING:
    from pipeline.analyze import AnalysisSettings, Analyzer
    from pipeline.model_access import PipelineModels
    from pipeline.result import Result

log = logging.getLogger(__name__)

#: Column carrying a row's faces from an actor to the driver (JSON); never written.
FACES_JSON = "_faces_json"


@dataclass
class ScoredRow:
    """One prediction row (columns of :func:`prediction_schema`) and its face rows."""

    prediction: dict[str, Any]
    faces: list[dict[str, Any]]


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
        self.prediction_schema = prediction_schema(self.member_names)
        self.face_schema = face_schema(self.member_names)

    def score(self, row: VideoRow, dataset: str) -> ScoredRow:
        """Score one row. Never raises for a bad video: the row comes back with ``error`` set."""
        from pipeline.artefacts import MemorySink

        base = row_fields(row, dataset)
        t0 = time.perf_counter()
        faces: list[dict[str, Any]] = []
        record: dict[str, Any]
        try:
            if row.kind == "face_sequence":
                record, faces = self._face_sequence(row)
            else:
                # Galleries are off in batch settings; the sink only receives what slips through.
                result = self.analyzer.analyze_file(Path(row.path), MemorySink())
                record, faces = self._from_result(result)
            record["error_kind"] = record["error"] = None
        except Exception as exc:  # typed, or a bug or a library failure: record it, go on
            if not isinstance(exc, DfdError):
                log.exception("scoring %s failed", row.video_id)
            record = error_fields(exc)
        score = record.get("score")
        record.update(base)
        record["label_pred"] = None if score is None else int(score >= self.threshold)
        record["service_version"] = __version__
        record["models_digest"] = self.models_digest
        record["elapsed_s"] = round(time.perf_counter() - t0, 4)
        record["finished_at"] = datetime.now(UTC)
        record["worker"] = worker_id()
        record["node"] = self.node
        if self.trim_memory:
            release_free_memory()
        record["worker_rss_mb"] = round(rss_mb(), 1)
        for face in faces:
            face.update({k: base[k] for k in ("video_id", "dataset", "label", "manipulation")})
            face["split"] = row.split
        return ScoredRow(record, faces if self.per_face else [])

    def _members(self, values: Mapping[str, float | None]) -> dict[str, float | None]:
        """``member_<name>`` columns from per-member values (None where a member has none)."""
        return {member_column(m): values.get(m) for m in self.member_names}

    def _from_result(self, result: Result) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Prediction and face rows from an analysis; per-member video scores follow the same
        rule as the ensemble's (paper 3.1): track = mean of faces, shot = max, video = max."""
        faces: list[dict[str, Any]] = []
        video_members: dict[str, float | None] = dict.fromkeys(self.member_names)
        for shot in result.shots:
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
                            **self._members(face.member_scores),
                        }
                    )
                for m in self.member_names:
                    track = sum(f.member_scores[m] for f in cluster.faces) / len(cluster.faces)
                    current = video_members[m]
                    video_members[m] = track if current is None else max(current, track)
        record = {
            "score": result.score,
            **self._members(video_members),
            "n_faces": result.faces_total,
            "n_faces_detected": sum(s.faces_detected for s in result.shots),
            "n_tracks": sum(len(s.clusters) for s in result.shots),
            "n_shots": len(result.shots),
            "frames_sampled": result.source.frames_sampled,
            "duration_s": result.source.duration_s,
        }
        return record, faces

    def _face_sequence(self, row: VideoRow) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """WildDeepfake: the crops are the faces. One shot, one track: video = track = mean."""
        from pipeline.aggregate import track_score

        scores: list[float] = []
        member_scores: list[list[float]] = []
        faces: list[dict[str, Any]] = []
        for chunk in batched(iter_face_sequence(row), SEQUENCE_CHUNK):
            pred = self.models.score_faces(chunk)
            for i in range(len(chunk)):
                members = pred.member_dict(i)
                scores.append(float(pred.probability[i]))
                member_scores.append([members[m] for m in self.member_names])
                faces.append(
                    {
                        "shot": 0,
                        "track": 0,
                        "frame_index": len(scores) - 1,
                        "time_s": None,
                        "detection_confidence": None,
                        "score": scores[-1],
                        **self._members(members),
                    }
                )
        per_member = {
            m: track_score([s[j] for s in member_scores]) for j, m in enumerate(self.member_names)
        }
        record = {
            "score": track_score(scores),
            **self._members(per_member),
            "n_faces": len(scores),
            "n_faces_detected": len(scores),
            "n_tracks": 1,
            "n_shots": 1,
            "frames_sampled": len(scores),
            "duration_s": None,
        }
        return record, faces

    def score_table(self, batch: pa.Table) -> pa.Table:
        """Rows as a table (columns of :class:`VideoRow` + ``dataset``) -> prediction table with
        the faces of each row as JSON in a transport column (the driver splits them off)."""
        records = []
        for item in batch.to_pylist():
            row = row_from_item(item)
            scored = self.score(row, item["dataset"])
            scored.prediction[FACES_JSON] = json.dumps(scored.faces) if scored.faces else None
            records.append(scored.prediction)
        schema = self.prediction_schema.append(pa.field(FACES_JSON, pa.string()))
        return pa.Table.from_pylist(records, schema=schema)


class VideoScorer:
    """Ray Data actor: loads the models once, then scores the rows of every batch it receives.

    Used as ``map_batches(VideoScorer, compute=ActorPoolStrategy(...))``. The logic lives in
    :class:`RowScorer`; this class only prepares the process (threads, devices).
    """

    def __init__(self, config_json: str) -> None:
        import ray
        import torch

        from batch.config import EvaluationConfig

        config = EvaluationConfig.model_validate_json(config_json)
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        settings = resolve_devices(config.analysis)
        config = config.model_copy(update={"analysis": settings})
        self.scorer = RowScorer(
            build_models(config),
            settings,
            threshold=config.threshold,
            per_face=config.per_face,
            trim_memory=config.trim_memory,
            node=ray.get_runtime_context().get_node_id(),
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.scorer.score_table(batch)
