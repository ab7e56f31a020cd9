"""Evaluation runs on Ray Data: dataset rows -> the whole method per video -> Parquet predictions.

A run streams the rows of a dataset (paper section 4.1) through a pool of model actors
(``map_batches`` with :class:`ray.data.ActorPoolStrategy`). Each actor loads the same model
classes the CLI and the Serve deployments use (:class:`pipeline.stages.LocalModels`), or reaches
the deployments of a running Serve application instead, and runs
:class:`pipeline.analyze.Analyzer` on one video at a time: shots, faces, face tracks, the
ensemble and the aggregation of paper 3.1. WildDeepfake rows are face sequences: the faces are
already cut, so detection and segmentation are skipped and the sequence is one shot holding one
track.

The run folder::

    RUN/run.json                       config, model fingerprint, history of sessions
    RUN/predictions/part-*.parquet     one row per video (schema: :func:`prediction_schema`)
    RUN/faces/part-*.parquet           one row per scored face, same part names (optional)

The driver writes parts atomically (temporary name, then rename) every ``flush_rows`` rows or
``flush_s`` seconds, so a run that stops loses at most one part; a rerun into the same folder skips
every video already written (resumable). When a video appears in several parts (``retry_errors``),
the newest part wins. A video that cannot be scored becomes a row with ``error`` set and no score,
never a crash and never a neutral score; a video without any face gets no score and no error
(that is an answer, and the metrics count it apart).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from batch.datasets import VideoRow, iter_face_sequence, read_dataset
from dfd.version import __version__
from pipeline.errors import ConfigError, DfdError
from pipeline.memory import release_free_memory
from pipeline.models.ensemble import expected_infos, models_digest, pin_ensemble

if TYPE_CHECKING:
    from batch.config import EvaluationConfig
    from pipeline.analyze import AnalysisSettings, Analyzer
    from pipeline.result import Result
    from pipeline.stages import PipelineModels

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
PREDICTIONS_DIR = "predictions"
FACES_DIR = "faces"
#: Per-member score columns are ``member_<name>`` (member names are ``[a-z0-9_]+``).
MEMBER_PREFIX = "member_"
#: Crops per ensemble call when scoring a face sequence (bounds memory on long sequences).
SEQUENCE_CHUNK = 32
#: ``error_kind`` of a row whose worker died (crash, out of memory) on every retry.
WORKER_LOST = "worker-lost"
#: Column carrying a row's faces from an actor to the driver (JSON); never written.
_FACES_JSON = "_faces_json"

#: ``(column, type)`` of every prediction row, before the per-member columns.
PREDICTION_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("video_id", pa.string()),
    ("dataset", pa.string()),
    ("path", pa.string()),
    ("label", pa.int8()),  # 1 = fake, 0 = real
    ("manipulation", pa.string()),
    ("split", pa.string()),
    ("kind", pa.string()),  # "video" | "face_sequence"
    ("score", pa.float64()),  # DeepFake probability; null = no face, or error
    ("label_pred", pa.int8()),  # score >= threshold; null without score
    ("n_faces", pa.int32()),  # faces scored (in kept tracks)
    ("n_faces_detected", pa.int32()),
    ("n_tracks", pa.int32()),
    ("n_shots", pa.int32()),
    ("frames_sampled", pa.int32()),
    ("duration_s", pa.float64()),
    ("error_kind", pa.string()),  # a DfdError kind, "internal" or "worker-lost"; null = fine
    ("error", pa.string()),  # one-line message; null = fine
    ("service_version", pa.string()),
    ("models_digest", pa.string()),
    ("elapsed_s", pa.float64()),
    ("finished_at", pa.timestamp("us", tz="UTC")),
    ("worker", pa.string()),  # host:pid of the actor
    ("node", pa.string()),  # the Ray node of the actor (null outside Ray)
    ("worker_rss_mb", pa.float64()),  # the actor's resident memory after this row
)

#: ``(column, type)`` of every face row, before the per-member columns.
FACE_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("video_id", pa.string()),
    ("dataset", pa.string()),
    ("label", pa.int8()),
    ("manipulation", pa.string()),
    ("split", pa.string()),
    ("shot", pa.int32()),
    ("track", pa.int32()),  # face cluster within the shot
    ("frame_index", pa.int32()),  # frame of the video; position in a face sequence
    ("time_s", pa.float64()),  # null for face sequences
    ("detection_confidence", pa.float64()),  # null for face sequences (not detected here)
    ("score", pa.float64()),
)


def member_column(name: str) -> str:
    return f"{MEMBER_PREFIX}{name}"


def member_names_of(schema: pa.Schema) -> list[str]:
    """Member names from the ``member_*`` columns of a predictions or faces table."""
    return [n.removeprefix(MEMBER_PREFIX) for n in schema.names if n.startswith(MEMBER_PREFIX)]


def prediction_schema(member_names: Sequence[str]) -> pa.Schema:
    """Schema of ``predictions/*.parquet``: :data:`PREDICTION_FIELDS` + ``member_<name>``."""
    fields = [pa.field(n, t) for n, t in PREDICTION_FIELDS]
    fields += [pa.field(member_column(m), pa.float64()) for m in member_names]
    return pa.schema(fields)


def face_schema(member_names: Sequence[str]) -> pa.Schema:
    """Schema of ``faces/*.parquet``: :data:`FACE_FIELDS` + ``member_<name>``."""
    fields = [pa.field(n, t) for n, t in FACE_FIELDS]
    fields += [pa.field(member_column(m), pa.float64()) for m in member_names]
    return pa.schema(fields)


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
# Scoring one row (plain Python: used by the Ray actors and by plain loops alike)


@dataclass
class ScoredRow:
    """One prediction row (columns of :func:`prediction_schema`) and its face rows."""

    prediction: dict[str, Any]
    faces: list[dict[str, Any]]


def _batched(items: Iterator[Any], n: int) -> Iterator[list[Any]]:
    while batch := list(itertools.islice(items, n)):
        yield batch


def _rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


@functools.cache
def _worker_id() -> str:
    """``host:pid`` of this process: which actor scored a row."""
    return f"{socket.gethostname()}:{os.getpid()}"


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

        base = {
            "video_id": row.video_id,
            "dataset": dataset,
            "path": row.path,
            "label": row.label,
            "manipulation": row.manipulation,
            "split": row.split,
            "kind": row.kind,
        }
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
        except DfdError as exc:
            record = {"error_kind": exc.kind, "error": exc.detail}
        except Exception as exc:  # a bug or a library failure on this video: record it, go on
            log.exception("scoring %s failed", row.video_id)
            record = {"error_kind": "internal", "error": f"{type(exc).__name__}: {exc}"}
        score = record.get("score")
        record.update(base)
        record["label_pred"] = None if score is None else int(score >= self.threshold)
        record["service_version"] = __version__
        record["models_digest"] = self.models_digest
        record["elapsed_s"] = round(time.perf_counter() - t0, 4)
        record["finished_at"] = datetime.now(UTC)
        record["worker"] = _worker_id()
        record["node"] = self.node
        if self.trim_memory:
            release_free_memory()
        record["worker_rss_mb"] = round(_rss_mb(), 1)
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
        for chunk in _batched(iter_face_sequence(row), SEQUENCE_CHUNK):
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
        fields = {f.name for f in dataclasses.fields(VideoRow)}
        records = []
        for item in batch.to_pylist():
            row = VideoRow(**{k: v for k, v in item.items() if k in fields})
            scored = self.score(row, item["dataset"])
            scored.prediction[_FACES_JSON] = json.dumps(scored.faces) if scored.faces else None
            records.append(scored.prediction)
        schema = self.prediction_schema.append(pa.field(_FACES_JSON, pa.string()))
        return pa.Table.from_pylist(records, schema=schema)


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


def build_models(config: EvaluationConfig) -> PipelineModels:
    """The models one actor (or a plain loop) scores with: local, or a Serve app's deployments."""
    if config.serve_app is not None:
        return _serve_models(config.serve_app)
    from pipeline.stages import LocalModels

    a = config.analysis
    return LocalModels.load(a.inference, a.faces, a.segmentation, a.embedder_weights)


#: Deployment names of the service's Serve application (serve/deployments.py); members are
#: named by :func:`serve.app.member_deployment_name`.
SERVE_DETECTOR = "FaceDetector"
SERVE_EMBEDDER = "FaceEmbedder"
SERVE_FEATURES = "RegionFeatures"
SERVE_RUNNER = "JobRunner"


def _serve_models(app_name: str) -> PipelineModels:
    """:class:`~serve.remote_models.RemoteModels` over the deployments of the running Serve
    application ``app_name``: the batch run shares the serving replicas (warm, batched across
    callers) instead of loading its own copies.

    The member list comes from the application's job runner, which connected to the same
    deployments; every deployment is then asked what it runs, with blocking calls (Ray Data
    actors have no event loop).

    Raises:
        ConfigError: no such application, or it lacks one of the model deployments.
    """
    from ray import serve
    from ray.serve.exceptions import RayServeException

    from serve.app import member_deployment_name
    from serve.remote_models import ModelsDescription, RemoteModels

    def handle(name: str) -> Any:
        try:
            return serve.get_deployment_handle(name, app_name=app_name)
        except (RayServeException, KeyError, ValueError) as exc:
            raise ConfigError(
                f"Serve application {app_name!r} has no deployment {name!r} ({exc}); start the "
                "service with `dfd serve` or drop --serve-app"
            ) from exc

    runner = handle(SERVE_RUNNER).describe.remote().result()
    names = [str(m["name"]) for m in runner["models"]]
    detector, embedder = handle(SERVE_DETECTOR), handle(SERVE_EMBEDDER)
    features = handle(SERVE_FEATURES)
    members = [handle(member_deployment_name(n)) for n in names]
    det = detector.describe.remote().result()
    emb = embedder.describe.remote().result()
    feat = features.describe.remote().result()
    infos = [m.describe.remote().result()["info"] for m in members]
    description = ModelsDescription(
        face_detector_name=str(det["name"]),
        segmentation_method=str(feat["method"]),
        segmentation_threshold=float(feat["cut_threshold"]),
        has_embedder=bool(emb["available"]),
        members=tuple(infos),
        ensemble=str(runner.get("ensemble", "custom")),
    )
    return RemoteModels(detector, embedder, features, members, description)


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


# ----------------------------------------------------------------------------------------------
# The run folder


def _read_parts(folder: Path) -> list[tuple[str, pa.Table]]:
    parts = []
    for path in sorted(folder.glob("part-*.parquet")):
        try:
            parts.append((path.stem, pq.read_table(path)))
        except (OSError, pa.ArrowInvalid) as exc:
            # Parts are renamed into place only once complete, so this is outside damage.
            log.warning("skipping unreadable part %s: %s", path, exc)
    return parts


def _concat(tables: Sequence[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables, promote_options="default")


class RunFolder:
    """A run folder on disk: its ``run.json``, prediction parts and face parts."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.predictions_dir = self.root / PREDICTIONS_DIR
        self.faces_dir = self.root / FACES_DIR
        self._seq = itertools.count()

    @property
    def run_file(self) -> Path:
        return self.root / RUN_FILE

    def exists(self) -> bool:
        return self.run_file.is_file()

    def info(self) -> dict[str, Any]:
        """The parsed ``run.json``."""
        if not self.exists():
            raise ConfigError(f"{self.root} is not an evaluation run folder (no {RUN_FILE})")
        info: dict[str, Any] = json.loads(self.run_file.read_text(encoding="utf-8"))
        return info

    def write_info(self, info: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.run_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(self.run_file)

    def clean(self) -> None:
        """Remove leftovers of a session that stopped mid-write: temporary files, and face parts
        whose prediction part never landed (predictions are renamed into place last)."""
        for folder in (self.predictions_dir, self.faces_dir):
            for tmp in folder.glob("*.tmp"):
                tmp.unlink()
        written = {p.stem for p in self.predictions_dir.glob("part-*.parquet")}
        for part in self.faces_dir.glob("part-*.parquet"):
            if part.stem not in written:
                part.unlink()

    def write_part(self, predictions: pa.Table, faces: pa.Table | None) -> str:
        """Write one part (faces first, predictions last, each atomically); returns its name."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        name = f"part-{stamp}-{os.getpid()}-{next(self._seq):05d}"
        if faces is not None and faces.num_rows:
            self._write(faces, self.faces_dir / f"{name}.parquet")
        self._write(predictions, self.predictions_dir / f"{name}.parquet")
        return name

    @staticmethod
    def _write(table: pa.Table, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)

    def _latest(self) -> tuple[pa.Table | None, dict[str, str]]:
        """All prediction rows, newest part first per video, and ``video_id -> winning part``."""
        parts = _read_parts(self.predictions_dir)
        winner: dict[str, str] = {}
        for name, table in parts:  # sorted oldest first: later parts overwrite
            for vid in table.column("video_id").to_pylist():
                winner[vid] = name
        if not parts:
            return None, winner
        kept = []
        for name, table in parts:
            ids = table.column("video_id").to_pylist()
            mask = pa.array([winner[v] == name for v in ids])
            kept.append(table.filter(mask))
        return _concat(kept), winner

    def predictions(self) -> pa.Table | None:
        """One row per video (the newest when a video was written twice), sorted by video_id;
        None when nothing is written yet."""
        table, _ = self._latest()
        return None if table is None else table.sort_by("video_id")

    def faces(self) -> pa.Table | None:
        """Face rows of the winning prediction row of each video; None when none were written."""
        _, winner = self._latest()
        kept = []
        for name, table in _read_parts(self.faces_dir):
            ids = table.column("video_id").to_pylist()
            kept.append(table.filter(pa.array([winner.get(v) == name for v in ids])))
        if not kept:
            return None
        return _concat(kept).sort_by([("video_id", "ascending"), ("shot", "ascending")])

    def finished_ids(self, *, retry_errors: bool = False) -> set[str]:
        """Videos a new session skips: every written row, or only the error-free ones."""
        table = self.predictions()
        if table is None:
            return set()
        ids = table.column("video_id").to_pylist()
        if not retry_errors:
            return set(ids)
        errors = table.column("error").to_pylist()
        return {v for v, e in zip(ids, errors, strict=True) if e is None}


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
        infos = _serve_models(config.serve_app).model_infos()
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


@contextlib.contextmanager
def _data_context(**fields: Any) -> Iterator[None]:
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


def _gpu_share(config: EvaluationConfig) -> float:
    import ray

    if config.actor_num_gpus is not None:
        return config.actor_num_gpus
    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    return min(1.0, gpus / config.actors) if gpus else 0.0


def _lost_rows(rows: Sequence[VideoRow], dataset: str, member_names: Sequence[str]) -> pa.Table:
    """Error rows for videos whose worker died on every retry (they are not left unscored)."""
    now = datetime.now(UTC)
    records = [
        {
            "video_id": r.video_id,
            "dataset": dataset,
            "path": r.path,
            "label": r.label,
            "manipulation": r.manipulation,
            "split": r.split,
            "kind": r.kind,
            "error_kind": WORKER_LOST,
            "error": "the worker process died while scoring this video (crash or out of "
            "memory) on every retry; see the Ray worker logs",
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
    session.update(
        finished_at=datetime.now(UTC).isoformat(),
        skipped=summary.skipped,
        processed=summary.processed,
        errors=summary.errors,
        no_face=summary.no_face,
        elapsed_s=round(summary.elapsed_s, 2),
    )
    info["sessions"] = [*info.get("sessions", []), session]
    folder.write_info(info)
    return summary


def _execute(
    config: EvaluationConfig,
    folder: RunFolder,
    todo: Sequence[VideoRow],
    summary: RunSummary,
    started: float,
    progress: RunProgress | None,
) -> None:
    import ray

    items = [{**dataclasses.asdict(r), "dataset": config.dataset} for r in todo]
    buffer: list[pa.Table] = []
    member_names: list[str] = []
    last_flush = time.perf_counter()
    seen: set[str] = set()

    def flush() -> None:
        nonlocal last_flush
        last_flush = time.perf_counter()
        if not buffer:
            return
        table = _concat(buffer)
        buffer.clear()
        faces = _faces_from_transport(table, member_names) if config.per_face else None
        folder.write_part(table.drop_columns([_FACES_JSON]), faces)

    with _data_context(max_errored_blocks=-1, enable_progress_bars=progress is None):
        # One row per block: each video is one task, so the pool balances long and short videos.
        ds: Any = ray.data.from_items(items, override_num_blocks=len(items))
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing remote options as extra keywords but offers no named
            # parameter for max_task_retries; without it a video that kills its worker would
            # be retried forever (Ray Data's default is -1).
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            ds = ds.map_batches(
                VideoScorer,
                fn_constructor_kwargs={"config_json": config.model_dump_json()},
                batch_size=1,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=config.actors),
                num_cpus=config.actor_num_cpus,
                num_gpus=_gpu_share(config),
                max_task_retries=config.max_task_retries,
            )
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if not member_names:
                member_names = member_names_of(block.schema)
            buffer.append(block)
            ids = block.column("video_id").to_pylist()
            seen.update(ids)
            errors = block.column("error").to_pylist()
            scores = block.column("score").to_pylist()
            summary.processed += len(ids)
            summary.errors += sum(e is not None for e in errors)
            summary.no_face += sum(
                e is None and s is None for e, s in zip(errors, scores, strict=True)
            )
            if progress is not None:
                progress(summary.processed, len(todo), time.perf_counter() - started)
            if (
                sum(t.num_rows for t in buffer) >= config.flush_rows
                or time.perf_counter() - last_flush >= config.flush_s
            ):
                flush()
    flush()
    lost = [r for r in todo if r.video_id not in seen]
    if lost:
        names = member_names
        if not names:
            with contextlib.suppress(DfdError):
                names = [i.name for i in expected_infos(config.analysis.inference)]
        folder.write_part(_lost_rows(lost, config.dataset, names), None)
        summary.processed += len(lost)
        summary.errors += len(lost)
        log.error("%d video(s) lost their worker on every retry; written as error rows", len(lost))


def _faces_from_transport(table: pa.Table, member_names: Sequence[str]) -> pa.Table:
    records: list[dict[str, Any]] = []
    for payload in table.column(_FACES_JSON).to_pylist():
        if payload:
            records.extend(json.loads(payload))
    return pa.Table.from_pylist(records, schema=face_schema(member_names))


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
