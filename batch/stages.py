"""The stages of a streaming run over a dataset: each one a Ray Data operator with its own
resources, each calling the :mod:`pipeline` step it names (no step is implemented twice).

1. dataset rows (the driver, :mod:`batch.evaluate`);
2. :class:`DecodeStage` (CPU actors, holding the shot-boundary features): probe, pass 1 (shot
   boundaries), pass 2 (each shot's sampled frames); one :class:`ShotTask` per shot, streamed
   as decoded. Images are one shot of one frame; face sequences (WildDeepfake) are chunks of
   crops that skip detection and tracks;
3. :class:`DetectStage` (model actors): faces on the frames of several shots, of several videos,
   per call; the frames are dropped, the face crops kept;
4. :func:`link_tracks_batch` (CPU tasks): face tracks; the crops of faces in dropped tracks go;
5. :class:`ScoreStage` (model actors): the ensemble on the kept faces of several shots per call,
   and the shot's aggregation (paper 3.1); only scores leave it;
6. :class:`VideoAssembler` (the driver): a video's shots back into one prediction row, written
   to Parquet by the driver.

A shot travels between stages as one row: its ``video_id`` and the pickled :class:`ShotTask`
(frames and crops as NumPy arrays) in an Arrow ``large_binary`` column, through the object store.
A failure at any stage turns the task into an error task naming the stage, which the later
stages pass on untouched and which makes its video an error row.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from batch.datasets import iter_face_sequence
from batch.execution import error_fields, resolve_devices, row_from_item, rss_mb, worker_id
from evaluation.runs import SEQUENCE_CHUNK
from pipeline.errors import DfdError
from pipeline.memory import release_free_memory
from pipeline.models import EnsemblePrediction
from pipeline.models.member import models_digest
from pipeline.sampling import SampledFace
from pipeline.segment import Shot
from pipeline.shot_scoring import (
    IMAGE_SHOT,
    image_tracks,
    kept_faces,
    link_tracks,
    shot_result,
)
from pipeline.steps import (
    batched,
    cut_face,
    plan_frames,
    planned_frames,
    probe_media,
    segment_video,
)
from pipeline.tracks import Tracks

if TYPE_CHECKING:
    from batch.attack_video import AttackedShot, AttackExample
    from batch.config import StagedRunSettings
    from pipeline.model_access import ModelPart, PipelineModels
    from pipeline.result import ShotResult

log = logging.getLogger(__name__)

TaskKind = Literal["video", "image", "sequence", "error"]
StageName = Literal["decode", "detect", "tracks", "score", "attack"]
#: What each stage is called in error messages.
STAGE_LABELS: dict[str, str] = {
    "decode": "decoding",
    "detect": "face detection",
    "tracks": "face tracks",
    "score": "scoring",
    "attack": "attacking",
}


@dataclass
class ShotTask:
    """One shot of one video (or one chunk of a face sequence) on its way through the stages.

    ``part`` numbers the video's tasks from 0 in time order; ``last`` marks its final one, so the
    driver knows when it has them all. Fields fill and empty as the stages go: ``frames`` until
    detection, face crops until scoring, then only the shot's result.
    """

    item: dict[str, Any]  # the dataset row's fields and "dataset"
    part: int
    last: bool
    kind: TaskKind
    shot: Shot = IMAGE_SHOT
    frames_segmented: int = 0  # pass-1 frames of the whole video (on every task)
    duration_s: float | None = None
    frames: list[tuple[int, float, np.ndarray]] = field(default_factory=list)
    n_frames: int = 0
    faces: list[SampledFace] = field(default_factory=list)
    embeddings: np.ndarray | None = None
    tracks: Tracks | None = None
    kept: list[int] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)  # face sequences, until scoring
    result: ShotResult | None = None  # videos and images, once scored
    scores: list[float] = field(default_factory=list)  # face sequences, once scored
    member_scores: list[dict[str, float]] = field(default_factory=list)
    attacked: AttackedShot | None = None  # attack runs: the shot's faces attacked, once scored
    example: AttackExample | None = None  # attack runs: the shot's most suspicious face
    error: dict[str, Any] | None = None
    busy_s: float = 0.0  # time the stages spent on this task
    digest: str = ""
    member_names: tuple[str, ...] = ()
    worker: str = ""
    node: str | None = None
    worker_rss_mb: float = 0.0

    @property
    def video_id(self) -> str:
        return str(self.item["video_id"])

    def fail(self, stage: StageName, exc: BaseException) -> None:
        """Turn this task into its video's error, naming the stage; its data goes."""
        if not isinstance(exc, DfdError):
            log.error("%s of %s failed", stage, self.video_id, exc_info=exc)
        fields = error_fields(exc)
        fields["error"] = f"{STAGE_LABELS[stage]}: {fields['error']}"
        self.error = fields
        self.kind = "error"
        self.last = True
        self.frames, self.faces, self.crops, self.embeddings = [], [], [], None


