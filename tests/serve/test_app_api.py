"""The HTTP API over real HTTP on loopback, with an in-process job worker (no Ray).

Covers what does not need the Serve deployments: every problem type for its cause, keys and
rate limits, overload, uploads, Range, cancel/delete, crash recovery, and the Redis + S3 path.
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from pipeline.analyze import Analyzer
from pipeline.model_access import LocalModels
from pipeline.models.importers.fsfm import FSFM_SOURCE
from serve.config import (
    AuthSettings,
    JobSettings,
    MeverSettings,
    S3StorageConfig,
    ServiceConfig,
)
from serve.jobs import JobWorker, cache_namespace
from serve.jobstore import Job, JobStatus, Progress, url_source_key
from serve.jobstore.sqlite import SQLiteJobStore
from serve.mever import fsfm_members, image_report, rescored, video_report
from serve.problems import PROBLEM_BASE_URI
from tests.serve.conftest import analysis_settings, local_service, wait_for, wait_job
from tests.support.httpserver import LoopbackServer, file_response, stall_response, status_response
from tests.support.s3server import moto_s3_server

IMAGE = "faces/fr_obama.jpg"


def config(tmp_path: Path, model_dir: Path, **kwargs: Any) -> ServiceConfig:
    defaults: dict[str, Any] = {
        "home": tmp_path / "home",
        "analysis": analysis_settings(model_dir, shot_workers=2),
        "jobs": JobSettings(heartbeat_s=0.5, stale_after_s=5, recovery_interval_s=0.5),
    }
    return ServiceConfig(**{**defaults, **kwargs})


def assert_problem(response: httpx.Response, kind: str, status: int) -> dict[str, Any]:
    """An RFC 7807 body of ``kind`` with a human detail and no stack trace."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == PROBLEM_BASE_URI + kind
    assert body["status"] == status
    assert body["title"] and body.get("detail")
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body  # type: ignore[no-any-return]


@pytest.fixture
def media_server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        yield server


# ---------------------------------------------------------------------------------------------
# Problems, one per kind, each for its real cause


def test_every_problem_kind_for_its_cause(
    tmp_path: Path,
    model_dir: Path,
    local_models: LocalModels,
    shared_data: Path,
    media_server: LoopbackServer,
) -> None:
    cfg = config(
        tmp_path,
        model_dir,
        auth=AuthSettings(mode="keys"),
        max_upload_bytes=200_000,
        jobs=JobSettings(max_queued_jobs=50),
    )
    keys = cfg.resolved().open_key_store()
    _, key = keys.create_key("tests", rate_per_min=10_000)
    _, slow_key = keys.create_key("slow", rate_per_min=2)
    revoked_id, revoked = keys.create_key("gone")
    keys.revoke(revoked_id)
    missing = media_server.route("/missing.jpg", status_response(404, b"nope"))
    with local_service(cfg, local_models) as svc, svc.client(key) as http:
        # unauthorized: no key, a malformed key, a revoked key
        for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": revoked}):
            r = httpx.get(f"{svc.base_url}/v1/jobs/abc", headers=headers)
            body = assert_problem(r, "unauthorized", 401)
            assert r.headers["www-authenticate"].startswith("Bearer")
        # rate limited, with Retry-After
        with svc.client(slow_key) as slow:
            assert slow.get("/v1/version").status_code == 200
            assert slow.get("/v1/version").status_code == 200
            r = slow.get("/v1/version")
            assert_problem(r, "rate-limited", 429)
            assert int(r.headers["retry-after"]) >= 1
        # invalid URL
        for bad in ("ftp://example.org/a.jpg", "not a url", "http://user:pw@example.org/x"):
            body = assert_problem(http.post("/v1/jobs", json={"url": bad}), "invalid-url", 400)
        # invalid input (schema)
        assert_problem(http.post("/v1/jobs", json={"link": "x"}), "invalid-input", 422)
        # unsupported media: a text file uploaded
        r = http.post("/v1/jobs", files={"file": ("notes.txt", b"hello " * 100, "text/plain")})
        assert "unknown format" in assert_problem(r, "unsupported-media", 422)["detail"]
        # too large: over max_upload_bytes (with and without an honest Content-Length)
        big = (shared_data / "faces" / "dlib_bald_guys.jpg").read_bytes()
        assert len(big) > 200_000
        r = http.post("/v1/jobs", files={"file": ("big.jpg", big, "image/jpeg")})
        assert_problem(r, "too-large", 413)
        # not found: unknown job, unknown route, unknown artefact
        assert_problem(http.get("/v1/jobs/doesnotexist"), "not-found", 404)
        assert_problem(http.get("/v1/nothing-here"), "not-found", 404)
        # download failed: the job fails with the problem of its cause (404 on the server)
        created = http.post("/v1/jobs", json={"url": missing}).json()
        job = wait_job(http, created["id"])
        assert job["status"] == "failed"
        assert job["error"]["type"] == PROBLEM_BASE_URI + "download-failed"
        assert "404" in job["error"]["detail"]
        assert_problem(http.get(f"/v1/jobs/{created['id']}/result"), "conflict", 409)
        assert_problem(http.get(f"/v1/jobs/{created['id']}/artefacts/source.jpg"), "not-found", 404)
        # internal: a result document damaged in the store answers a generic 500, no details
        store = svc.ctx.store
        now = datetime.now(UTC)
        damaged = Job(
            id="damaged-result",
            source="https://example.org/a.jpg",
            source_key="url:https://example.org/a.jpg",
            status=JobStatus.DONE,
            created_at=now,
            updated_at=now,
            result_key="damaged-result",
        )
        store.create(damaged)
        store.put_result(damaged.id, "{not json")
        body = assert_problem(http.get("/v1/jobs/damaged-result/result"), "internal", 500)
        assert "error_id" in body and "json" not in body["detail"].lower()


