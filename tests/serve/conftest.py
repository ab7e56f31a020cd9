"""Fixtures of the service tests: a tiny model directory, the API on a real loopback HTTP server
(uvicorn, in-process job worker, no Ray), and the whole Serve application on a local Ray
instance, started ONCE per session and shared by every ``ray`` test.

Ray runs with ``RAY_AUTH_MODE=disabled`` and no ``RAY_ADDRESS`` (never another cluster), four
logical CPUs (replicas ask for fractions, so the eleven replicas fit on this 2-core machine) and
one declared GPU, so that placement with fractional GPUs is exercised on a CPU-only machine.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.analyze import AnalysisSettings, Analyzer
from pipeline.download import DownloadSettings
from pipeline.faces import FaceSettings
from pipeline.model_access import LocalModels
from pipeline.models import InferenceSettings
from serve.config import (
    AuthSettings,
    DeploymentsConfig,
    JobSettings,
    MeverSettings,
    ModelDeploymentSettings,
    ReplicaSettings,
    ServiceConfig,
)
from serve.jobs import JobWorker, cache_namespace
from tests.support.models import make_model_dir

PLUGIN_ORIGIN = "chrome-extension://dfd-test-plugin"


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve-models") / "models"
    make_model_dir(root)
    return root


def analysis_settings(model_dir: Path, **overrides: Any) -> AnalysisSettings:
    """Fast analysis: tiny models on CPU, 8 frames per shot, loopback downloads allowed."""
    return AnalysisSettings(
        inference=InferenceSettings(model_dir=model_dir, backend="torch", device="cpu"),
        faces=FaceSettings(max_frames_per_shot=8),
        download=DownloadSettings(allow_private_addresses=True, retries=0, read_timeout_s=10),
        **overrides,
    )


@pytest.fixture(scope="session")
def local_models(model_dir: Path) -> LocalModels:
    s = analysis_settings(model_dir)
    return LocalModels.load(s.inference, s.faces, s.segmentation, s.embedder_weights)


@pytest.fixture(scope="session")
def local_analyzer(model_dir: Path, local_models: LocalModels) -> Analyzer:
    """``dfd analyze``'s analyzer with the settings the services under test use."""
    return Analyzer(local_models, analysis_settings(model_dir, shot_workers=1))


# ---------------------------------------------------------------------------------------------
# The API in one process


class InProcessRunner:
    """:class:`serve.api.RunnerClient` over a :class:`JobWorker` in this process."""

    def __init__(self, worker: JobWorker, models: LocalModels) -> None:
        self.worker = worker
        self.models = models

    async def wake(self) -> None:
        self.worker.wake()

    async def describe(self) -> dict[str, Any]:
        return {
            "cache_namespace": self.worker.namespace,
            "models": [vars(i) for i in self.models.model_infos()],
            "warnings": self.models.warnings(),
        }

    async def stats(self) -> dict[str, Any]:
        return self.worker.stats()


@contextlib.contextmanager
def uvicorn_server(app: Any) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 and a free port; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=20, interval=0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class LocalService:
    """The API over real HTTP with an in-process worker (SQLite or Redis, local or S3)."""

    base_url: str
    config: ServiceConfig
    worker: JobWorker
    ctx: Any

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30, **kwargs)


@contextlib.contextmanager
def local_service(
    config: ServiceConfig, models: LocalModels, *, start_worker: bool = True
) -> Iterator[LocalService]:
    """The API on uvicorn plus a :class:`JobWorker` (optionally not started, to keep jobs
    queued)."""
    from serve.api import ApiContext, create_api

    cfg = config.resolved()
    analyzer = Analyzer(models, cfg.analysis)
    worker = JobWorker(
        cfg.open_job_store(),
        cfg.open_storage(),
        analyzer,
        cfg.jobs,
        cache_namespace=cache_namespace(cfg.analysis, models.model_infos()),
        download=cfg.analysis.download,
    )
    ctx = ApiContext.open(cfg, InProcessRunner(worker, models))
    if start_worker:
        worker.start()
    try:
        with uvicorn_server(create_api(ctx)) as url:
            yield LocalService(url, cfg, worker, ctx)
    finally:
        if start_worker:
            worker.stop(grace_s=1)


def wait_job(http: httpx.Client, job_id: str, timeout: float = 60) -> dict[str, Any]:
    """Poll ``GET /v1/jobs/{id}`` until the job is final; returns its last view."""

    def final() -> dict[str, Any] | None:
        body = http.get(f"/v1/jobs/{job_id}").json()
        return body if body["status"] in ("done", "failed", "cancelled") else None

    return wait_for(final, timeout, interval=0.1)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# The Serve application, once per session


def serve_config(home: Path, model_dir: Path) -> ServiceConfig:
    small = {"num_cpus": 0.25}
    return ServiceConfig(
        home=home,
        auth=AuthSettings(mode="keys"),
        jobs=JobSettings(heartbeat_s=1, stale_after_s=10, recovery_interval_s=1, concurrency=4),
        mever=MeverSettings(enabled=True, allowed_origins=[PLUGIN_ORIGIN], rate_per_min=6000),
        analysis=analysis_settings(model_dir, shot_workers=4),
        deployments=DeploymentsConfig(
            ingress=ReplicaSettings(num_cpus=0.1, max_ongoing_requests=100),
            runner=ReplicaSettings(num_cpus=0.25),
            detector=ModelDeploymentSettings(num_gpus=0.15, **small),
            embedder=ModelDeploymentSettings(num_gpus=0.10, **small),
            features=ModelDeploymentSettings(num_gpus=0.10, **small),
            members=ModelDeploymentSettings(num_gpus=0.12, **small),
        ),
    )


@dataclass
class ServeApp:
    base_url: str
    config: ServiceConfig
    key: str
    key_id: str

    def client(self, key: str | None = "default", **kwargs: Any) -> httpx.Client:
        key = self.key if key == "default" else key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=60, **kwargs)


@pytest.fixture(scope="session")
def serve_app(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[ServeApp]:
    """The whole service on local Ray + Serve (started once; ~1 min on 2 cores)."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.pop("RAY_ADDRESS", None)
    from serve.local import start_service, stop_service

    home = tmp_path_factory.mktemp("serve-home")
    config = serve_config(home, model_dir).resolved()
    key_id, key = config.open_key_store().create_key("tests", rate_per_min=100_000)
    try:
        # The code path of `dfd serve`, with one declared GPU for the placement test.
        base = start_service(
            config, "127.0.0.1", free_port(), num_cpus=4, num_gpus=1, ready_timeout_s=300
        )
        yield ServeApp(base, config, key, key_id)
    finally:
        stop_service()
