"""The whole service on local Ray + Serve, over real HTTP on loopback (one app per session).

Results are compared with ``dfd analyze``'s :class:`Analyzer` on the same file: same shots and
faces, scores within 1e-4 (``@serve.batch`` groups faces into other forward passes).
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
import torch

from pipeline.analyze import Analyzer
from pipeline.artefacts import MemorySink
from pipeline.model_access import LocalModels
from serve.app import model_deployment_names
from serve.jobstore import Job, JobStatus
from serve.jobstore.sqlite import SQLiteJobStore
from tests.serve.conftest import PLUGIN_ORIGIN, ServeApp, wait_for, wait_job
from tests.support.httpserver import LoopbackServer, file_response

pytestmark = pytest.mark.ray

IMAGE = "faces/fr_two_people.jpg"
VIDEO = "videos/liveportrait_d0.mp4"


def assert_same_analysis(service: dict[str, Any], local: dict[str, Any], tol: float = 1e-4) -> None:
    """Same shots, tracks, faces and boxes; scores within ``tol``."""
    assert service["source"]["sha256"] == local["source"]["sha256"]
    assert service["top_shot"] == local["top_shot"]
    assert service["faces_total"] == local["faces_total"]
    assert (service["score"] is None) == (local["score"] is None)
    if local["score"] is not None:
        assert service["score"] == pytest.approx(local["score"], abs=tol)
    assert len(service["shots"]) == len(local["shots"])
    for s_shot, l_shot in zip(service["shots"], local["shots"], strict=True):
        assert (s_shot["start_s"], s_shot["end_s"]) == (l_shot["start_s"], l_shot["end_s"])
        assert len(s_shot["clusters"]) == len(l_shot["clusters"])
        for s_c, l_c in zip(s_shot["clusters"], l_shot["clusters"], strict=True):
            assert s_c["score"] == pytest.approx(l_c["score"], abs=tol)
            assert len(s_c["faces"]) == len(l_c["faces"])
            for s_f, l_f in zip(s_c["faces"], l_c["faces"], strict=True):
                assert s_f["frame_index"] == l_f["frame_index"]
                assert s_f["box"] == pytest.approx(l_f["box"], abs=1.0)
                assert s_f["score"] == pytest.approx(l_f["score"], abs=tol)
                for name, p in l_f["member_scores"].items():
                    assert s_f["member_scores"][name] == pytest.approx(p, abs=tol)
    assert service["models"] == local["models"]
    assert service["methods"] == local["methods"]
    assert service["warnings"] == local["warnings"]


def local_result(analyzer: Analyzer, path: Path) -> dict[str, Any]:
    """``dfd analyze``'s result, computed with one torch thread like the replicas: Ray gives
    fractional-CPU actors OMP_NUM_THREADS=1, and the thread count changes the order of float
    reductions (measured: up to 1e-4 on these tiny random-headed models)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return analyzer.analyze_file(path, MemorySink()).model_dump(mode="json")
    finally:
        torch.set_num_threads(threads)


def test_image_upload_end_to_end_equals_dfd_analyze(
    serve_app: ServeApp, shared_data: Path, local_analyzer: Analyzer
) -> None:
    path = shared_data / IMAGE
    with serve_app.client() as http:
        r = http.post(
            "/v1/jobs",
            files={"file": (path.name, path.read_bytes(), "image/jpeg")},
            params={"force": "true"},
        )
        assert r.status_code == 202, r.text
        created = r.json()
        assert created["url"] == f"{serve_app.base_url}/v1/jobs/{created['id']}"
        assert r.headers["location"] == created["url"]
        job = wait_job(http, created["id"])
        assert job["status"] == "done", job
        result = http.get(f"/v1/jobs/{created['id']}/result").json()
        assert_same_analysis(result, local_result(local_analyzer, path))
        assert result["source"]["path"] == path.name  # the upload's name, not a server path
        # Every artefact is an absolute URL under the service, and it is served.
        shot = result["shots"][0]
        for url in [shot["gallery"], shot["thumbnail"], *(c["collage"] for c in shot["clusters"])]:
            assert url.startswith(f"{serve_app.base_url}/v1/jobs/{created['id']}/artefacts/")
            got = http.get(url)
            assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
            assert got.content[:3] == b"\xff\xd8\xff"


@pytest.fixture(scope="module")
def media() -> Any:
    with LoopbackServer() as server:
        yield server


