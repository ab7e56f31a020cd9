"""``dfd bench cluster``: image jobs through the service on 1, 2, 3... Ray nodes of this machine,
where the time goes, and an estimate of videos per hour per GPU on a real cluster.

Every node declares the same CPUs and one GPU; with N nodes the application runs N replicas of
the runner and of every model deployment (one set of models per GPU, as on a GPU cluster: the
eight GPU fractions add up to 0.95, so Ray can place only one set per declared GPU). The nodes
share this machine's cores, so absolute speed is capped by the cores: the ratios between node
counts and the split of the time between stages are what the benchmark tells.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict
from rich.table import Table

from bench.harness import err_console, out_console, write_json
from bench.http_load import serve_round
from pipeline.errors import ConfigError

#: Stages whose work runs on the model deployments (GPU on a GPU cluster). ``faces`` also holds
#: the decoding of sampled frames (CPU), so the GPU side of the estimate is an upper bound.
MODEL_STAGES = ("segmentation", "faces", "tracks", "scoring")


class ClusterBenchSettings(BaseModel):
    """What ``dfd bench cluster`` measures (its options; the defaults are the command line's)."""

    model_config = ConfigDict(extra="forbid")

    #: Node counts, one local cluster each.
    nodes: list[int]
    model_dir: Path | None = None
    #: The image every job submits.
    image: Path
    #: The video whose stage seconds feed the estimate.
    video: Path
    backend: str
    #: Logical CPUs each node declares.
    cpus_per_node: float
    #: Image jobs per node count, from ``concurrency`` clients.
    jobs: int
    concurrency: int
    #: Jobs per runner replica.
    runner_concurrency: int
    #: Estimate: model stages this much faster on a GPU (assumed).
    gpu_speedup: float
    #: Estimate: cores per GPU node.
    cpus_per_gpu_node: int
    #: Estimate for these GPU counts.
    estimate_gpus: list[int]
    json_out: Path | None = None


def _config(
    nodes: int, model_dir: Path | None, backend: str, runner_concurrency: int, home: Path
) -> Any:
    from pipeline.analyze import AnalysisSettings
    from pipeline.models import InferenceSettings
    from serve.config import AuthSettings, DeploymentsConfig, JobSettings, ServiceConfig

    base = DeploymentsConfig()
    per_node = {"num_replicas": nodes, "num_cpus": 0.25, "autoscaling": None}
    deployments = base.model_copy(
        update={
            "ingress": base.ingress.model_copy(update={"num_replicas": 1, "num_cpus": 0.1}),
            **{
                name: getattr(base, name).model_copy(update=per_node)
                for name in ("runner", "detector", "embedder", "features", "members")
            },
        }
    )
    analysis = AnalysisSettings(
        inference=InferenceSettings.model_validate({"model_dir": model_dir, "backend": backend}),
        shot_workers=4,
    )
    return ServiceConfig(
        home=home,
        auth=AuthSettings(mode="off", anonymous_rate_per_min=1_000_000),
        jobs=JobSettings(concurrency=runner_concurrency, max_queued_jobs=100_000),
        gpus="on",
        analysis=analysis,
        deployments=deployments,
    ).resolved()


def _stage_seconds(base: str, job_ids: Sequence[str]) -> dict[str, float]:
    """Mean seconds per job of each analysis stage (the results' ``timings``)."""
    totals: dict[str, float] = defaultdict(float)
    with httpx.Client(base_url=base, timeout=60) as http:
        for job_id in job_ids:
            timings = http.get(f"/v1/jobs/{job_id}/result").json().get("timings", {})
            for stage, seconds in timings.items():
                totals[stage] += float(seconds)
    n = max(len(job_ids), 1)
    return {stage: s / n for stage, s in sorted(totals.items())}


def _video_round(base: str, video: Path) -> dict[str, Any]:
    """One video job (upload) on an idle service: its stage seconds, duration and shots."""
    with httpx.Client(base_url=base, timeout=600) as http:
        r = http.post(
            "/v1/jobs",
            params={"force": "true"},
            files={"file": (video.name, video.read_bytes(), "video/mp4")},
        )
        r.raise_for_status()
        job_id = r.json()["id"]
        t0 = time.perf_counter()
        while True:
            job = http.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        if job["status"] != "done":
            raise RuntimeError(f"the benchmark video failed: {job.get('error')}")
        result = http.get(f"/v1/jobs/{job_id}/result").json()
    return {
        "video": str(video),
        "duration_s": float(result["source"].get("duration_s") or 0.0),
        "shots": len(result["shots"]),
        "faces": int(result["faces_total"]),
        "wall_s": wall,
        "stages_s": dict(result["timings"]),
    }


def _placement() -> dict[str, dict[str, int]]:
    from serve.app import APP_NAME
    from serve.status import read_status

    st = read_status(APP_NAME)
    return {d.name: d.replicas_per_node() for d in st.deployments}


def estimate(
    video: dict[str, Any],
    scaling: float,
    gpu_speedup: float,
    cpus_per_gpu_node: int,
    gpus: Sequence[int],
) -> list[dict[str, float]]:
    """Videos per hour per GPU and for N GPUs, from one video's measured stage seconds.

    Model stages are divided by ``gpu_speedup`` (GPU vs this CPU, an assumption the user
    states); the other stages stay on the node's ``cpus_per_gpu_node`` cores, which work on that
    many videos at once. A node's rate is set by the slower side. N GPU nodes multiply it by N
    times ``scaling``: the throughput of the largest local cluster over one node's on the same
    cores, i.e. what spreading the work over nodes costs (capped at 1; the head's ingress and
    Redis are assumed not to be the limit, which this machine cannot test).
    """
    stages = video["stages_s"]
    model_s = sum(stages.get(s, 0.0) for s in MODEL_STAGES) / gpu_speedup
    cpu_s = sum(v for s, v in stages.items() if s not in MODEL_STAGES)
    per_video_s = max(model_s, cpu_s / max(cpus_per_gpu_node, 1), 1e-9)
    per_gpu = 3600.0 / per_video_s
    return [
        {
            "gpus": n,
            "model_s_per_video": model_s,
            "cpu_s_per_video": cpu_s,
            "videos_per_hour_per_gpu": per_gpu * (scaling if n > 1 else 1.0),
            "videos_per_hour": per_gpu * n * (scaling if n > 1 else 1.0),
        }
        for n in gpus
    ]


def bench_cluster(settings: ClusterBenchSettings) -> dict[str, Any]:
    """One round of image jobs per node count (and the video on the smallest cluster); print
    the tables and the estimate, return the figures."""
    s = settings
    tmp = Path(tempfile.gettempdir())
    d = _config(1, s.model_dir, s.backend, s.runner_concurrency, tmp).deployments
    per_set = sum(
        getattr(d, name).num_cpus
        for name in ("runner", "detector", "embedder", "features", *["members"] * 5)
    )
    if per_set + d.ingress.num_cpus > s.cpus_per_node:
        raise ConfigError(
            f"one set of replicas asks for {per_set + d.ingress.num_cpus:g} CPUs: give each node "
            f"at least that many (--cpus-per-node), or Serve waits forever to place them"
        )
    data = s.image.read_bytes()
    figures: dict[str, Any] = {"image": str(s.image), "rounds": []}
    for n in s.nodes:
        row = _cluster_round(s, n, data, figures)
        figures["rounds"].append(row)
        out_console.print(
            f"{n} node(s): {row['jobs_per_s']:.2f} jobs/s, p50 {row['p50_s']:.2f} s "
            f"({row['done']}/{row['jobs']} done)"
        )
    _report(figures, s.gpu_speedup, s.cpus_per_gpu_node, s.estimate_gpus)
    write_json(s.json_out, figures)
    return figures


def _cluster_round(
    s: ClusterBenchSettings, n: int, data: bytes, figures: dict[str, Any]
) -> dict[str, Any]:
    """``n`` nodes: start them, deploy, (on the smallest cluster) time the video into
    ``figures["video"]``, then the image jobs; returns the round's row."""
    from ray import serve

    from bench.localcluster import deploy, free_port, local_cluster
    from serve.app import build_app

    home = Path(tempfile.mkdtemp(prefix=f"dfd-bench-cluster-{n}-"))
    cfg = _config(n, s.model_dir, s.backend, s.runner_concurrency, home)
    with err_console.status(f"{n} node(s): starting Ray and deploying the service"):
        t0 = time.perf_counter()
        with local_cluster(n, cpus_per_node=s.cpus_per_node) as _:
            try:
                base = deploy(build_app(cfg), free_port())
                startup = time.perf_counter() - t0
                if n == min(s.nodes):
                    figures["video"] = _video_round(base, s.video)
                serve_round(base, data, s.image.name, 2, 4, 0.05)  # warm-up
                row = serve_round(base, data, s.image.name, s.concurrency, s.jobs, 0.1)
                row.update(
                    nodes=n,
                    startup_s=startup,
                    stages_s=_stage_seconds(base, row.pop("job_ids")),
                    placement=_placement(),
                )
            finally:
                serve.shutdown()
    return row


def _report(
    figures: dict[str, Any], gpu_speedup: float, cpus_per_gpu_node: int, gpus: Sequence[int]
) -> None:
    rounds = figures["rounds"]
    first = rounds[0]
    stages = sorted({s for r in rounds for s in r["stages_s"]})
    table = Table(title=f"image jobs on local Ray clusters ({Path(figures['image']).name})")
    for col in ("nodes", "jobs", "jobs/s", "vs 1 node", "p50 s", "p99 s", "start s"):
        table.add_column(col, justify="right")
    table.add_column("member replicas per node")
    where = Table(title="seconds per image job in each stage (summed over the job's threads)")
    where.add_column("nodes", justify="right")
    for stage in stages:
        where.add_column(stage, justify="right")
    for r in rounds:
        members = [v for k, v in r["placement"].items() if k.startswith("Member_")]
        per_node: dict[str, int] = defaultdict(int)
        for m in members:
            for node, count in m.items():
                per_node[node[:6]] += count
        table.add_row(
            str(r["nodes"]),
            f"{r['done']}/{r['jobs']}",
            f"{r['jobs_per_s']:.2f}",
            f"{r['jobs_per_s'] / first['jobs_per_s']:.2f}",
            f"{r['p50_s']:.2f}",
            f"{r['p99_s']:.2f}",
            f"{r['startup_s']:.0f}",
            ", ".join(f"{k} x{v}" for k, v in sorted(per_node.items())),
        )
        where.add_row(str(r["nodes"]), *(f"{r['stages_s'].get(s, 0.0):.3f}" for s in stages))
    out_console.print(table)
    out_console.print(where)
    last = rounds[-1]
    # The nodes share this machine's cores: total capacity is constant, so the ratio measures
    # the cost of spreading the work over nodes, not a speed-up.
    scaling = min(1.0, last["jobs_per_s"] / first["jobs_per_s"])
    figures["scaling_efficiency"] = scaling
    video = figures.get("video")
    if video is None:
        return
    out_console.print(
        f"video {Path(video['video']).name}: {video['duration_s']:.1f} s, {video['shots']} "
        f"shot(s), {video['faces']} faces, {video['wall_s']:.1f} s end to end; stage seconds "
        + ", ".join(f"{k} {v:.2f}" for k, v in video["stages_s"].items())
    )
    rows = estimate(video, scaling, gpu_speedup, cpus_per_gpu_node, gpus)
    figures["estimate"] = {
        "gpu_speedup": gpu_speedup,
        "cpus_per_gpu_node": cpus_per_gpu_node,
        "scaling_efficiency": scaling,
        "rows": rows,
    }
    est = Table(
        title=f"estimate: model stages {gpu_speedup:g}x faster on a GPU than here (assumed), "
        f"{cpus_per_gpu_node} cores per GPU node, throughput kept when spread over nodes "
        f"{scaling:.2f} (measured)"
    )
    for col in ("GPUs", "model s/video", "CPU s/video", "videos/h per GPU", "videos/h"):
        est.add_column(col, justify="right")
    for r in rows:
        est.add_row(
            str(r["gpus"]),
            f"{r['model_s_per_video']:.2f}",
            f"{r['cpu_s_per_video']:.2f}",
            f"{r['videos_per_hour_per_gpu']:.0f}",
            f"{r['videos_per_hour']:.0f}",
        )
    out_console.print(est)