def test_overloaded_when_the_queue_is_full(
    tmp_path: Path, model_dir: Path, local_models: LocalModels, media_server: LoopbackServer
) -> None:
    cfg = config(tmp_path, model_dir, jobs=JobSettings(max_queued_jobs=2))
    url = media_server.route("/a.jpg", status_response(404))
    with local_service(cfg, local_models, start_worker=False) as svc, svc.client() as http:
        for i in range(2):
            assert http.post("/v1/jobs", json={"url": f"{url}?{i}"}).status_code == 202
        t0 = time.monotonic()
        r = http.post("/v1/jobs", json={"url": f"{url}?2"})
        assert time.monotonic() - t0 < 2  # answered at once, not after a timeout
        assert_problem(r, "overloaded", 503)
        assert int(r.headers["retry-after"]) > 0


# ---------------------------------------------------------------------------------------------
# Jobs


def test_upload_job_and_artefacts_with_range(
    tmp_path: Path, model_dir: Path, local_models: LocalModels, shared_data: Path
) -> None:
    path = shared_data / IMAGE
    data = path.read_bytes()
    with local_service(config(tmp_path, model_dir), local_models) as svc, svc.client() as http:
        r = http.post("/v1/jobs", files={"file": ("obama.jpg", data, "image/jpeg")})
        assert r.status_code == 202
        job_id = r.json()["id"]
        assert wait_job(http, job_id)["status"] == "done"
        result = http.get(f"/v1/jobs/{job_id}/result").json()
        assert result["source"]["path"] == "obama.jpg"
        assert result["faces_total"] == 1
        # The stored medium, whole and by ranges (the player of a video seeks).
        src = f"/v1/jobs/{job_id}/artefacts/source.jpeg"
        whole = http.get(src)
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers["accept-ranges"] == "bytes"
        part = http.get(src, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == data[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
        tail = http.get(src, headers={"Range": "bytes=-10"})
        assert tail.status_code == 206 and tail.content == data[-10:]
        head = http.head(src)
        assert head.status_code == 200 and int(head.headers["content-length"]) == len(data)
        r = http.get(src, headers={"Range": f"bytes={len(data)}-"})
        assert_problem(r, "range-not-satisfiable", 416)
        assert r.headers["content-range"] == f"bytes */{len(data)}"
        assert_problem(http.get(f"/v1/jobs/{job_id}/artefacts/../../x"), "not-found", 404)
        # Listing, then deletion removes the job, its result and its artefacts.
        assert job_id in [j["id"] for j in http.get("/v1/jobs").json()]
        artefacts = svc.ctx.storage.list_keys(f"jobs/{job_id}/")
        assert any(k.endswith("source.jpeg") for k in artefacts) and len(artefacts) >= 3
        assert http.delete(f"/v1/jobs/{job_id}").status_code == 204
        assert_problem(http.get(f"/v1/jobs/{job_id}"), "not-found", 404)
        assert svc.ctx.storage.list_keys(f"jobs/{job_id}/") == []


def test_cancel_and_delete_a_running_job(
    tmp_path: Path, model_dir: Path, local_models: LocalModels, media_server: LoopbackServer
) -> None:
    url = media_server.route("/stall.mp4", stall_response())
    with local_service(config(tmp_path, model_dir), local_models) as svc, svc.client() as http:
        job_id = http.post("/v1/jobs", json={"url": url}).json()["id"]
        wait_for(
            lambda: http.get(f"/v1/jobs/{job_id}").json()["progress"]["stage"] == "downloading", 10
        )
        assert http.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
        cancelled = http.post(f"/v1/jobs/{job_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert_problem(http.post(f"/v1/jobs/{job_id}/cancel"), "conflict", 409)
        assert http.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
        # Deleting removes it (and whatever it had stored).
        assert http.delete(f"/v1/jobs/{job_id}").status_code == 204
        assert_problem(http.get(f"/v1/jobs/{job_id}"), "not-found", 404)


def test_keys_own_their_jobs(
    tmp_path: Path, model_dir: Path, local_models: LocalModels, media_server: LoopbackServer
) -> None:
    cfg = config(tmp_path, model_dir, auth=AuthSettings(mode="keys"))
    keys = cfg.resolved().open_key_store()
    _, alice = keys.create_key("alice")
    _, bob = keys.create_key("bob")
    url = media_server.route("/x.jpg", status_response(404))
    with (
        local_service(cfg, local_models, start_worker=False) as svc,
        svc.client(alice) as a,
        svc.client(bob) as b,
    ):
        job_id = a.post("/v1/jobs", json={"url": url}).json()["id"]
        assert b.get(f"/v1/jobs/{job_id}").status_code == 200  # ids are capabilities
        assert [j["id"] for j in a.get("/v1/jobs").json()] == [job_id]
        assert b.get("/v1/jobs").json() == []
        assert_problem(b.delete(f"/v1/jobs/{job_id}"), "forbidden", 403)
        assert a.delete(f"/v1/jobs/{job_id}").status_code == 204
        # Metrics are not public either when keys are on (a scraper gets a key).
        with svc.client() as anonymous:
            assert_problem(anonymous.get("/metrics"), "unauthorized", 401)
        assert "dfd_jobs" in a.get("/metrics").text


# ---------------------------------------------------------------------------------------------
# A restart loses nothing


def test_restart_recovers_jobs_left_running(
    tmp_path: Path,
    model_dir: Path,
    local_models: LocalModels,
    shared_data: Path,
    media_server: LoopbackServer,
) -> None:
    """A runner died mid-job (the job stayed ``running``, its heartbeat stopped): the next
    runner requeues it and completes it; one that already used its attempts fails with the
    reason. Nothing stays ``running`` for ever."""
    cfg = config(tmp_path, model_dir).resolved()
    url = media_server.route("/obama.jpg", file_response(shared_data / IMAGE, "image/jpeg"))
    an_hour_ago = time.time() - 3600
    dead_store = SQLiteJobStore(cfg.sqlite_path, clock=lambda: an_hour_ago)
    from serve.jobstore import url_source_key

    resumable = dead_store.create(Job.new(url, url_source_key(url)))
    assert dead_store.claim_next() is not None  # the dead runner had claimed it
    exhausted = Job.new(url + "?x", url_source_key(url + "?x"))
    dead_store.create(exhausted)
    for _ in range(cfg.jobs.max_attempts):
        dead_store.claim_next()
        dead_store.update(exhausted.id, status=JobStatus.QUEUED, progress=Progress())
    dead_store.claim_next()
    assert dead_store.get(exhausted.id).attempts > cfg.jobs.max_attempts - 1
    assert dead_store.get(resumable.id).status == JobStatus.RUNNING

    with local_service(cfg, local_models) as svc, svc.client() as http:
        done = wait_job(http, resumable.id)
        assert done["status"] == "done" and done["attempts"] == 2
        assert http.get(f"/v1/jobs/{resumable.id}/result").json()["faces_total"] == 1
        failed = http.get(f"/v1/jobs/{exhausted.id}").json()
        assert failed["status"] == "failed"
        assert failed["error"]["type"] == PROBLEM_BASE_URI + "internal"
        assert "runner stopped" in failed["error"]["detail"]
        assert svc.worker.stats()["recovered"] >= 2


def test_graceful_stop_requeues_running_jobs(
    tmp_path: Path, model_dir: Path, local_models: LocalModels, media_server: LoopbackServer
) -> None:
    cfg = config(tmp_path, model_dir).resolved()
    url = media_server.route("/stall.jpg", stall_response())
    from pipeline.analyze import Analyzer

    worker = JobWorker(
        cfg.open_job_store(),
        cfg.open_storage(),
        Analyzer(local_models, cfg.analysis),
        cfg.jobs,
        cache_namespace=cache_namespace(cfg.analysis, local_models.model_infos()),
    )
    store = cfg.open_job_store()
    from serve.jobstore import url_source_key

    job = store.create(Job.new(url, url_source_key(url)))
    worker.start()
    wait_for(lambda: store.get(job.id).status == JobStatus.RUNNING, 10)
    assert worker.stop(grace_s=0.2) == [job.id]
    assert store.get(job.id).status == JobStatus.QUEUED


class HangingDetector:
    """The models of a deployment whose face detector hangs (until ``release``): every other
    call goes to the real models."""

    def __init__(self, inner: LocalModels) -> None:
        self.inner = inner
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def detect_faces(self, frames: Any) -> Any:
        self.release.wait(60)
        return self.inner.detect_faces(frames)


def test_a_stuck_job_stops_its_heartbeat_is_recovered_and_makes_the_runner_unhealthy(
    tmp_path: Path,
    model_dir: Path,
    local_models: LocalModels,
    media_server: LoopbackServer,
    shared_data: Path,
) -> None:
    jobs = JobSettings(
        heartbeat_s=0.1, stale_after_s=0.5, recovery_interval_s=0.1, stall_after_s=0.4,
        max_attempts=1,
    )  # fmt: skip
    cfg = config(tmp_path, model_dir, jobs=jobs).resolved()
    models = HangingDetector(local_models)
    worker = JobWorker(
        cfg.open_job_store(),
        cfg.open_storage(),
        Analyzer(models, cfg.analysis),  # type: ignore[arg-type]
        cfg.jobs,
        cache_namespace=cache_namespace(cfg.analysis, local_models.model_infos()),
    )
    store = cfg.open_job_store()
    url = media_server.route("/obama.jpg", file_response(shared_data / IMAGE, "image/jpeg"))
    job = store.create(Job.new(url, url_source_key(url)))
    worker.start()
    try:
        worker.health()  # nothing stuck yet
        wait_for(lambda: store.get(job.id).status == JobStatus.RUNNING, 10)
        # No progress past stall_after_s: the runner says it is unhealthy (Serve replaces it)...
        wait_for(lambda: _unhealthy(worker), 10)
        with pytest.raises(RuntimeError, match=rf"no progress .* {job.id}"):
            worker.health()
        # ... and, its heartbeat stopped, recovery takes the job back (here: out of attempts).
        wait_for(lambda: store.get(job.id).status == JobStatus.FAILED, 10)
        assert "runner stopped" in (store.get(job.id).error or {})["detail"]
    finally:
        models.release.set()
        worker.stop(grace_s=1)
    # The stuck call, released late, cannot overwrite the recovered job.
    assert store.get(job.id).status == JobStatus.FAILED


def _unhealthy(worker: JobWorker) -> bool:
    try:
        worker.health()
    except RuntimeError:
        return True
    return False


# ---------------------------------------------------------------------------------------------
# MeVer report shapes (the live plug-in flow is in test_app_serve.py)


def test_mever_reports_from_a_result() -> None:
    result = {
        "score": 0.8,
        "top_shot": 1,
        "source": {"width": 200, "height": 100},
        "shots": [
            {
                "index": 0,
                "start_s": 0.0,
                "end_s": 2.0,
                "score": None,
                "clusters": [],
                "gallery": "http://s/g0.jpg",
            },
            {
                "index": 1,
                "start_s": 2.0,
                "end_s": 4.5,
                "score": 0.8,
                "gallery": "http://s/g1.jpg",
                "clusters": [
                    {
                        "score": 0.8,
                        "collage": "http://s/c0.jpg",
                        "faces": [
                            {"box": [20, 10, 60, 50], "detection_confidence": 0.9},
                            {"box": [0, 0, 200, 100], "detection_confidence": 0.99},
                        ],
                    },
                    {
                        "score": 0.1,
                        "collage": "http://s/c1.jpg",
                        "faces": [
                            {"box": [100, 50, 150, 100], "detection_confidence": 0.95},
                        ],
                    },
                ],
            },
        ],
    }
    video = video_report(result, "http://s/source.mp4")
    assert video["prediction"] == 0.8 == video["results"][1]["prediction"]
    assert video["video_path"] == "http://s/source.mp4"
    assert video["results"][0] == {
        "shot_start": 0.0,
        "shot_end": 2.0,
        "shot_image": "http://s/g0.jpg",
        "prediction": 0.0,
        "face_image_paths": [],
        "face_predictions": [],
    }
    assert video["results"][1]["face_image_paths"] == ["http://s/c0.jpg", "http://s/c1.jpg"]
    assert video["results"][1]["face_predictions"] == [0.8, 0.1]
    image = image_report(result)
    assert image["prediction"] == 0.8
    assert image["info"] == [
        {"bbox": {"top": 0.0, "left": 0.0, "bottom": 1.0, "right": 1.0}, "prediction": 0.8},
        {"bbox": {"top": 0.5, "left": 0.5, "bottom": 1.0, "right": 0.75}, "prediction": 0.1},
    ]
    no_faces = {**result, "score": None, "top_shot": None, "shots": result["shots"][:1]}
    assert video_report(no_faces, "v")["prediction"] == 0.0
    assert image_report(no_faces) == {"prediction": 0.0, "info": []}


def test_faceswap_fsfm_report_comes_from_the_fsfm_member() -> None:
    def face(ens: float, fsfm: float) -> dict[str, object]:
        return {"score": ens, "member_scores": {"m1": ens, "fsfm_ff": fsfm}}

    shot = {"index": 0, "start_s": 0.0, "end_s": 3.0, "score": 0.9, "gallery": "g"}
    result = {
        "score": 0.9,
        "top_shot": 1,
        "models": [
            {"name": "m1", "source": "", "weights": "trained"},
            {"name": "fsfm_ff", "source": f"{FSFM_SOURCE} x (sha256 0)", "weights": "trained"},
        ],
        "shots": [
            {**shot, "score": 0.2, "clusters": [{"score": 0.2, "faces": [face(0.2, 0.7)]}]},
            {
                **shot,
                "index": 1,
                "clusters": [
                    {"score": 0.9, "collage": "c", "faces": [face(0.9, 0.1), face(0.9, 0.3)]},
                ],
            },
        ],
    }
    assert fsfm_members(result) == ["fsfm_ff"]
    fsfm = rescored(result, fsfm_members(result))
    assert fsfm["score"] == pytest.approx(0.7) and fsfm["top_shot"] == 0
    assert fsfm["shots"][1]["clusters"][0]["score"] == pytest.approx(0.2)
    report = video_report(fsfm, "v")
    assert report["prediction"] == pytest.approx(0.7)
    assert report["results"][1]["face_predictions"] == [pytest.approx(0.2)]
    # Without an FSFM member there is nothing to rescore by.
    assert fsfm_members({**result, "models": result["models"][:1]}) == []


def test_mever_routes_are_guarded(
    tmp_path: Path, model_dir: Path, local_models: LocalModels
) -> None:
    """Off by default; when on, only allowed networks and origins get in."""
    with local_service(config(tmp_path, model_dir), local_models, start_worker=False) as svc:
        assert_problem(httpx.get(f"{svc.base_url}/mever/videos/jobs/abc"), "not-found", 404)
    import ipaddress

    cfg = config(
        tmp_path / "b",
        model_dir,
        mever=MeverSettings(
            enabled=True,
            allowed_networks=[ipaddress.IPv4Network("10.0.0.0/8")],  # not this client (127.0.0.1)
        ),
    )
    with local_service(cfg, local_models, start_worker=False) as svc:
        r = httpx.post(f"{svc.base_url}/mever/images/jobs", params={"url": "http://a.example/x"})
        assert_problem(r, "forbidden", 403)
    cfg = config(
        tmp_path / "c",
        model_dir,
        mever=MeverSettings(enabled=True, allowed_origins=["chrome-extension://ok"]),
    )
    with local_service(cfg, local_models, start_worker=False) as svc:
        url = f"{svc.base_url}/mever/images/jobs"
        r = httpx.post(
            url,
            params={"url": "http://a.example/x.jpg"},
            headers={"Origin": "https://evil.example"},
        )
        assert_problem(r, "forbidden", 403)
        r = httpx.post(url, params={"url": "http://a.example/x.jpg", "services": "nope"})
        assert_problem(r, "invalid-input", 422)
        r = httpx.post(
            url,
            params={"url": "http://a.example/x.jpg"},
            headers={"Origin": "chrome-extension://ok"},
        )
        assert (
            r.status_code == 202
            and r.headers["access-control-allow-origin"] == "chrome-extension://ok"
        )
        assert r.json()["status"] == "PROCESSING"


# ---------------------------------------------------------------------------------------------
# Operations


def test_health_metrics_version_docs(
    tmp_path: Path, model_dir: Path, local_models: LocalModels
) -> None:
    with local_service(config(tmp_path, model_dir), local_models) as svc, svc.client() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").json()["status"] == "ready"
        version = http.get("/v1/version").json()
        assert version["service_version"] and len(version["models"]) == 5
        card = http.get("/v1/model-card").json()
        assert card["status"] == "generated", card
        assert "Model details" in card["markdown"] and "figures missing" in card["detail"]
        assert http.get("/docs").status_code == 200
        spec = http.get("/openapi.json").json()
        assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/result"} <= set(spec["paths"])
        assert "multipart/form-data" in spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
        text = http.get("/metrics").text
        assert 'dfd_jobs{status="queued"}' in text
        assert "dfd_http_requests_total" in text and "dfd_runner_jobs" in text


# ---------------------------------------------------------------------------------------------
# Cluster backends: Redis (real server on 127.0.0.1:6379) and S3 (moto on loopback)


@pytest.mark.redis
def test_redis_and_s3_backends_end_to_end(
    tmp_path: Path,
    model_dir: Path,
    local_models: LocalModels,
    shared_data: Path,
    media_server: LoopbackServer,
) -> None:
    prefix = f"dfd-test-{zlib.crc32(str(tmp_path).encode())}:"
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    video = shared_data / "videos" / "liveportrait_d0.mp4"
    url = media_server.route("/d0.mp4", file_response(video, "video/mp4"))
    try:
        with moto_s3_server() as endpoint:
            cfg = config(
                tmp_path,
                model_dir,
                redis_url="redis://127.0.0.1:6379/0",
                redis_prefix=prefix,
                auth=AuthSettings(mode="keys"),
                storage=S3StorageConfig(
                    bucket="dfd-artefacts",
                    endpoint_url=endpoint,
                    access_key="test",
                    secret_key="test",
                    create_bucket=True,
                    public_endpoint_url=endpoint,
                ),
            )
            _, key = cfg.resolved().open_key_store().create_key("redis-test")
            assert client.exists(f"{prefix}apikeys")
            with local_service(cfg, local_models) as svc, svc.client(key) as http:
                job_id = http.post("/v1/jobs", json={"url": url}).json()["id"]
                assert client.exists(f"{prefix}job:{job_id}")
                assert wait_job(http, job_id, timeout=120)["status"] == "done"
                result = http.get(f"/v1/jobs/{job_id}/result").json()
                assert result["source"]["media_type"] == "video" and result["faces_total"] > 0
                # Downloads go straight to the bucket (presigned), not through the service.
                redirect = http.get(result["shots"][0]["gallery"])
                assert redirect.status_code == 307
                assert redirect.headers["location"].startswith(endpoint)
                gallery = httpx.get(redirect.headers["location"], timeout=10)
                assert gallery.status_code == 200 and gallery.content[:3] == b"\xff\xd8\xff"
                data = video.read_bytes()
                source = f"/v1/jobs/{job_id}/artefacts/source.mp4"
                location = http.get(source).headers["location"]
                part = httpx.get(location, headers={"Range": "bytes=0-1023"}, timeout=10)
                assert part.status_code == 206 and part.content == data[:1024]
                head = http.head(source)  # metadata still from the service
                assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
                assert http.get(f"/v1/jobs/{job_id}/artefacts/nope.jpg").status_code == 404
                again = http.post("/v1/jobs", json={"url": url}).json()
                assert again["cached"] is True and again["status"] == "done"
                assert media_server.hits("/d0.mp4") == 1
                assert json.loads(client.get(f"{prefix}job:{again['id']}"))["result_key"] == job_id
    finally:
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_large_uploads_go_straight_to_the_bucket(
    tmp_path: Path, model_dir: Path, local_models: LocalModels, shared_data: Path
) -> None:
    """With S3 and a public endpoint, ``POST /v1/uploads`` hands out a presigned PUT URL: the
    file goes to the bucket, not through the service, and ``{"upload": id}`` submits the job.
    The job reads the medium from the bucket, is cached under the same hash as a body upload
    of the same file, and each upload is spent once submitted; uploads are bound to the key
    that opened them and checked as body uploads are. Without a public endpoint the route
    says so."""
    data = (shared_data / IMAGE).read_bytes()
    plain = config(tmp_path / "plain", model_dir)
    with local_service(plain, local_models) as svc, svc.client() as http:
        refused = http.post("/v1/uploads", json={"filename": "a.jpg"})
        assert_problem(refused, "not-found", 404)
        assert "public_endpoint_url" in refused.json()["detail"]
    with moto_s3_server() as endpoint:
        cfg = config(
            tmp_path / "s3",
            model_dir,
            auth=AuthSettings(mode="keys"),
            max_upload_bytes=len(data) + 10,
            storage=S3StorageConfig(
                bucket="dfd-uploads", endpoint_url=endpoint, access_key="test",
                secret_key="test", create_bucket=True, public_endpoint_url=endpoint,
            ),
        )  # fmt: skip
        keys = cfg.resolved().open_key_store()
        _, alice = keys.create_key("alice")
        _, bob = keys.create_key("bob")
        with local_service(cfg, local_models) as svc, svc.client(alice) as http:
            storage = svc.ctx.storage

            def open_upload(name: str = "obama.jpg") -> dict[str, Any]:
                r = http.post("/v1/uploads", json={"filename": name, "size": len(data)})
                assert r.status_code == 201, r.text
                return r.json()  # type: ignore[no-any-return]

            first = open_upload()
            assert first["put_url"].startswith(endpoint) and first["max_bytes"] == len(data) + 10
            early = http.post("/v1/jobs", json={"upload": first["id"]})
            assert_problem(early, "conflict", 409)
            assert httpx.put(first["put_url"], content=data, timeout=10).status_code == 200
            with svc.client(bob) as other:
                stranger = other.post("/v1/jobs", json={"upload": first["id"]})
                assert_problem(stranger, "not-found", 404)
            created = http.post("/v1/jobs", json={"upload": first["id"]})
            assert created.status_code == 202 and created.json()["cached"] is False
            job = wait_job(http, created.json()["id"], timeout=120)
            assert job["status"] == "done" and job["filename"] == "obama.jpg"
            result = http.get(f"/v1/jobs/{job['id']}/result").json()
            assert result["faces_total"] == 1 and result["source"]["path"] == "obama.jpg"
            source = http.head(f"/v1/jobs/{job['id']}/artefacts/source.jpeg")
            assert source.status_code == 200 and source.headers["content-length"] == str(len(data))
            assert storage.list_keys("uploads/") == []
            again = http.post("/v1/jobs", json={"upload": first["id"]})
            assert_problem(again, "not-found", 404)
            # The same bytes as a body upload: the cache answers (same SHA-256 source key).
            body = http.post("/v1/jobs", files={"file": ("o.jpg", data, "image/jpeg")}).json()
            assert body["cached"] is True
            second = open_upload()
            httpx.put(second["put_url"], content=data, timeout=10).raise_for_status()
            assert http.post("/v1/jobs", json={"upload": second["id"]}).json()["cached"] is True
            assert storage.list_keys("uploads/") == []
            # Checked as body uploads are; a refused file is deleted.
            text = open_upload("notes.jpg")
            httpx.put(text["put_url"], content=b"just text\n" * 10, timeout=10).raise_for_status()
            bad = http.post("/v1/jobs", json={"upload": text["id"]})
            assert_problem(bad, "unsupported-media", 422)
            big = open_upload("big.jpg")
            httpx.put(big["put_url"], content=data + b"\0" * 11, timeout=10).raise_for_status()
            assert_problem(http.post("/v1/jobs", json={"upload": big["id"]}), "too-large", 413)
            assert storage.list_keys("uploads/") == []
            declared = http.post("/v1/uploads", json={"filename": "x.mp4", "size": 10**9})
            assert_problem(declared, "too-large", 413)
            both = http.post("/v1/jobs", json={"upload": first["id"], "url": "https://a.b/c"})
            assert_problem(both, "invalid-input", 422)


def test_every_body_is_bounded_before_it_is_read(
    tmp_path: Path, model_dir: Path, local_models: LocalModels
) -> None:
    """A JSON body declaring 2 GiB is answered 413 at once, without the client sending it; a
    chunked body with no length is cut off at the limit; the routes that parse JSON themselves
    and those FastAPI parses are bounded alike; uploads keep their own, larger, limit."""
    import socket
    from urllib.parse import urlparse

    cfg = config(tmp_path, model_dir, max_upload_bytes=300_000)
    with local_service(cfg, local_models) as svc, svc.client() as http:
        address = urlparse(svc.base_url)

        def declared(path: str, ctype: str, length: int) -> bytes:
            with socket.create_connection((address.hostname, address.port), timeout=10) as s:
                s.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {length}\r\n\r\n".encode()
                    + b"{"
                )
                return s.recv(65536)  # answered before the body: no timeout

        for path in ("/v1/jobs", "/v1/uploads"):
            answer = declared(path, "application/json", 2**31)
            assert answer.startswith(b"HTTP/1.1 413") and b"too-large" in answer, answer[:200]
        assert declared("/v1/jobs", "multipart/form-data; boundary=x", 2**31).startswith(
            b"HTTP/1.1 413"
        )

        def chunks(n: int) -> Iterator[bytes]:
            yield b'{"url": "https://example.org/' + b"a" * 1000
            for _ in range(n):
                yield b"a" * 65536

        for path in ("/v1/jobs", "/v1/uploads"):
            r = http.post(path, content=chunks(100), headers={"content-type": "application/json"})
            assert_problem(r, "too-large", 413)
        # Within the limits, everything works as before.
        ok = http.post("/v1/jobs", json={"url": "ftp://example.org/a.jpg"})
        assert_problem(ok, "invalid-url", 400)


def test_a_client_leaving_mid_body_is_not_an_error(
    tmp_path: Path, model_dir: Path, local_models: LocalModels, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that closes its connection while its body is read is a normal event: logged
    at debug level, no traceback, no ``unhandled error``."""
    import logging
    import socket
    from urllib.parse import urlparse

    cfg = config(tmp_path, model_dir)
    with local_service(cfg, local_models) as svc, svc.client() as http:
        address = urlparse(svc.base_url)
        caplog.set_level(logging.DEBUG, logger="serve.problems")
        for path, ctype in (("/v1/jobs", "application/json"),
                            ("/v1/jobs", "multipart/form-data; boundary=x"),
                            ("/v1/uploads", "application/json")):  # fmt: skip
            with socket.create_connection((address.hostname, address.port), timeout=10) as s:
                s.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                    "Content-Length: 5000\r\n\r\n".encode()
                    + b'{"url": "https://exa'
                )
        wait_for(
            lambda: sum("disconnected" in r.getMessage() for r in caplog.records) >= 2,
            timeout=10,
        )
        assert http.get("/healthz").status_code == 200
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not errors, [r.getMessage() for r in errors]


def test_failed_authentication_is_rate_limited_per_address(
    tmp_path: Path, model_dir: Path, local_models: LocalModels
) -> None:
    """Wrong keys from one address: 401 up to ``failed_auth_per_min``, then 429 with
    ``Retry-After`` for every request from that address, a valid key included (else a valid
    key would still stand out among the refusals)."""
    cfg = config(tmp_path, model_dir, auth=AuthSettings(mode="keys", failed_auth_per_min=5))
    _, key = cfg.resolved().open_key_store().create_key("tests")
    with local_service(cfg, local_models) as svc:
        statuses = []
        for i in range(40):
            r = httpx.get(f"{svc.base_url}/v1/jobs", headers={"X-API-Key": f"dfd_wrong{i}"})
            statuses.append(r.status_code)
        assert statuses == [401] * 5 + [429] * 35
        body = assert_problem(r, "rate-limited", 429)
        assert "failed authentications" in body["detail"] and int(r.headers["retry-after"]) >= 1
        with svc.client(key) as http:
            assert http.get("/v1/jobs").status_code == 429


def test_errors_the_framework_raises_are_typed_problems(
    tmp_path: Path, model_dir: Path, local_models: LocalModels
) -> None:
    """Malformed multipart bodies and unrouted methods answer problems with a stable type, and
    a 405's ``Allow`` names every method routed on the path."""
    cfg = config(tmp_path, model_dir)
    with local_service(cfg, local_models) as svc, svc.client() as http:
        two_files = http.post(
            "/v1/jobs", files=[("file", ("a.jpg", b"1")), ("file", ("b.jpg", b"2"))]
        )
        assert_problem(two_files, "bad-request", 400)
        no_boundary = http.post(
            "/v1/jobs", content=b"--x\r\n", headers={"content-type": "multipart/form-data"}
        )
        assert_problem(no_boundary, "bad-request", 400)
        fields = {f"f{i}": "x" for i in range(20)}
        many = http.post("/v1/jobs", files={"file": ("a.jpg", b"1")}, data=fields)
        assert_problem(many, "bad-request", 400)
        put = http.put("/v1/jobs", json={})
        assert_problem(put, "method-not-allowed", 405)
        assert put.headers["allow"] == "GET, POST", put.text
        options = http.options("/v1/jobs/abc")
        assert_problem(options, "method-not-allowed", 405)
        assert options.headers["allow"] == "DELETE, GET"
        artefact = http.post("/v1/jobs/abc/artefacts/a.jpg")
        assert artefact.headers["allow"] == "GET, HEAD"


def test_api_docs_need_no_cdn(tmp_path: Path, model_dir: Path, local_models: LocalModels) -> None:
    """``/docs`` names only its own assets, and they are served (the browser tests check the
    page with the network blocked)."""
    import re

    with local_service(config(tmp_path, model_dir), local_models) as svc, svc.client() as http:
        page = http.get("/docs")
        assert page.status_code == 200 and "SwaggerUIBundle" in page.text
        urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
        assert urls and all(u.startswith("/") for u in urls), urls
        types = {u: http.get(u).headers["content-type"] for u in urls if u != "/openapi.json"}
        assert types == {
            "/docs/assets/swagger-ui-bundle.js": "text/javascript; charset=utf-8",
            "/docs/assets/swagger-ui.css": "text/css; charset=utf-8",
            "/docs/assets/favicon.png": "image/png",
        }
        assert_problem(http.get("/docs/assets/nope.js"), "not-found", 404)


def test_the_openapi_document_says_what_the_service_answers(
    tmp_path: Path, model_dir: Path, local_models: LocalModels
) -> None:
    """Every operation documents its problems as ``application/problem+json`` (no FastAPI
    default error body), the artefact route its media types (not JSON), ``limit`` its bounds;
    and what the service answers matches: an out-of-bounds ``limit`` is a typed 422."""
    with local_service(config(tmp_path, model_dir), local_models) as svc, svc.client() as http:
        spec = http.get("/openapi.json").json()
        problem_ref = {"$ref": "#/components/schemas/Problem"}
        for path, operations in spec["paths"].items():
            for method, operation in operations.items():
                for status in ("400", "401", "404", "413", "422", "429", "500", "503"):
                    content = operation["responses"][status]["content"]
                    assert content == {"application/problem+json": {"schema": problem_ref}}, (
                        method, path, status,
                    )  # fmt: skip
        assert "HTTPValidationError" not in json.dumps(spec)
        artefact = spec["paths"]["/v1/jobs/{job_id}/artefacts/{path}"]["get"]["responses"]
        assert {"image/jpeg", "video/mp4"} <= set(artefact["200"]["content"])
        assert "application/json" not in artefact["200"]["content"]
        assert {"206", "307"} <= set(artefact)
        (limit,) = [p for p in spec["paths"]["/v1/jobs"]["get"]["parameters"]
                    if p["name"] == "limit"]  # fmt: skip
        assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 1000)
        assert_problem(http.get("/v1/jobs", params={"limit": 0}), "invalid-input", 422)
        assert http.get("/v1/jobs", params={"limit": 1000}).status_code == 200
        metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
        assert list(metrics) == [http.get("/metrics").headers["content-type"]]


def test_beyond_its_concurrency_the_ingress_answers_overloaded_at_once(
    tmp_path: Path, model_dir: Path, local_models: LocalModels
) -> None:
    """Two requests whose bodies are still arriving hold the two slots: the next request is
    answered ``503 overloaded`` (a problem with ``Retry-After``) at once, liveness still
    answers, and the slots free up when those requests end."""
    import socket
    from urllib.parse import urlparse

    cfg = config(tmp_path, model_dir, max_concurrent_requests=2)
    with local_service(cfg, local_models) as svc, svc.client() as http:
        address = urlparse(svc.base_url)
        held = []
        for _ in range(2):
            s = socket.create_connection((address.hostname, address.port), timeout=10)
            s.sendall(
                b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 500\r\n\r\n{"url": "https://exa'
            )
            held.append(s)
        try:
            wait_for(lambda: http.get("/v1/version").status_code == 503, timeout=10)
            refused = http.get("/v1/version")
            assert_problem(refused, "overloaded", 503)
            assert refused.headers["retry-after"] == "5"
            assert http.get("/healthz").status_code == 200
        finally:
            for s in held:
                s.close()
        wait_for(lambda: http.get("/v1/version").status_code == 200, timeout=10)
