"""The Serve deployments: one per model, the job runner, and the HTTP ingress.

Each model deployment is a thin wrapper around a plain *server* class defined here (usable and
testable without Ray) that takes several callers' requests at once and splits the answers back:
``*_many(requests) -> answers``, one answer per request, in order. The Serve wrapper adds
``@serve.batch`` (dynamic batching across callers, knobs live-tunable through ``user_config``),
the asyncio boundary (model code runs in a worker thread, so the replica's event loop keeps
answering health checks), and a ``placement()`` report of where the replica landed.

A server runs one model call at a time (a lock): MTCNN is not safe for concurrent use, and one
call at a time keeps a replica's memory predictable. Parallelism comes from replicas and from
batching, not from threads inside a replica.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from pipeline.analyze import Analyzer
from pipeline.errors import ModelError
from pipeline.faces import Detection, FaceDetector, FaceSettings
from pipeline.model_access import FACENET_FILE, RESNET50_FILE, LocalModels
from pipeline.models import InferenceSettings, resolve_model_dir
from pipeline.segment import SegmentSettings, build_extractor
from pipeline.tracks import FaceEmbedder
from serve.config import ServiceConfig
from serve.remote_models import RemoteModels
from serve.replicas import (
    BatchedModel,
    MemberDeployment,
    MemberServer,
    replica_device,
    replica_placement,
)

__all__ = [
    "DetectorServer",
    "EmbedderServer",
    "FaceDetectorDeployment",
    "FaceEmbedderDeployment",
    "FeaturesServer",
    "IngressDeployment",
    "JobRunnerDeployment",
    "MemberDeployment",
    "MemberServer",
    "RegionFeaturesDeployment",
    "replica_device",
    "split_answers",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


def split_answers(flat: Sequence[T], sizes: Sequence[int]) -> list[list[T]]:
    """``flat`` cut into consecutive pieces of ``sizes`` (which must add up to its length)."""
    if sum(sizes) != len(flat):
        raise ValueError(f"{len(flat)} answers cannot be split into pieces of {list(sizes)}")
    out, start = [], 0
    for n in sizes:
        out.append(list(flat[start : start + n]))
        start += n
    return out


def aux_dir(inference: InferenceSettings) -> Path:
    """``<model dir>/aux``: optional weights of the segmentation and embedding networks."""
    return resolve_model_dir(inference.model_dir).root / "aux"


# ---------------------------------------------------------------------------------------------
# Plain servers (no Ray)


class DetectorServer:
    """MTCNN for many callers: each request is a list of ``(H, W, 3) uint8 RGB`` frames."""

    def __init__(self, settings: FaceSettings) -> None:
        self.detector = FaceDetector(settings)
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {"name": LocalModels.face_detector_name}

    def detect_many(self, requests: Sequence[Sequence[np.ndarray]]) -> list[list[list[Detection]]]:
        flat = [frame for frames in requests for frame in frames]
        with self._lock:
            found = self.detector.detect(flat)
        return split_answers(found, [len(r) for r in requests])


class EmbedderServer:
    """VGGFace2 embeddings; ``available`` is false when the weights file is absent (the
    analysis then groups faces by box continuity only, and says so in its result)."""

    def __init__(self, weights_path: Path, device: str = "cpu") -> None:
        self.weights_path = Path(weights_path)
        self.embedder = (
            FaceEmbedder(self.weights_path, device=device) if self.weights_path.is_file() else None
        )
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return self.embedder is not None

    def describe(self) -> dict[str, Any]:
        return {"available": self.available, "weights": str(self.weights_path)}

    def embed_many(self, requests: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
        """One ``(N_i, 512) float32`` unit-norm array per request."""
        if self.embedder is None:
            raise ModelError(f"no face-embedding weights at {self.weights_path}")
        flat = [crop for crops in requests for crop in crops]
        with self._lock:
            emb = self.embedder.embed(flat)
        sizes = [len(r) for r in requests]
        starts = np.cumsum([0, *sizes])
        return [emb[starts[i] : starts[i + 1]] for i in range(len(sizes))]


class FeaturesServer:
    """Region descriptors for shot segmentation (R-MAC with ResNet50 weights, else colour
    histograms): each request a list of frames, each answer a list of ``(R, D)`` arrays."""

    def __init__(
        self, settings: SegmentSettings, weights_path: Path | None, device: str = "cpu"
    ) -> None:
        self.extractor = build_extractor(settings.method, weights_path, device=device)
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {"method": self.extractor.name, "cut_threshold": self.extractor.cut_threshold}

    def features_many(self, requests: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
        flat = [frame for frames in requests for frame in frames]
        with self._lock:
            found = self.extractor(flat)
        return split_answers(found, [len(r) for r in requests])


# ---------------------------------------------------------------------------------------------
# Serve wrappers


@serve.deployment(name="FaceDetector")
class FaceDetectorDeployment(BatchedModel):
    def __init__(self, settings: FaceSettings, device: str) -> None:
        self.server = DetectorServer(settings.model_copy(update={"device": replica_device(device)}))
        self._run_many = self.server.detect_many

    async def describe(self) -> dict[str, Any]:
        return self.server.describe()

    async def detect(self, frames: list[np.ndarray]) -> list[list[Detection]]:
        return await self._call(frames)


@serve.deployment(name="FaceEmbedder")
class FaceEmbedderDeployment(BatchedModel):
    """Deployed even without weights (it then reports ``available: false``): the eight model
    deployments always exist, and installing the weights needs only a redeploy."""

    def __init__(self, weights_path: Path, device: str) -> None:
        self.server = EmbedderServer(weights_path, replica_device(device))
        self._run_many = self.server.embed_many

    async def describe(self) -> dict[str, Any]:
        return self.server.describe()

    async def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        return await self._call(crops)


@serve.deployment(name="RegionFeatures")
class RegionFeaturesDeployment(BatchedModel):
    def __init__(self, settings: SegmentSettings, weights_path: Path | None, device: str) -> None:
        self.server = FeaturesServer(settings, weights_path, replica_device(device))
        self._run_many = self.server.features_many

    async def describe(self) -> dict[str, Any]:
        return self.server.describe()

    async def features(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        return await self._call(frames)


@serve.deployment(name="JobRunner")
class JobRunnerDeployment:
    """Claims queued jobs from the store and runs the same :class:`Analyzer` as ``dfd
    analyze`` over :class:`~serve.remote_models.RemoteModels`. A deployment of its own, not a
    background task of the ingress: the ingress may scale or roll while a video is analysed."""

    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self,
        config: ServiceConfig,
        detector: DeploymentHandle,
        embedder: DeploymentHandle,
        features: DeploymentHandle,
        members: list[DeploymentHandle],
    ) -> None:
        from serve.jobs import JobWorker, cache_namespace

        models = await RemoteModels.connect(
            detector,
            embedder,
            features,
            members,
            ensemble=config.analysis.inference.ensemble or "custom",
            call_timeout_s=config.jobs.model_call_timeout_s,
            share_member_crops=config.jobs.share_member_crops,
        )
        self.models = models
        self.namespace = cache_namespace(config.analysis, models.model_infos())
        self.worker = JobWorker(
            config.open_job_store(),
            config.open_storage(),
            Analyzer(models, config.analysis),
            config.jobs,
            cache_namespace=self.namespace,
            download=config.analysis.download,
        )
        self.worker.start()

    async def wake(self) -> None:
        self.worker.wake()

    def check_health(self) -> None:
        """Serve's health check: a dead dispatcher, an unreachable store or a stuck job makes
        the replica unhealthy, and Serve replaces it (its jobs go back to the queue)."""
        self.worker.health()

    async def describe(self) -> dict[str, Any]:
        d = self.models.description
        return {
            "cache_namespace": self.namespace,
            "face_detector": d.face_detector_name,
            "segmentation": d.segmentation_method,
            "has_embedder": d.has_embedder,
            "ensemble": d.ensemble,
            "models": [vars(i) for i in d.members],
            "warnings": self.models.warnings(),
        }

    async def stats(self) -> dict[str, Any]:
        return self.worker.stats()

    async def queue(self) -> dict[str, Any]:
        """Jobs waiting and running in the store (all runners together), and this runner's
        counters (``dfd status``)."""
        queued, running = await self._counts()
        return {"queued": queued, "running": running, "runner": self.worker.stats()}

    async def _counts(self) -> tuple[int, int]:
        """Jobs queued and running in the store, all runners together."""
        store = self.worker.store
        queued, running = await asyncio.gather(
            asyncio.to_thread(store.count, "queued"), asyncio.to_thread(store.count, "running")
        )
        return queued, running

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """What :func:`serve.autoscaling.job_queue_policy` scales the runners on (Serve asks
        each replica when the runner autoscales)."""
        from serve.autoscaling import JOB_SLOTS, QUEUED_JOBS, RUNNING_JOBS

        queued, running = await self._counts()
        return {
            QUEUED_JOBS: float(queued),
            RUNNING_JOBS: float(running),
            JOB_SLOTS: float(self.worker.settings.concurrency),
        }

    async def placement(self) -> dict[str, Any]:
        return replica_placement()

    def __del__(self) -> None:
        # Serve calls __del__ on graceful shutdown: running jobs go back to the queue.
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.stop()


@serve.deployment(name="Ingress")
@serve.ingress()
class IngressDeployment:
    """The FastAPI controller (paper 3.3): the ``/v1`` API, the MeVer routes, health, metrics.
    The app is built in the replica (``__serve_build_asgi_app__``) from the config and the
    runner's handle, so routes are plain functions of :mod:`serve.api`."""

    def __init__(self, config: ServiceConfig, runner: DeploymentHandle) -> None:
        self.config = config
        self.runner = runner

    def __serve_build_asgi_app__(self) -> FastAPI:
        from serve.api import ApiContext, HandleRunnerClient, create_api

        return create_api(ApiContext.open(self.config, HandleRunnerClient(self.runner)))


def model_aux_weights(config: ServiceConfig) -> tuple[Path, Path | None]:
    """Embedder and segmentation weights paths the deployments load (absent files select the
    weight-free methods, as in :meth:`pipeline.model_access.LocalModels.load`)."""
    aux = aux_dir(config.analysis.inference)
    embed = config.analysis.embedder_weights or aux / FACENET_FILE
    seg = config.analysis.segmentation.weights_path or aux / RESNET50_FILE
    return embed, seg