def test_video_url_end_to_end_equals_dfd_analyze(
    serve_app: ServeApp, shared_data: Path, local_analyzer: Analyzer, media: LoopbackServer
) -> None:
    path = shared_data / VIDEO
    url = media.route("/e2e/d0.mp4", file_response(path, "video/mp4"))
    with serve_app.client() as http:
        r = http.post("/v1/jobs", json={"url": url, "force": True})
        assert r.status_code == 202
        job_id = r.json()["id"]
        stages: list[str] = []

        def done() -> dict[str, Any] | None:
            body = http.get(f"/v1/jobs/{job_id}").json()
            stages.append(body["progress"]["stage"])
            return body if body["status"] in ("done", "failed") else None

        job = wait_for(done, timeout=120, interval=0.05)
        assert job["status"] == "done", job
        assert job["progress"] == {"stage": "done", "done": 1, "total": 1}
        assert set(stages) & {"downloading", "segmenting", "detecting faces", "scoring"}
        result = http.get(f"/v1/jobs/{job_id}/result").json()
        assert result["source"]["url"] == url
        assert "download" in result["timings"]
        assert_same_analysis(result, local_result(local_analyzer, path))
        # The analysed video is kept and served with Range (a player seeks).
        data = path.read_bytes()
        src = f"/v1/jobs/{job_id}/artefacts/source.mp4"
        part = http.get(src, headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206 and part.content == data[1000:2000]
        assert part.headers["content-type"] == "video/mp4"


def test_cache_hit_skips_work_and_force_reanalyses(
    serve_app: ServeApp, shared_data: Path, media: LoopbackServer
) -> None:
    path = shared_data / "faces" / "fr_obama.jpg"
    url = media.route("/cache/obama.jpg", file_response(path, "image/jpeg"))
    with serve_app.client() as http:
        first = http.post("/v1/jobs", json={"url": url}).json()
        assert first["cached"] is False
        assert wait_job(http, first["id"])["status"] == "done"
        assert media.hits("/cache/obama.jpg") == 1
        result = http.get(f"/v1/jobs/{first['id']}/result").json()
        runner_before = metric(http, 'dfd_runner_jobs{outcome="claimed"}')
        # The same URL, spelled differently (normalised), and the same bytes uploaded.
        again = http.post("/v1/jobs", json={"url": url.replace("http://", "HTTP://")}).json()
        upload = http.post(
            "/v1/jobs", files={"file": ("same.jpg", path.read_bytes(), "image/jpeg")}
        ).json()
        for hit in (again, upload):
            assert hit["cached"] is True and hit["status"] == "done"
            view = http.get(f"/v1/jobs/{hit['id']}").json()
            assert view["attempts"] == 0 and view["cached"] is True
            cached = http.get(f"/v1/jobs/{hit['id']}/result").json()
            assert cached["created_at"] == result["created_at"]  # the stored result itself
            assert cached["score"] == result["score"]
            assert cached["shots"][0]["gallery"].startswith(
                f"{serve_app.base_url}/v1/jobs/{hit['id']}/"
            )
            assert http.get(cached["shots"][0]["gallery"]).status_code == 200
        assert media.hits("/cache/obama.jpg") == 1  # nothing was downloaded again
        assert metric(http, 'dfd_runner_jobs{outcome="claimed"}') == runner_before
        forced = http.post("/v1/jobs", json={"url": url, "force": True}).json()
        assert forced["cached"] is False
        assert wait_job(http, forced["id"])["status"] == "done"
        assert media.hits("/cache/obama.jpg") == 2
        assert (
            http.get(f"/v1/jobs/{forced['id']}/result").json()["created_at"] != result["created_at"]
        )


def metric(http: httpx.Client, name: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"metric {name} not exported")


def test_twenty_concurrent_submissions_all_complete(serve_app: ServeApp, shared_data: Path) -> None:
    images = sorted((shared_data / "faces").glob("*.jpg"))[:5]
    assert len(images) == 5

    def submit(i: int) -> str:
        path = images[i % len(images)]
        with serve_app.client() as http:
            r = http.post(
                "/v1/jobs",
                params={"force": "true"},
                files={"file": (path.name, path.read_bytes(), "image/jpeg")},
            )
            assert r.status_code == 202, r.text
            return str(r.json()["id"])

    with ThreadPoolExecutor(20) as pool:
        ids = list(pool.map(submit, range(20)))
    assert len(set(ids)) == 20
    with serve_app.client() as http:
        finals = [wait_job(http, job_id, timeout=180) for job_id in ids]
    assert [f["status"] for f in finals] == ["done"] * 20


def test_a_job_left_running_by_a_dead_runner_is_recovered(
    serve_app: ServeApp, shared_data: Path, media: LoopbackServer
) -> None:
    url = media.route("/recover/two.jpg", file_response(shared_data / IMAGE, "image/jpeg"))
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    store = SQLiteJobStore(serve_app.config.sqlite_path)
    orphan = Job(
        id="orphan-of-a-dead-runner",
        source=url,
        source_key=f"url:{url}",
        status=JobStatus.RUNNING,
        attempts=1,
        created_at=an_hour_ago,
        updated_at=an_hour_ago,
    )
    store.create(orphan)
    with serve_app.client() as http:
        job = wait_job(http, orphan.id, timeout=60)
    assert job["status"] == "done" and job["attempts"] == 2


def test_model_deployments_are_placed_with_fractional_gpus(serve_app: ServeApp) -> None:
    import ray
    from ray import serve

    from serve.app import APP_NAME

    names = model_deployment_names(serve_app.config)
    assert len(names) == 8
    status = serve.status().applications[APP_NAME]
    placements = []
    for name in names:
        assert status.deployments[name].status == "HEALTHY"
        assert status.deployments[name].replica_states == {"RUNNING": 1}
        handle = serve.get_deployment_handle(name, app_name=APP_NAME)
        placements.append(handle.placement.remote().result(timeout_s=30))
    d = serve_app.config.deployments
    expected = {
        "FaceDetector": d.detector.num_gpus,
        "FaceEmbedder": d.embedder.num_gpus,
        "RegionFeatures": d.features.num_gpus,
    }
    total = 0.0
    for p in placements:
        gpu = p["resources"].get("GPU", 0.0)
        assert 0 < gpu < 1, p
        assert gpu == pytest.approx(expected.get(p["deployment"], d.members.num_gpus))
        assert p["gpu_ids"] == ["0"]
        total += gpu
    assert total <= 1.0
    assert ray.available_resources().get("GPU", 0.0) == pytest.approx(1.0 - total, abs=1e-6)
    # The runner and the ingress need no GPU.
    runner = serve.get_deployment_handle("JobRunner", app_name=APP_NAME)
    assert "GPU" not in runner.placement.remote().result(timeout_s=30)["resources"]


def test_the_benchmark_finds_every_model_replica_and_its_memory(serve_app: ServeApp) -> None:
    """``dfd bench serve``'s memory table: each of the eight model replicas of the running
    application, by deployment, with its resident memory split by kind."""
    from bench.serve import replica_memory

    rows = replica_memory(model_deployment_names(serve_app.config))
    assert {r["deployment"] for r in rows if r["model"]} == set(
        model_deployment_names(serve_app.config)
    )
    assert {"JobRunner", "Ingress"} <= {r["deployment"] for r in rows if not r["model"]}
    for r in rows:
        assert r["rss"] >= r["anon"] > 0 and r["file"] > 0, r


def test_members_cut_their_squares_from_one_shared_copy_of_the_crops(
    serve_app: ServeApp, shared_data: Path, local_models: LocalModels
) -> None:
    """The crops of an ensemble call are put in the object store once for the five members:
    a member given crops cut wider than it needs (here twice its margin) cuts its own centred
    square on its replica and answers what it answers to that square sent to it directly; and
    the ensemble's probabilities are the same whether the crops are shared or copied to each
    member."""
    import asyncio

    import ray
    from ray import serve

    from pipeline.faces import crop
    from pipeline.media import load_image
    from pipeline.models.member import member_crops
    from serve.app import APP_NAME
    from serve.remote_models import RemoteModels, SharedCrops

    frame = load_image(shared_data / IMAGE)
    crops = [crop(frame, d) for d in local_models.detect_faces([frame])[0]]
    assert len(crops) == 2
    names = model_deployment_names(serve_app.config)
    handles = [serve.get_deployment_handle(n, app_name=APP_NAME) for n in names]
    members = handles[3:]
    margin = local_models.ensemble.members[0].info.crop_margin
    shared = SharedCrops(ray.put(crops), 2 * margin)
    own = list(member_crops(crops, margin, 2 * margin))
    assert own[0].shape[0] < crops[0].shape[0]
    for handle in members:
        cut_there = handle.predict_shared.remote(shared).result(timeout_s=60)
        cut_here = handle.predict.remote(own).result(timeout_s=60)
        np.testing.assert_allclose(cut_there, cut_here, atol=1e-6)

    def connect(share: bool) -> RemoteModels:
        return asyncio.run(RemoteModels.connect(*handles[:3], members, share_member_crops=share))

    one_copy = connect(True).score_faces(crops)
    five_copies = connect(False).score_faces(crops)
    np.testing.assert_allclose(one_copy.probability, five_copies.probability, atol=1e-6)
    np.testing.assert_allclose(
        one_copy.member_probabilities, local_models.score_faces(crops).member_probabilities,
        atol=1e-4,
    )  # fmt: skip


def ray_series(text: str, name: str, **tags: str) -> float:
    """The sum of the exported series ``name`` whose tags include ``tags`` (0 if none)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in tags.items()):
            total += float(line.rsplit(" ", 1)[-1])
    return total


def test_service_metrics_are_exported_through_ray_serve(
    serve_app: ServeApp, shared_data: Path
) -> None:
    """The service's own metrics go through Serve's metrics API: the node's metrics agent
    exports them tagged with application, deployment and replica (what a Prometheus scraping
    every node adds up), the ingress's requests and the runner's finished jobs, stage seconds,
    faces and queue; ``/metrics`` stays for the embedded default."""
    import ray

    from serve.app import APP_NAME

    (node,) = ray.nodes()
    endpoint = f"http://127.0.0.1:{node['MetricsExportPort']}/metrics"
    path = shared_data / IMAGE
    with serve_app.client() as http:
        r = http.post("/v1/jobs", files={"file": (path.name, path.read_bytes(), "image/jpeg")},
                      params={"force": "true"})  # fmt: skip
        assert wait_job(http, r.json()["id"])["status"] == "done"
        assert "dfd_http_requests_total{" in http.get("/metrics").text  # the embedded view
    tags = {"application": APP_NAME}
    runner = {**tags, "deployment": "JobRunner"}

    def exported() -> str | None:
        text = httpx.get(endpoint, timeout=10).text
        ready = (
            ray_series(text, "ray_dfd_jobs_finished_total", outcome="done", **runner) >= 1
            and ray_series(text, "ray_dfd_http_requests_total", deployment="Ingress", **tags) >= 1
            and ray_series(text, "ray_dfd_jobs_in_store", status="done", **runner) >= 1
        )
        return text if ready else None

    text = wait_for(exported, timeout=90, interval=2)
    assert ray_series(text, "ray_dfd_faces_analysed_total", **runner) >= 2
    assert ray_series(text, "ray_dfd_stage_seconds_count", stage="faces", **runner) >= 1
    submitted = ray_series(text, "ray_dfd_jobs_submitted_total", api="v1", cached="false", **tags)
    assert submitted >= 1
    assert 'replica="' in text and "ray_dfd_jobs_finished_total{" in text


def test_access_keys_and_rate_limits(serve_app: ServeApp) -> None:
    keys = serve_app.config.open_key_store()
    _slow_id, slow = keys.create_key("slow", rate_per_min=2)
    gone_id, gone = keys.create_key("gone")
    keys.revoke(gone_id)
    with serve_app.client(key=None) as anon:
        r = anon.get("/v1/version")
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
        assert anon.get("/healthz").status_code == 200  # health needs no key
    with serve_app.client(key=gone) as revoked:
        assert revoked.get("/v1/version").status_code == 401
    with serve_app.client(key=slow) as http:
        assert [http.get("/v1/version").status_code for _ in range(2)] == [200, 200]
        r = http.get("/v1/version")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["type"].endswith("/rate-limited")
    with serve_app.client() as http:
        assert http.get("/v1/nowhere").json()["type"].endswith("/not-found")
        assert http.post("/v1/jobs", json={"url": "file:///etc/passwd"}).status_code == 400
        docs = http.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()


# ---------------------------------------------------------------------------------------------
# The InVID-WeVerify plug-in, driven as its client code drives the MeVer API


def plugin_poll(http: httpx.Client, route: str, job_id: str, timeout: float = 120) -> str:
    """GET {BASE}<route>/jobs/{id} every second until COMPLETED (any other status but
    PROCESSING stops the plug-in)."""
    deadline = time.monotonic() + timeout
    while True:
        r = http.get(f"/mever/{route}/jobs/{job_id}")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        body = r.json()
        assert set(body) == {"id", "status"} and body["id"] == job_id
        if body["status"] != "PROCESSING":
            return str(body["status"])
        assert time.monotonic() < deadline, "the plug-in would still be waiting"
        time.sleep(1.0)


def check_video_report(http: httpx.Client, report: dict[str, Any], base: str) -> None:
    assert set(report) == {"prediction", "video_path", "results"}
    assert 0.0 <= report["prediction"] <= 1.0
    assert report["prediction"] in [s["prediction"] for s in report["results"]]
    assert report["video_path"].startswith(base)
    video = http.get(report["video_path"], headers={"Range": "bytes=0-99"})
    assert video.status_code == 206 and len(video.content) == 100
    for shot in report["results"]:
        assert set(shot) == {
            "shot_start",
            "shot_end",
            "shot_image",
            "prediction",
            "face_image_paths",
            "face_predictions",
        }
        assert isinstance(shot["shot_start"], float) and shot["shot_end"] >= shot["shot_start"]
        assert 0.0 <= shot["prediction"] <= 1.0
        assert len(shot["face_image_paths"]) == len(shot["face_predictions"])
        for url in [shot["shot_image"], *shot["face_image_paths"]]:
            assert url.startswith(base)
            got = http.get(url)
            assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"


def test_mever_plugin_video_by_url(
    serve_app: ServeApp, shared_data: Path, media: LoopbackServer
) -> None:
    url = media.route("/mever/d0.mp4", file_response(shared_data / VIDEO, "video/mp4"))
    headers = {"Origin": PLUGIN_ORIGIN}
    base = f"{serve_app.base_url}/mever/artefacts/"
    with httpx.Client(base_url=serve_app.base_url, headers=headers, timeout=60) as http:
        r = http.post(
            "/mever/videos/jobs", params={"url": url, "services": "deepfake_video,faceswap_fsfm"}
        )
        assert 200 <= r.status_code < 300 and r.headers["content-type"] == "application/json"
        job_id = r.json()["id"]
        assert re.fullmatch(r"[A-Za-z0-9_-]+", job_id)
        assert plugin_poll(http, "videos", job_id) == "COMPLETED"
        r = http.get(f"/mever/videos/reports/{job_id}")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        reports = r.json()
        assert set(reports) == {"deepfake_video_report", "faceswap_fsfm_report"}
        for report in reports.values():
            check_video_report(http, report, base)
        # The same prediction the /v1 result gives.
        with serve_app.client() as v1:
            result = v1.get(f"/v1/jobs/{job_id}/result").json()
        assert reports["deepfake_video_report"]["prediction"] == pytest.approx(result["score"])


def test_mever_plugin_image_by_file_upload(serve_app: ServeApp, shared_data: Path) -> None:
    path = shared_data / IMAGE
    with httpx.Client(base_url=serve_app.base_url, timeout=60) as http:
        r = http.post(
            "/mever/images/jobs",
            params={"services": "faceswap_ens_mever"},
            files={"file": (path.name, path.read_bytes(), "image/jpeg")},
        )
        assert 200 <= r.status_code < 300
        job_id = r.json()["id"]
        assert plugin_poll(http, "images", job_id) == "COMPLETED"
        reports = http.get(f"/mever/images/reports/{job_id}").json()
    assert set(reports) == {"faceswap_ens_mever_report"}
    report = reports["faceswap_ens_mever_report"]
    assert set(report) == {"prediction", "info"} and len(report["info"]) == 2
    for face in report["info"]:
        assert set(face) == {"bbox", "prediction"}
        box = face["bbox"]
        assert set(box) == {"top", "left", "bottom", "right"}
        assert 0 <= box["left"] < box["right"] <= 1 and 0 <= box["top"] < box["bottom"] <= 1
    assert report["prediction"] == pytest.approx(max(f["prediction"] for f in report["info"]))


def test_mever_plugin_accepts_uploads_of_15_mb(serve_app: ServeApp, tmp_path: Path) -> None:
    """A 16 MB upload (an incompressible PNG) is accepted and analysed."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(2400, 2400, 3), dtype=np.uint8)
    ok, png = cv2.imencode(".png", noise, [cv2.IMWRITE_PNG_COMPRESSION, 0])
    assert ok and png.nbytes >= 15 * 1024 * 1024
    with httpx.Client(base_url=serve_app.base_url, timeout=120) as http:
        r = http.post("/mever/images/jobs", files={"file": ("big.png", png.tobytes(), "image/png")})
        assert 200 <= r.status_code < 300, r.text
        job_id = r.json()["id"]
        assert plugin_poll(http, "images", job_id) == "COMPLETED"
        report = http.get(f"/mever/images/reports/{job_id}").json()["faceswap_ens_mever_report"]
    assert report["prediction"] == 0.0 and report["info"] == []  # noise has no face
