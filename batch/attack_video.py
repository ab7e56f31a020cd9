"""Attacking one dataset row: faces as in the clean run, attacked, re-aggregated.

For each row :class:`VideoAttacker` (i) extracts faces exactly as the clean analysis does (shots,
at most 64 frames per shot, face tracks; :meth:`pipeline.analyze.Analyzer.analyze_file`) and
keeps its clean scores, (ii) attacks each kept face crop, shot by shot, with
:class:`batch.attack_faces.FaceAttacker`, (iii) re-scores the attacked crops with the same
members and re-aggregates them by the same rule (track mean -> shot max -> video max), so clean
and attacked video scores sit side by side in one row. Per-row failures become error rows, never
a neutral score. Ray runs attack through the stages instead (:mod:`batch.attack_stage`),
with the same aggregation (:func:`attack_fields`).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from batch.attack_config import AttackRunSettings
from batch.attack_faces import FaceAttacker, FaceAttackOutput
from batch.datasets import VideoRow, iter_face_sequence
from batch.execution import error_fields, resolve_devices, row_fields
from evaluation.image_metrics import amplify
from evaluation.runs import SEQUENCE_CHUNK
from pipeline.aggregate import max_or_none, track_score
from pipeline.analyze import Analyzer
from pipeline.artefacts import MemorySink
from pipeline.errors import DfdError
from pipeline.model_access import LocalModels
from pipeline.models import EnsemblePrediction, MemberInfo
from pipeline.result import ShotResult
from pipeline.steps import batched

log = logging.getLogger(__name__)

#: The columns of a result row, in order (:meth:`VideoAttacker.columns`); each member's
#: ``clean_member__<name>`` and ``attacked_member__<name>`` go between the results and the example.
ROW_COLUMNS = ("video_id", "dataset", "label", "manipulation", "split", "kind")
RESULT_COLUMNS = (
    "clean_score",
    "attacked_score",
    "n_faces",
    "n_shots",
    "n_tracks",
    "face_clean_mean",
    "face_attacked_mean",
    "n_faces_fake_clean",
    "n_faces_flipped",
    "l1_mean",
    "l2_mean",
    "linf_mean",
    "psnr_mean",
    "ssim_mean",
    "n_unchanged",
    "queries_total",
    "defended_clean_score",
    "defended_attacked_score",
)
EXAMPLE_COLUMNS = (
    "example_clean_score",
    "example_attacked_score",
    "example_amplification",
    "example_clean_png",
    "example_perturbation_png",
    "example_attacked_png",
)
TAIL_COLUMNS = ("seconds", "attack_seconds", "error_kind", "error")


def row_columns(row: VideoRow, dataset: str) -> dict[str, Any]:
    """The :data:`ROW_COLUMNS` of ``row``: what identifies a result row, error rows too."""
    fields = row_fields(row, dataset)
    return {k: fields[k] for k in ROW_COLUMNS}


@dataclass
class AttackedShot:
    """The faces of one shot (or face-sequence chunk) scored and attacked, in track order:
    scores, norms and query counts only (:meth:`of` drops the crops)."""

    clean: EnsemblePrediction
    out: FaceAttackOutput
    #: Time spent attacking these faces (their share of a batch's).
    seconds: float = 0.0

    @classmethod
    def of(
        cls, clean: EnsemblePrediction, out: FaceAttackOutput, seconds: float = 0.0
    ) -> AttackedShot:
        # Keep scores and sizes only: the crops of every shot would grow with the video.
        empty = np.zeros((0, 3, 0, 0), dtype=np.float32)
        return cls(clean, dataclasses.replace(out, x_clean=empty, x_adv=empty), seconds)


@dataclass
class AttackExample:
    """A face shown in the report: the most suspicious clean face of its row, clean and
    attacked (where an attack towards "real" matters most)."""

    clean_score: float
    attacked_score: float
    clean: np.ndarray  # (S, S, 3) float in [0, 1]
    adv: np.ndarray

    @classmethod
    def of(cls, pred: EnsemblePrediction, out: FaceAttackOutput) -> AttackExample:
        """The most suspicious face of one attacked batch (the first of equals)."""
        i = int(np.argmax(pred.probability))
        return cls(
            float(pred.probability[i]),
            float(out.attacked_probability[i]),
            out.x_clean[i].transpose(1, 2, 0).copy(),
            out.x_adv[i].transpose(1, 2, 0).copy(),
        )

    def beats(self, other: AttackExample | None) -> bool:
        return other is None or self.clean_score > other.clean_score


class _AttackingModels:
    """The clean run's models, plus an attack of every batch of faces they score.

    :class:`Analyzer` scores the kept faces of one shot per ``score_faces`` call (all of an
    image's faces in one call); wrapping that call attacks the same crops the clean run scores,
    one shot at a time, so a shot's crops are released as soon as it is done (bounded memory).
    The clean prediction is returned unchanged: the analysis and its clean scores are exactly
    those of an evaluation run.
    """

    def __init__(self, inner: LocalModels, attacker: FaceAttacker, keep_example: bool) -> None:
        self.inner = inner
        self.attacker = attacker
        self.keep_example = keep_example
        self.records: list[AttackedShot] = []
        self.example: AttackExample | None = None
        self.attack_seconds = 0.0
        self.segmentation_method = inner.segmentation_method
        self.segmentation_threshold = inner.segmentation_threshold
        self.face_detector_name = inner.face_detector_name
        self.has_embedder = inner.has_embedder
        self.crop_margin = inner.crop_margin
        self.ensemble_name = inner.ensemble_name

    def region_features(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.inner.region_features(frames)

    def detect_faces(self, frames: Sequence[np.ndarray]) -> Any:
        return self.inner.detect_faces(frames)

    def embed_faces(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        return self.inner.embed_faces(crops)

    def model_infos(self) -> list[MemberInfo]:
        return self.inner.model_infos()

    def warnings(self) -> list[str]:
        return self.inner.warnings()

    def score_faces(self, crops: Sequence[np.ndarray]) -> EnsemblePrediction:
        pred = self.inner.score_faces(crops)
        if len(crops):
            t0 = time.perf_counter()
            out = self.attacker.attack_crops(crops, pred.member_probabilities)
            self.attack_seconds += time.perf_counter() - t0
            if self.keep_example:
                example = AttackExample.of(pred, out)
                if example.beats(self.example):
                    self.example = example
            self.records.append(AttackedShot.of(pred, out))
        return pred


#: Faces of a medium as shots -> tracks -> indices into the medium's face arrays.
Structure = list[list[list[int]]]


def video_score(structure: Structure, face_scores: np.ndarray) -> float | None:
    """Paper 3.1: track = mean of its faces, shot = max of its tracks, video = max of shots."""
    shots = [
        max_or_none([track_score([float(face_scores[i]) for i in track]) for track in shot])
        for shot in structure
    ]
    return max_or_none(shots)


def shot_structure(shots: Sequence[ShotResult], records: Sequence[AttackedShot]) -> Structure:
    """Match the analysis's tracks to the attacked shot batches, checking they line up.

    Each shot with at least one track was scored in exactly one non-empty batch, in shot
    order, its faces in track order.
    """
    structure: Structure = []
    shots = [shot for shot in shots if shot.clusters]
    if len(shots) != len(records):
        raise RuntimeError(f"{len(shots)} scored shots but {len(records)} attacked face batches")
    offset = 0
    for shot, record in zip(shots, records, strict=True):
        tracks, k = [], 0
        for cluster in shot.clusters:
            tracks.append(list(range(offset + k, offset + k + len(cluster.faces))))
            for face in cluster.faces:
                if face.score != float(record.clean.probability[k]):
                    raise RuntimeError("attacked faces do not line up with the analysis's faces")
                k += 1
        if k != len(record.clean.probability):
            raise RuntimeError(
                f"shot {shot.index}: {k} faces in tracks, {len(record.clean.probability)} attacked"
            )
        structure.append(tracks)
        offset += k
    return structure


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _member_column(prefix: str, name: str) -> str:
    return f"{prefix}_member__{name}"


def attack_columns(member_names: Sequence[str]) -> list[str]:
    """Every column of a result row, in order (error rows have them all, as None)."""
    members = [
        _member_column(prefix, name) for prefix in ("clean", "attacked") for name in member_names
    ]
    return [*ROW_COLUMNS, *RESULT_COLUMNS, *members, *EXAMPLE_COLUMNS, *TAIL_COLUMNS]


def attack_row(
    row: VideoRow,
    dataset: str,
    member_names: Sequence[str],
    fields: dict[str, Any],
    *,
    attack_seconds: float,
    seconds: float,
) -> dict[str, Any]:
    """One result row: ``fields`` (:func:`attack_fields` and an example, or an error) in the
    columns of :func:`attack_columns`."""
    record: dict[str, Any] = dict.fromkeys(attack_columns(member_names))
    record.update(row_columns(row, dataset))
    record.update(fields)
    record["attack_seconds"] = round(attack_seconds, 4)
    record["seconds"] = round(seconds, 4)
    return record


def attack_fields(
    structure: Structure,
    records: Sequence[AttackedShot],
    clean_score: float | None,
    member_names: Sequence[str],
    threshold: float,
) -> dict[str, Any]:
    """Clean and attacked scores of one row, aggregated as the clean run aggregates (paper
    3.1), with face-level success counts and perturbation sizes. ``clean_score``: the
    analysis's own video score (None: computed from ``structure``, as for face sequences)."""
    n = sum(len(r.clean.probability) for r in records)
    out: dict[str, Any] = {"n_faces": n, "n_tracks": sum(len(s) for s in structure)}
    if n == 0:
        out.update(clean_score=clean_score, attacked_score=None)
        return out
    cat = np.concatenate
    clean_members = cat([r.clean.member_probabilities for r in records])
    attacked_members = cat([r.out.attacked for r in records])
    clean = cat([r.clean.probability for r in records])
    combined = records[0].out.combined
    attacked = combined(attacked_members)
    fake_clean = clean >= threshold
    out.update(
        clean_score=clean_score if clean_score is not None else video_score(structure, clean),
        attacked_score=video_score(structure, attacked),
        face_clean_mean=float(clean.mean()),
        face_attacked_mean=float(attacked.mean()),
        n_faces_fake_clean=int(fake_clean.sum()),
        n_faces_flipped=int((fake_clean & (attacked < threshold)).sum()),
        queries_total=int(cat([r.out.queries for r in records]).sum()),
    )
    for key in ("l1", "l2", "linf", "psnr", "ssim"):
        out[f"{key}_mean"] = _mean(cat([getattr(r.out, key) for r in records]))
    out["n_unchanged"] = int((cat([r.out.linf for r in records]) == 0).sum())
    for j, name in enumerate(member_names):
        out[_member_column("clean", name)] = video_score(structure, clean_members[:, j])
        out[_member_column("attacked", name)] = video_score(structure, attacked_members[:, j])
    defended = [(r.out.defended_clean, r.out.defended_attacked) for r in records]
    if all(c is not None and a is not None for c, a in defended):
        d_clean = combined(cat([c for c, _ in defended]))
        d_adv = combined(cat([a for _, a in defended]))
        out["defended_clean_score"] = video_score(structure, d_clean)
        out["defended_attacked_score"] = video_score(structure, d_adv)
    return out


def sequence_structure(n_faces: int) -> Structure:
    """A face sequence (WildDeepfake) as the evaluation run scores it: one shot, one track."""
    return [[list(range(n_faces))]] if n_faces else []


class VideoAttacker:
    """Attack one dataset row at a time with one set of loaded models (plain Python, no Ray):
    the in-process run (``dfd attack --local``) and the reference the staged run is tested
    against (:mod:`batch.attack_stage`)."""

    def __init__(self, models: LocalModels, settings: AttackRunSettings) -> None:
        if models.ensemble is None:
            raise ValueError("an attack needs the ensemble loaded in this process")
        self.models = models
        self.ensemble = models.ensemble
        self.settings = settings
        self.analysis = settings.analysis.model_copy(update={"galleries": False})
        self.attacker = FaceAttacker.for_ensemble(models.ensemble, settings.attack)

    @classmethod
    def load(cls, settings: AttackRunSettings) -> VideoAttacker:
        """Every model loaded in this process, on the resolved device, with the run's torch
        threads."""
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        a = resolve_devices(settings.analysis)
        models = LocalModels.load(a.inference, a.faces, a.segmentation, a.embedder_weights)
        return cls(models, settings.model_copy(update={"analysis": a}))

    @property
    def member_names(self) -> tuple[str, ...]:
        return self.ensemble.member_names

    def columns(self) -> list[str]:
        return attack_columns(self.member_names)

    def process(self, row: VideoRow, dataset: str, with_example: bool = False) -> dict[str, Any]:
        """One output row: clean and attacked scores side by side, or an error row."""
        t0 = time.perf_counter()
        models = _AttackingModels(self.models, self.attacker, with_example)
        try:
            if row.kind == "face_sequence":
                structure, n_shots = self._face_sequence(row, models), 1
                clean_score = None
            else:
                analyzer = Analyzer(models, self.analysis)
                result = analyzer.analyze_file(Path(row.path), MemorySink())
                structure = shot_structure(result.shots, models.records)
                n_shots, clean_score = len(result.shots), result.score
            fields = attack_fields(
                structure, models.records, clean_score, self.member_names,
                self.settings.attack.threshold,
            )  # fmt: skip
            fields["n_shots"] = n_shots
            if models.example is not None:
                fields.update(example_fields(models.example))
        except Exception as exc:  # one row fails, never the actor
            if not isinstance(exc, DfdError):
                log.error("row %s failed:\n%s", row.video_id, traceback.format_exc())
            fields = error_fields(exc)
        return attack_row(
            row, dataset, self.member_names, fields,
            attack_seconds=models.attack_seconds, seconds=time.perf_counter() - t0,
        )  # fmt: skip

    def _face_sequence(self, row: VideoRow, models: _AttackingModels) -> Structure:
        """Pre-cropped faces (WildDeepfake), as the evaluation run scores them: every face of the
        sequence, in chunks of ``SEQUENCE_CHUNK``, one shot holding one track."""
        n = 0
        for chunk in batched(iter_face_sequence(row), SEQUENCE_CHUNK):
            models.score_faces(chunk)
            n += len(chunk)
        return sequence_structure(n)


def example_fields(example: AttackExample) -> dict[str, Any]:
    delta, factor = amplify(example.adv - example.clean)
    return {
        "example_clean_score": example.clean_score,
        "example_attacked_score": example.attacked_score,
        "example_amplification": factor,
        "example_clean_png": _png((example.clean * 255.0 + 0.5).astype(np.uint8)),
        "example_perturbation_png": _png(delta),
        "example_attacked_png": _png((np.clip(example.adv, 0, 1) * 255.0 + 0.5).astype(np.uint8)),
    }