def error_task(item: dict[str, Any], stage: StageName, exc: BaseException) -> ShotTask:
    task = ShotTask(item=item, part=-1, last=True, kind="error")
    task.fail(stage, exc)
    return task


# ----------------------------------------------------------------------------------------------
# Transport: one row per task


def to_table(tasks: Sequence[ShotTask]) -> pa.Table:
    """Tasks as rows: ``video_id`` and the pickled task (``large_binary``: a shot of 1080p
    frames is hundreds of MB, over a plain binary column's 2 GB per block when batched)."""
    return pa.table(
        {
            "video_id": pa.array([t.video_id for t in tasks], pa.string()),
            "task": pa.array(
                [pickle.dumps(t, protocol=pickle.HIGHEST_PROTOCOL) for t in tasks],
                pa.large_binary(),
            ),
        }
    )


def from_table(table: pa.Table) -> list[ShotTask]:
    return [pickle.loads(b.as_py()) for b in table.column("task")]


def stage_models(config: StagedRunSettings, parts: set[ModelPart]) -> PipelineModels:
    """The models a stage calls: only ``parts`` loaded here, or the Serve application's
    (``config``: devices already resolved in this process, :func:`stage_config`)."""
    import torch

    from batch.models import serve_models
    from pipeline.model_access import LocalModels

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    if config.serve_app is not None:
        return serve_models(config.serve_app)
    a = config.analysis
    return LocalModels.load(a.inference, a.faces, a.segmentation, a.embedder_weights, parts=parts)


def stage_config(config_json: str) -> StagedRunSettings:
    """A stage's settings (:meth:`batch.config.StagedRunSettings.stage_json`), ``device="auto"``
    resolved for this process."""
    from batch.config import StagedRunSettings

    config = StagedRunSettings.model_validate_json(config_json)
    return config.model_copy(update={"analysis": resolve_devices(config.analysis)})


def each_or_all(
    tasks: Sequence[ShotTask],
    stage: StageName,
    run: Callable[[Sequence[ShotTask]], None],
) -> None:
    """``run`` on all ``tasks`` at once (batched across videos); when that fails, on each task
    alone, so that one bad shot fails only its own video.

    ``run`` may have finished some tasks before it failed: every task's fields are put back as
    they were before the retry (``run`` reassigns a task's fields and never changes a field's
    value in place, so a shallow copy is enough), else a finished task would be run again on
    what it had already consumed (a detected shot has no frames left)."""
    before = [dict(vars(task)) for task in tasks]
    try:
        run(tasks)
    except Exception:
        log.warning("%s failed on a batch of %d shots; retrying one by one", stage, len(tasks))
        for task, fields in zip(tasks, before, strict=True):
            vars(task).update(fields)
        for task in tasks:
            try:
                run([task])
            except Exception as exc:
                task.fail(stage, exc)


# ----------------------------------------------------------------------------------------------
# 2. Decode


class DecodeStage:
    """Ray Data actor: dataset rows -> one task per shot, streamed (a generator: one shot's
    frames are in memory at a time, however long the video)."""

    def __init__(self, config_json: str) -> None:
        self.config = stage_config(config_json)
        self.settings = self.config.analysis
        self.models = stage_models(self.config, {"features"})

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        for item in batch.to_pylist():
            t0 = time.perf_counter()
            try:
                for task in self._tasks(item):
                    task.busy_s += time.perf_counter() - t0
                    yield to_table([task])
                    t0 = time.perf_counter()
            except Exception as exc:
                yield to_table([error_task(item, "decode", exc)])
            if self.config.trim_memory:
                release_free_memory()

    def _tasks(self, item: dict[str, Any]) -> Iterator[ShotTask]:
        from pipeline.media import load_image

        s = self.settings
        row = row_from_item(item)
        if row.kind == "face_sequence":
            yield from self._sequence(item)
            return
        path = Path(row.path)
        info = probe_media(path, s)
        if info.kind == "image":
            image = load_image(path, max_pixels=s.max_pixels)
            yield ShotTask(item, 0, True, "image", frames=[(0, 0.0, image)])
            return
        segmentation, frames_segmented = segment_video(self.models, s, path, info)
        shots = segmentation.shots
        common = {"frames_segmented": frames_segmented, "duration_s": info.duration_s}

        def task(i: int, frames: list[tuple[int, float, np.ndarray]]) -> ShotTask:
            last = i == len(shots) - 1
            return ShotTask(item, i, last, "video", shots[i], frames=frames, **common)  # type: ignore[arg-type]

        current, frames = 0, list[tuple[int, float, np.ndarray]]()
        for shot_idx, frame in planned_frames(path, plan_frames(segmentation, info, s), s):
            while current < shot_idx:  # shots come in time order; an empty one still counts
                yield task(current, frames)
                current, frames = current + 1, []
            frames.append((frame.index, frame.time_s, frame.image))
        while current < len(shots):
            yield task(current, frames)
            current, frames = current + 1, []

    def _sequence(self, item: dict[str, Any]) -> Iterator[ShotTask]:
        """A face sequence in chunks of ``SEQUENCE_CHUNK`` crops (the last one marked)."""
        chunks = batched(iter_face_sequence(row_from_item(item)), SEQUENCE_CHUNK)
        previous: list[np.ndarray] | None = None
        part = 0
        for chunk in chunks:
            if previous is not None:
                yield ShotTask(item, part, False, "sequence", crops=previous)
                part += 1
            previous = chunk
        yield ShotTask(item, part, True, "sequence", crops=previous or [])


# ----------------------------------------------------------------------------------------------
# 3. Face detection


class DetectStage:
    """Ray Data actor: the faces on every frame of a batch of shots, several videos per call
    (the detector batches frames of equal size together); frames in, face crops out."""

    def __init__(self, config_json: str) -> None:
        self.config = stage_config(config_json)
        self.settings = self.config.analysis
        self.models = stage_models(self.config, {"faces", "embedder"})

    def __call__(self, batch: pa.Table) -> pa.Table:
        tasks = from_table(batch)
        todo = [t for t in tasks if t.kind in ("video", "image")]
        t0 = time.perf_counter()
        each_or_all(todo, "detect", self._detect)
        share_time(todo, time.perf_counter() - t0, lambda t: max(t.n_frames, 1))
        if self.config.trim_memory:
            release_free_memory()
        return to_table(tasks)

    def _detect(self, tasks: Sequence[ShotTask]) -> None:
        frames = [f for t in tasks for f in t.frames]
        detections = iter(self.models.detect_faces([f[2] for f in frames]))
        for task in tasks:
            faces: list[SampledFace] = []
            for pos, (index, time_s, image) in enumerate(task.frames):
                for det in next(detections):
                    crop = cut_face(image, det, self.models.crop_margin, self.settings)
                    faces.append(SampledFace(pos, index, time_s, det, crop))
            task.n_frames, task.frames, task.faces = len(task.frames), [], faces
            if task.kind == "video" and faces and self.models.has_embedder:
                task.embeddings = self.models.embed_faces([f.crop for f in faces])


# ----------------------------------------------------------------------------------------------
# 4. Face tracks


def link_tracks_batch(batch: pa.Table, settings_json: str) -> pa.Table:
    """Ray Data task: each shot's faces linked into tracks (:func:`pipeline.shot_scoring.
    link_tracks`; an image's faces are each their own); crops of dropped faces are let go."""
    from pipeline.settings import AnalysisSettings

    settings = AnalysisSettings.model_validate_json(settings_json)
    tasks = from_table(batch)
    for task in tasks:
        if task.kind not in ("video", "image"):
            continue
        t0 = time.perf_counter()
        try:
            if task.kind == "image":
                task.tracks = image_tracks(len(task.faces))
            elif task.faces:
                task.tracks = link_tracks(task.faces, task.n_frames, settings, task.embeddings)
            else:
                task.tracks = Tracks([])
            task.kept = kept_faces(task.tracks)
            keep = set(task.kept)
            for i, face in enumerate(task.faces):
                if i not in keep:
                    face.crop = _NO_CROP
            task.embeddings = None
        except Exception as exc:
            task.fail("tracks", exc)
        task.busy_s += time.perf_counter() - t0
    return to_table(tasks)


_NO_CROP = np.zeros((0, 0, 3), np.uint8)


# ----------------------------------------------------------------------------------------------
# 5. The ensemble


class ScoreStage:
    """Ray Data actor: the ensemble on the kept faces of a batch of shots, several videos per
    call, then each shot's aggregation; only scores go on to the driver. Subclasses change what
    is done with the faces (:class:`batch.attack_stage.AttackStage`)."""

    stage: StageName = "score"

    def __init__(self, config_json: str) -> None:
        import ray

        self.config = stage_config(config_json)
        self.settings = self.config.analysis
        self.models = stage_models(self.config, {"ensemble"})
        infos = self.models.model_infos()
        self.member_names = tuple(i.name for i in infos)
        self.digest = models_digest(infos)
        self.node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        tasks = from_table(batch)
        todo = [t for t in tasks if t.kind != "error"]
        t0 = time.perf_counter()
        each_or_all(todo, self.stage, self._score)
        share_time(todo, time.perf_counter() - t0, lambda t: max(len(t.kept) + len(t.crops), 1))
        if self.config.trim_memory:
            release_free_memory()
        rss = rss_mb()
        for task in tasks:
            task.digest, task.member_names = self.digest, self.member_names
            task.worker, task.node, task.worker_rss_mb = worker_id(), self.node, rss
        return to_table(tasks)

    def _score(self, tasks: Sequence[ShotTask]) -> None:
        crops_of = [scored_crops(t) for t in tasks]
        pred = self.models.score_faces([c for crops in crops_of for c in crops])
        for task, part in zip(tasks, split_prediction(pred, crops_of), strict=True):
            self.record_scores(task, part)

    def record_scores(self, task: ShotTask, part: EnsemblePrediction) -> None:
        """The shot's result (or the sequence chunk's face scores) from its faces' prediction;
        the faces and their crops go."""
        if task.kind == "sequence":
            task.scores = [float(p) for p in part.probability]
            task.member_scores = [part.member_dict(i) for i in range(len(task.crops))]
            task.crops = []
            return
        assert task.tracks is not None
        task.result = shot_result(
            task.shot,
            task.n_frames,
            task.faces,
            task.tracks,
            task.kept,
            part if task.faces else None,
            self.settings,
        )
        task.faces, task.tracks = [], None


def scored_crops(task: ShotTask) -> list[np.ndarray]:
    """The crops the ensemble scores for ``task``: a sequence chunk's, or the kept faces' in
    track order."""
    return task.crops if task.kind == "sequence" else [task.faces[i].crop for i in task.kept]


def split_prediction(
    pred: EnsemblePrediction, crops_of: Sequence[Sequence[Any]]
) -> list[EnsemblePrediction]:
    """One prediction for a batch of tasks' faces -> one per task (``crops_of``: their faces)."""
    parts, start = [], 0
    for crops in crops_of:
        stop = start + len(crops)
        parts.append(
            EnsemblePrediction(
                pred.probability[start:stop], pred.member_probabilities[start:stop],
                pred.member_names,
            )
        )  # fmt: skip
        start = stop
    return parts


def share_time(
    tasks: Sequence[ShotTask], seconds: float, weight: Callable[[ShotTask], int]
) -> None:
    """Spread a batch's time over its tasks, by ``weight`` (frames, faces)."""
    total = sum(weight(t) for t in tasks)
    for task in tasks:
        task.busy_s += seconds * weight(task) / total if total else 0.0
