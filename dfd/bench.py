"""``dfd bench``: repeatable benchmarks (never timed tests).

Each benchmark measures side by side in one run, excludes warm-up, reports model loading apart and
peak RSS per configuration (each configuration runs in its own spawned process, so one's memory
does not hide in another's).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, get_args

import numpy as np
import typer
from rich.table import Table

from dfd.common import BackendOpt, EnsembleOpt, cli_errors, out_console

app = typer.Typer(
    help="Benchmarks (figures for the closing notes and the README).", no_args_is_help=True
)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _bench_faces(n: int, seed: int = 0) -> list[np.ndarray]:
    """Face-sized uint8 crops of varied sizes: smooth structure plus pixel noise.

    Speed does not depend on content, agreement does: untrained members are calibrated on such
    images (``calibrate_untrained``) and well-conditioned on them, while on white noise their
    float32 logits are chaotic (eager float32 and float64 disagree in sign), which would make the
    backends' ``max |dp|`` meaningless.
    """
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for h, w in rng.integers(160, 400, size=(n, 2)):
        base = rng.uniform(0, 255, size=(6, 6, 3)).astype(np.float32)
        smooth = np.asarray(cv2.resize(base, (int(w), int(h)), interpolation=cv2.INTER_LINEAR))
        noisy = smooth + rng.normal(0, 0.15 * 255, size=smooth.shape)
        out.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return out


def _models_worker(cfg: dict[str, Any], conn: Any) -> None:
    """One backend's ensemble in its own process, timing a pass over the faces on each request.

    Protocol over ``conn``: sends the load figures once loaded; then each batch size received
    answers with one timed pass's faces/s (a warm-up pass precedes the first at each size);
    ``None`` answers with the final figures and ends the process.
    """
    import torch

    from pipeline.models import Ensemble, InferenceSettings

    if cfg["torch_threads"]:
        torch.set_num_threads(cfg["torch_threads"])
    t0 = time.perf_counter()
    settings = InferenceSettings(
        model_dir=cfg["model_dir"],
        backend=cfg["backend"],
        device=cfg["device"],
        batch_size=1,
        member_workers=cfg["member_workers"],
        ensemble=cfg["ensemble"],
    )
    ensemble = Ensemble.load(settings)
    conn.send({"load_s": time.perf_counter() - t0, "rss_loaded_mb": _peak_rss_mb()})
    faces = _bench_faces(cfg["faces"])
    warm: set[int] = set()
    probability: list[float] = []
    while (bs := conn.recv()) is not None:
        ensemble.settings.batch_size = bs
        if bs not in warm:
            ensemble.predict(faces[:bs])
            warm.add(bs)
        t = time.perf_counter()
        pred = ensemble.predict(faces)
        conn.send(len(faces) / (time.perf_counter() - t))
        probability = pred.probability.tolist()
    conn.send(
        {
            "peak_rss_mb": _peak_rss_mb(),
            "probability": probability,
            "members": [m.name for m in ensemble.members],
            "workers": ensemble.workers,
            "weights": sorted({m.info.weights for m in ensemble.members}),
        }
    )


def _recv(conn: Any, backend: str) -> Any:
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError(
            f"the benchmark process for backend {backend!r} died (its traceback is above)"
        ) from None


def _bench_models_interleaved(
    cfgs: list[dict[str, Any]], sizes: list[int], repeats: int
) -> list[dict[str, Any]]:
    """Load each backend in its own process (one after another), then time them in turns.

    Taking turns puts every backend under the same drift of a shared machine (on the 2-core
    development VM even a plain matmul varies by +-20% from second to second), so the ratios
    compare like with like; each process's RSS stays its own. All backends stay loaded at once.
    """
    ctx = mp.get_context("spawn")
    procs, conns, out = [], [], []
    try:
        for cfg in cfgs:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_models_worker, args=(cfg, child))
            proc.start()
            child.close()  # so that a worker's death reads as EOF here, not as a hang
            procs.append(proc)
            conns.append(parent)
            out.append({"backend": cfg["backend"], **_recv(parent, cfg["backend"])})
        for r in out:
            r["runs"] = [{"batch_size": bs, "faces_per_s_all": []} for bs in sizes]
        for i, bs in enumerate(sizes):
            for _ in range(repeats):
                for conn, r in zip(conns, out, strict=True):
                    conn.send(bs)
                    r["runs"][i]["faces_per_s_all"].append(_recv(conn, r["backend"]))
        for conn, r in zip(conns, out, strict=True):
            conn.send(None)
            r.update(_recv(conn, r["backend"]))
            for run in r["runs"]:
                run["faces_per_s"] = float(np.median(run["faces_per_s_all"]))
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.terminate()
    return out


def _run_isolated(target: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(cfg, queue))
    proc.start()
    result: dict[str, Any] = queue.get()
    proc.join()
    return result


@app.command()
@cli_errors
def models(
    model_dir: Annotated[
        Path | None, typer.Option(help="Model directory (default: the user's).")
    ] = None,
    backends: Annotated[
        str, typer.Option(help="Comma-separated backends; the first is the baseline.")
    ] = "torch,onnx,openvino",
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,4,8",
    faces: Annotated[int, typer.Option(help="Faces per timed run.")] = 16,
    repeats: Annotated[
        int, typer.Option(min=1, help="Timed runs per batch size; faces/s is their median.")
    ] = 3,
    ensemble: EnsembleOpt = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    torch_threads: Annotated[int, typer.Option(help="torch.set_num_threads (0: default).")] = 0,
    member_workers: Annotated[
        int,
        typer.Option(
            min=0,
            help="Members scored side by side by the CPU runtimes (0: auto, one per core; "
            "1: in turn, each on every core).",
        ),
    ] = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the figures as JSON.")
    ] = None,
) -> None:
    """Faces per second of the whole ensemble, per backend and batch size, and peak RSS.

    Each backend runs in its own process; the timed runs take turns across backends."""
    from pipeline.models.manifest import resolve_model_dir
    from pipeline.models.settings import Backend

    directory = resolve_model_dir(model_dir)
    sizes = [int(s) for s in batch_sizes.split(",")]
    unknown = set(backends.split(",")) - set(get_args(Backend))
    if unknown:
        raise typer.BadParameter(
            f"unknown backend(s) {sorted(unknown)}; choose from {get_args(Backend)}",
            param_hint="--backends",
        )
    cfgs = [
        {
            "model_dir": directory.root,
            "backend": backend,
            "device": device,
            "faces": faces,
            "torch_threads": torch_threads,
            "member_workers": member_workers,
            "ensemble": ensemble,
        }
        for backend in backends.split(",")
    ]
    out = _bench_models_interleaved(cfgs, sizes, repeats)
    base = out[0]
    base_best = max(run["faces_per_s"] for run in base["runs"])
    table = Table(
        title=f"ensemble throughput ({len(base['members'])} members, {faces} faces per run, "
        f"median of {repeats} interleaved runs)"
    )
    for col in (
        "backend",
        "batch",
        "faces/s",
        "min-max",
        f"x {base['backend']} best",
        "load s",
        "RSS loaded MB",
        "peak RSS MB",
        f"max |dp| vs {base['backend']}",
    ):
        table.add_column(col, justify="right")
    for r in out:
        diff = float(np.abs(np.array(r["probability"]) - np.array(base["probability"])).max())
        for run in r["runs"]:
            table.add_row(
                r["backend"],
                str(run["batch_size"]),
                f"{run['faces_per_s']:.2f}",
                f"{min(run['faces_per_s_all']):.2f}-{max(run['faces_per_s_all']):.2f}",
                f"{run['faces_per_s'] / base_best:.2f}",
                f"{r['load_s']:.1f}",
                f"{r['rss_loaded_mb']:.0f}",
                f"{r['peak_rss_mb']:.0f}",
                f"{diff:.1e}",
            )
    out_console.print(table)
    others = [(r, run) for r in out[1:] for run in r["runs"]]
    if others:
        r, run = max(others, key=lambda pair: pair[1]["faces_per_s"])
        out_console.print(
            f"fastest: {r['backend']} at batch {run['batch_size']}, "
            f"{run['faces_per_s'] / base_best:.2f}x {base['backend']}'s best"
        )
    out_console.print(
        f"weights: {base['weights']}; members: {', '.join(base['members'])}; CPU runtimes score "
        f"{out[-1]['workers']} member(s) at a time"
    )
    if json_out is not None:
        json_out.write_text(json.dumps(out, indent=2) + "\n")


DEFAULT_BENCH_VIDEOS = (
    "deepfake/dfdc_lynaeydofd.mp4",
    "deepfake/ffpp_c23_634_660.mp4",
    "deepfake/ffpp_c23_519_515.mp4",
    "videos/fr_short_hamilton_clip.mp4",
    "deepfake/dfdc_yhffcuhhjy.mp4",
)


def _analyze_worker(cfg: dict[str, Any], queue: Any) -> None:
    import torch

    from pipeline.analyze import AnalysisSettings, load_analyzer
    from pipeline.artefacts import MemorySink
    from pipeline.faces import FaceSettings
    from pipeline.models import InferenceSettings

    if cfg["torch_threads"]:
        torch.set_num_threads(cfg["torch_threads"])
    t0 = time.perf_counter()
    settings = AnalysisSettings(
        inference=InferenceSettings(model_dir=cfg["model_dir"], backend=cfg["backend"]),
        faces=FaceSettings(max_frames_per_shot=cfg["max_frames"]),
        galleries=cfg["galleries"],
    )
    analyzer = load_analyzer(settings)
    load_s = time.perf_counter() - t0
    rss_loaded = _peak_rss_mb()
    if cfg["warmup"]:
        analyzer.analyze(cfg["warmup"], MemorySink())
    rows = []
    for video in cfg["videos"]:
        t = time.perf_counter()
        result = analyzer.analyze(video, MemorySink())
        rows.append(
            {
                "video": Path(video).name,
                "seconds": time.perf_counter() - t,
                "duration_s": result.source.duration_s,
                "frames_in_video": result.source.frame_count,
                "frames_sampled": result.source.frames_sampled,
                "shots": len(result.shots),
                "faces": result.faces_total,
                "timings": result.timings,
            }
        )
    queue.put(
        {"load_s": load_s, "rss_loaded_mb": rss_loaded, "peak_rss_mb": _peak_rss_mb(), "rows": rows}
    )


@app.command()
@cli_errors
def analyze(
    videos: Annotated[
        list[Path] | None, typer.Argument(help="Videos (default: 5 from shared/data).")
    ] = None,
    data: Annotated[Path, typer.Option(help="The shared test media folder.")] = Path(
        "../shared/data"
    ),
    model_dir: Annotated[
        Path | None, typer.Option(help="Model directory (default: the user's).")
    ] = None,
    backend: BackendOpt = "auto",
    max_frames: Annotated[int, typer.Option(help="Sampled frames per shot (paper: 64).")] = 64,
    galleries: Annotated[bool, typer.Option(help="Render the pictures too.")] = True,
    growth: Annotated[
        str, typer.Option(help="Comma-separated minutes for the growth curve ('' to skip).")
    ] = "",
    growth_dir: Annotated[Path, typer.Option(help="Where synthetic videos are cached.")] = Path(
        "/tmp/dfd-bench-videos"
    ),
    torch_threads: Annotated[int, typer.Option(help="torch.set_num_threads (0: default).")] = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the figures as JSON.")
    ] = None,
) -> None:
    """Per-stage time, frames sampled versus frames in the video, peak RSS; growth over length.

    Each configuration runs in its own process after a warm-up analysis, so model loading and
    one-off costs are reported apart and peak RSS is that configuration's alone.
    """
    from evaluation.synthetic import concat_clips

    chosen = [str(v) for v in videos] if videos else [str(data / v) for v in DEFAULT_BENCH_VIDEOS]
    base = {
        "model_dir": model_dir,
        "backend": backend,
        "max_frames": max_frames,
        "galleries": galleries,
        "torch_threads": torch_threads,
        "warmup": str(data / "faces" / "fr_obama_small.jpg"),
    }
    figures: dict[str, Any] = {"videos": _run_isolated(_analyze_worker, {**base, "videos": chosen})}
    table = Table(title=f"dfd analyze per video (max {max_frames} frames per shot)")
    cols = (
        "video",
        "s",
        "s/video-s",
        "frames sampled/total",
        "shots",
        "faces",
        "where the time goes",
    )
    for col in cols:
        table.add_column(
            col, justify="left" if col in ("video", "where the time goes") else "right"
        )
    for row in figures["videos"]["rows"]:
        stages = sorted(row["timings"].items(), key=lambda kv: -kv[1])[:3]
        table.add_row(
            row["video"],
            f"{row['seconds']:.1f}",
            f"{row['seconds'] / (row['duration_s'] or 1):.2f}",
            f"{row['frames_sampled']}/{row['frames_in_video']}",
            str(row["shots"]),
            str(row["faces"]),
            ", ".join(f"{k} {v:.1f}s" for k, v in stages),
        )
    out_console.print(table)
    v = figures["videos"]
    total_s = sum(r["seconds"] for r in v["rows"])
    total_video = sum(r["duration_s"] or 0 for r in v["rows"])
    out_console.print(
        f"total {total_s:.1f} s for {total_video:.1f} s of video "
        f"({total_s / max(total_video, 1e-9):.2f} s per video-second); "
        f"model load {v['load_s']:.1f} s; "
        f"RSS after load {v['rss_loaded_mb']:.0f} MB, peak {v['peak_rss_mb']:.0f} MB"
    )
    if growth:
        sources = [data / p for p in DEFAULT_BENCH_VIDEOS] + [
            data / "videos" / "liveportrait_d12.mp4"
        ]
        curve = []
        for minutes in (float(m) for m in growth.split(",")):
            path = growth_dir / f"synthetic_{minutes:g}min_720p.mp4"
            if not path.exists():
                out_console.print(f"writing {path} ...")
                concat_clips(sources, path, minutes * 60)
            r = _run_isolated(_analyze_worker, {**base, "videos": [str(path)]})
            curve.append({"minutes": minutes, **r})
        figures["growth"] = curve
        g = Table(title="growth with video length (synthetic 720p, concatenated real clips)")
        for col in ("minutes", "s", "shots", "frames sampled", "peak RSS MB", "RSS vs first"):
            g.add_column(col, justify="right")
        first = curve[0]["peak_rss_mb"]
        for c in curve:
            row = c["rows"][0]
            g.add_row(
                f"{c['minutes']:g}",
                f"{row['seconds']:.1f}",
                str(row["shots"]),
                str(row["frames_sampled"]),
                f"{c['peak_rss_mb']:.0f}",
                f"{c['peak_rss_mb'] / first:.2f}",
            )
        out_console.print(g)
    if json_out is not None:
        json_out.write_text(json.dumps(figures, indent=2, default=str) + "\n")


# ---------------------------------------------------------------------------------------------
# dfd bench serve


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _serve_round(
    base: str, image: bytes, name: str, concurrency: int, jobs: int, poll_s: float
) -> dict[str, Any]:
    """``jobs`` forced image jobs from ``concurrency`` clients: throughput and latency.

    Latency is the job's own ``created_at -> updated_at`` when done (server clock, so the
    clients' polling interval does not blur it); throughput is jobs over client wall time.
    """
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    def one(_: int) -> tuple[float, float, str, str]:
        with httpx.Client(base_url=base, timeout=600) as http:
            t0 = time.perf_counter()
            r = http.post(
                "/v1/jobs", params={"force": "true"}, files={"file": (name, image, "image/jpeg")}
            )
            if r.status_code != 202:
                return float("nan"), time.perf_counter() - t0, f"http {r.status_code}", ""
            job_id = r.json()["id"]
            while True:
                job = http.get(f"/v1/jobs/{job_id}").json()
                if job["status"] in ("done", "failed", "cancelled"):
                    created = datetime.fromisoformat(job["created_at"])
                    updated = datetime.fromisoformat(job["updated_at"])
                    server_s = (updated - created).total_seconds()
                    return server_s, time.perf_counter() - t0, job["status"], job_id
                time.sleep(poll_s)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(one, range(jobs)))
    wall = time.perf_counter() - t0
    done = [o for o in outcomes if o[2] == "done"]
    latencies = [o[0] for o in done]
    return {
        "concurrency": concurrency,
        "jobs": jobs,
        "done": len(done),
        "jobs_per_s": len(done) / wall,
        "p50_s": _percentile(latencies, 50),
        "p99_s": _percentile(latencies, 99),
        "client_p50_s": _percentile([o[1] for o in done], 50),
        "job_ids": [o[3] for o in done],
    }


def _overload_round(
    base: str, image: bytes, name: str, requests: int, concurrency: int
) -> dict[str, Any]:
    """Fire ``requests`` submissions at once: how fast does the service say no?"""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    def one(_: int) -> tuple[int, float]:
        with httpx.Client(base_url=base, timeout=120) as http:
            t0 = time.perf_counter()
            r = http.post(
                "/v1/jobs", params={"force": "true"}, files={"file": (name, image, "image/jpeg")}
            )
            return r.status_code, time.perf_counter() - t0

    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(one, range(requests)))
    by_status: dict[str, list[float]] = {}
    for status, seconds in answers:
        by_status.setdefault(str(status), []).append(seconds)
    return {
        str(status): {
            "count": len(times),
            "p50_s": _percentile(times, 50),
            "p99_s": _percentile(times, 99),
            "max_s": max(times),
        }
        for status, times in sorted(by_status.items())
    }


@app.command()
@cli_errors
def serve(
    model_dir: Annotated[
        Path | None, typer.Option(help="Model directory (default: the user's).")
    ] = None,
    image: Annotated[
        Path | None, typer.Option(help="Image to submit (default: a face photo of ../shared/data).")
    ] = None,
    backend: BackendOpt = "auto",
    concurrency: Annotated[str, typer.Option(help="Comma-separated client counts.")] = "1,8,32",
    jobs_per_client: Annotated[int, typer.Option(help="Jobs per client at each concurrency.")] = 2,
    min_jobs: Annotated[int, typer.Option(help="At least this many jobs per round.")] = 12,
    runner_concurrency: Annotated[int, typer.Option(help="Jobs the runner analyses at once.")] = 4,
    overload_requests: Annotated[
        int, typer.Option(help="Submissions fired in the overload round.")
    ] = 200,
    in_process_runs: Annotated[int, typer.Option(help="Timed in-process analyses.")] = 10,
    torch_threads: Annotated[
        int, typer.Option(help="torch threads of the in-process analyzer (replicas get 1).")
    ] = 1,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the figures as JSON.")
    ] = None,
) -> None:
    """Image jobs through the service (local Ray + Serve, real HTTP on loopback): jobs/s and
    p50/p99 latency at each concurrency, with and without ``@serve.batch``; the same image
    through ``dfd analyze``'s in-process analyzer; and how fast the service refuses work
    beyond its capacity (429/503)."""
    import socket
    import tempfile

    from ray import serve as ray_serve

    from dfd.serve_cmd import start_service, stop_service
    from pipeline.analyze import AnalysisSettings, load_analyzer
    from pipeline.artefacts import MemorySink
    from pipeline.models import InferenceSettings
    from serve.app import APP_NAME, build_app
    from serve.config import AuthSettings, DeploymentsConfig, JobSettings, ServiceConfig

    if image is None:
        shared = Path(__file__).resolve().parents[2] / "shared" / "data"
        image = shared / "faces" / "fr_two_people.jpg"
    data = image.read_bytes()
    levels = [int(c) for c in concurrency.split(",")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    analysis = AnalysisSettings(
        inference=InferenceSettings.model_validate({"model_dir": model_dir, "backend": backend}),
        shot_workers=4,
    )
    base_deployments = DeploymentsConfig()
    small = {"num_cpus": 0.25}
    deployments = base_deployments.model_copy(
        update={
            name: getattr(base_deployments, name).model_copy(update=small)
            for name in ("runner", "detector", "embedder", "features", "members")
        }
    )

    def config(batching: bool, *, max_queued: int = 10_000, rate: int = 1_000_000) -> ServiceConfig:
        models = {
            name: getattr(deployments, name).model_copy(
                update={
                    "batch": getattr(deployments, name).batch.model_copy(
                        update={"enabled": batching}
                    )
                }
            )
            for name in ("detector", "embedder", "features", "members")
        }
        return ServiceConfig(
            home=Path(tempfile.gettempdir()) / "dfd-bench-serve",
            auth=AuthSettings(anonymous_rate_per_min=rate),
            jobs=JobSettings(concurrency=runner_concurrency, max_queued_jobs=max_queued),
            analysis=analysis,
            deployments=deployments.model_copy(update=models),
        ).resolved()

    figures: dict[str, Any] = {"image": str(image), "rounds": []}
    # In-process first, before Ray starts. One torch thread by default, as Ray gives each
    # fractional-CPU replica (OMP_NUM_THREADS=1); measured here: 2 threads on a busy 2-core
    # machine ran 20x slower than 1 (spinning intra-op threads).
    import torch

    torch.set_num_threads(torch_threads)
    analyzer = load_analyzer(analysis.model_copy(update={"shot_workers": 1}))
    analyzer.analyze_file(image, MemorySink())
    t = time.perf_counter()
    for _ in range(in_process_runs):
        analyzer.analyze_file(image, MemorySink())
    figures["in_process_s"] = (time.perf_counter() - t) / in_process_runs
    del analyzer
    t0 = time.perf_counter()
    url = start_service(config(True), "127.0.0.1", port)
    figures["startup_s"] = time.perf_counter() - t0
    try:
        for batching in (True, False):
            if not batching:  # only user_config changes: replicas are reconfigured in place
                ray_serve.run(build_app(config(False)), name=APP_NAME, route_prefix="/")
            _serve_round(url, data, image.name, 1, 2, 0.05)  # warm-up
            for c in levels:
                jobs = max(min_jobs, c * jobs_per_client)
                row = _serve_round(url, data, image.name, c, jobs, 0.1)
                row.pop("job_ids")
                row["batching"] = batching
                figures["rounds"].append(row)
                out_console.print(row)
        ray_serve.run(
            build_app(config(True, max_queued=8, rate=60)), name=APP_NAME, route_prefix="/"
        )
        figures["overload"] = _overload_round(url, data, image.name, overload_requests, 64)
    finally:
        stop_service()

    table = Table(title=f"image jobs through the service ({image.name})")
    for col in ("@serve.batch", "clients", "jobs", "jobs/s", "p50 s", "p99 s", "p50 / in-process"):
        table.add_column(col, justify="right")
    for r in figures["rounds"]:
        table.add_row(
            "on" if r["batching"] else "off",
            str(r["concurrency"]),
            f"{r['done']}/{r['jobs']}",
            f"{r['jobs_per_s']:.2f}",
            f"{r['p50_s']:.3f}",
            f"{r['p99_s']:.3f}",
            f"{r['p50_s'] / figures['in_process_s']:.2f}",
        )
    out_console.print(table)
    out_console.print(
        f"in-process Analyzer ({torch_threads} torch thread(s)): "
        f"{figures['in_process_s']:.3f} s per image"
    )
    out_console.print(f"service start-up: {figures['startup_s']:.1f} s")
    over = Table(
        title=f"beyond capacity: {overload_requests} submissions from 64 clients "
        "(queue of 8 jobs, 60 requests/min per client address)"
    )
    for col in ("HTTP status", "answers", "p50 s", "p99 s", "max s"):
        over.add_column(col, justify="right")
    for status, r in figures["overload"].items():
        over.add_row(
            status, str(r["count"]), f"{r['p50_s']:.3f}", f"{r['p99_s']:.3f}", f"{r['max_s']:.3f}"
        )
    out_console.print(over)
    if json_out is not None:
        json_out.write_text(json.dumps(figures, indent=2) + "\n")


@app.command("evaluate")
@cli_errors
def evaluate(
    videos: Annotated[int, typer.Option(help="Clips to score (cut from shared/data).")] = 50,
    clip_s: Annotated[float, typer.Option(help="Length of each clip, seconds.")] = 4.0,
    data: Annotated[Path, typer.Option(help="The shared test media folder.")] = Path(
        "../shared/data"
    ),
    work: Annotated[
        Path | None, typer.Option(help="Folder for clips and runs (default: a temp folder).")
    ] = None,
    model_dir: Annotated[
        Path | None, typer.Option(help="Model directory (default: the user's).")
    ] = None,
    backend: BackendOpt = "auto",
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    actors: Annotated[int, typer.Option(help="Model actors in the pool.")] = 2,
    cpus_per_actor: Annotated[float, typer.Option(help="Logical CPUs per actor.")] = 0.5,
    max_frames: Annotated[int, typer.Option(help="Frames per shot for faces.")] = 16,
    sequential: Annotated[bool, typer.Option(help="Also time the plain loop.")] = True,
    loop_threads: Annotated[
        int, typer.Option(help="torch threads of the plain loop (0: torch's default).")
    ] = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the figures as JSON.")
    ] = None,
) -> None:
    """Evaluation runs: videos/min of the Ray Data actor pool against a plain sequential loop
    over the same videos and models, and driver/worker memory as rows stream."""
    from dfd.evaluate_cmd import bench_evaluate

    bench_evaluate(
        videos, clip_s, data, work, model_dir, backend, device, actors, cpus_per_actor,
        max_frames, sequential, loop_threads, json_out,
    )  # fmt: skip


@app.command("attack")
@cli_errors
def attack(
    presets: Annotated[str, typer.Option(help="Comma-separated: tiny, paper ('' for none).")] = (
        "tiny,paper"
    ),
    model_dir: Annotated[Path | None, typer.Option(help="Also bench this model dir.")] = None,
    faces: Annotated[int, typer.Option(help="Faces per timed attack call.")] = 4,
    norm: Annotated[str, typer.Option(help="inf, 1 or 2.")] = "inf",
    eps: Annotated[float, typer.Option(help="PGD budget.")] = 0.2,
    max_iter: Annotated[int, typer.Option(help="PGD iterations (paper: 5).")] = 5,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    torch_threads: Annotated[int, typer.Option(help="torch.set_num_threads (0: default).")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write figures as JSON.")] = None,
) -> None:
    """Attacked faces per second per actor (PGD through the whole ensemble, then re-scoring),
    with small (tiny preset) and full-size (paper preset, untrained) models."""
    from dfd.attack_cmd import bench_attack

    settings = {"norm": norm, "eps": eps, "max_iter": max_iter, "batch_size": max(faces, 1)}
    chosen = [p for p in presets.split(",") if p]
    bench_attack(chosen, model_dir, faces, settings, device, torch_threads, json_out)


@app.command("cluster")
@cli_errors
def cluster(
    nodes: Annotated[str, typer.Option(help="Comma-separated node counts.")] = "1,2,3",
    model_dir: Annotated[
        Path | None, typer.Option(help="Model directory (default: the user's).")
    ] = None,
    image: Annotated[
        Path | None, typer.Option(help="Image to submit (default: a face photo of ../shared/data).")
    ] = None,
    video: Annotated[
        Path | None,
        typer.Option(help="Video for the per-stage costs (default: one of ../shared/data)."),
    ] = None,
    backend: BackendOpt = "auto",
    cpus_per_node: Annotated[float, typer.Option(help="Logical CPUs each node declares.")] = 4,
    jobs: Annotated[int, typer.Option(help="Image jobs per node count.")] = 24,
    concurrency: Annotated[int, typer.Option(help="Concurrent clients.")] = 8,
    runner_concurrency: Annotated[int, typer.Option(help="Jobs per runner replica.")] = 4,
    gpu_speedup: Annotated[
        float, typer.Option(help="Estimate: model stages this much faster on a GPU (assumed).")
    ] = 15.0,
    cpus_per_gpu_node: Annotated[
        int, typer.Option(help="Estimate: cores per GPU node (g5.xlarge: 4).")
    ] = 4,
    estimate_gpus: Annotated[str, typer.Option(help="Estimate for these GPU counts.")] = "1,4,16",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the figures as JSON.")
    ] = None,
) -> None:
    """Image jobs through the service on local Ray clusters of 1, 2, 3 nodes (each declaring
    one GPU; one set of models per node): jobs/s and its ratio to one node, latency, seconds
    per stage; then an estimate of videos per hour per GPU on a GPU cluster."""
    from dfd.bench_cluster import bench_cluster

    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    bench_cluster(
        [int(n) for n in nodes.split(",")],
        model_dir=model_dir,
        image=image or shared / "faces" / "fr_two_people.jpg",
        video=video or shared / "deepfake" / "ffpp_c23_634.mp4",
        backend=backend,
        cpus_per_node=cpus_per_node,
        jobs=jobs,
        concurrency=concurrency,
        runner_concurrency=runner_concurrency,
        gpu_speedup=gpu_speedup,
        cpus_per_gpu_node=cpus_per_gpu_node,
        estimate_gpus=[int(n) for n in estimate_gpus.split(",")],
        json_out=json_out,
    )


@app.command("train")
@cli_errors
def train(
    faces: Annotated[Path, typer.Option(help="A faces folder of `dfd faces extract`.")],
    member: Annotated[str, typer.Option(help="Member to train (manifest or sbi_lite0).")],
    workers: Annotated[
        str, typer.Option(help="Worker counts to compare, comma-separated.")
    ] = "1,2",
    steps: Annotated[int, typer.Option(help="Steps per epoch (the second epoch is timed).")] = 8,
    batch_size: Annotated[int, typer.Option(help="Faces per step and worker.")] = 16,
    cpus: Annotated[
        float,
        typer.Option(
            help="Logical CPUs shared by the workers of a configuration (leave some for the "
            "data tasks)."
        ),
    ] = 1.5,
    gpus_per_worker: Annotated[float, typer.Option(help="GPUs per worker (0: CPU).")] = 0.0,
    init_backbone: Annotated[
        bool, typer.Option("--init-backbone", help="Start from ImageNet weights.")
    ] = False,
    model_dir: Annotated[Path | None, typer.Option(help="Model directory (read only).")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the figures as JSON.")
    ] = None,
) -> None:
    """Training throughput: images/s for each worker count side by side (same faces, member and
    steps), data-loading and compute time per step, peak RSS per worker. The model directory is
    not written."""
    import tempfile

    import ray

    from batch.train import TrainConfig
    from batch.train import train as train_member

    counts = [int(w) for w in workers.split(",") if w.strip()]
    started_ray = False
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
        started_ray = True
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="dfd-bench-train-") as tmp:
            for n in counts:
                config = TrainConfig(
                    faces=faces,
                    member=member,
                    out=Path(tmp) / f"workers-{n}",
                    model_dir=model_dir,
                    init_backbone=init_backbone,
                    epochs=2,
                    batch_size=batch_size,
                    max_steps_per_epoch=steps,
                    workers=n,
                    cpus_per_worker=cpus / n,
                    gpus_per_worker=gpus_per_worker,
                    torch_threads=max(1, int(cpus // n)),
                )
                summary = train_member(config, write=False)
                timed = summary.history[-1]  # the first epoch pays for start-up
                done = max(1.0, timed["train_images"] / batch_size)
                rows.append(
                    {
                        "workers": n,
                        "images_per_s": timed["images_per_s_all"],
                        "data_ms_per_step": 1000 * timed["data_s"] / done,
                        "compute_ms_per_step": 1000 * timed["compute_s"] / done,
                        "peak_rss_mb_per_worker": timed["peak_rss_mb_max"],
                        "first_epoch_s": summary.history[0]["train_s"],
                    }
                )
    finally:
        if started_ray:
            ray.shutdown()
    base = rows[0]["images_per_s"] or 1.0
    table = Table(title=f"dfd train: {member}, batch {batch_size}/worker, {steps} steps")
    for col in ("workers", "images/s", f"vs {counts[0]}", "data ms/step", "compute ms/step",
                "peak RSS/worker MB"):  # fmt: skip
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["workers"]),
            f"{r['images_per_s']:.1f}",
            f"{r['images_per_s'] / base:.2f}x",
            f"{r['data_ms_per_step']:.0f}",
            f"{r['compute_ms_per_step']:.0f}",
            f"{r['peak_rss_mb_per_worker']:.0f}",
        )
    out_console.print(table)
    if json_out is not None:
        payload = {"member": member, "batch_size": batch_size, "steps": steps, "rows": rows}
        json_out.write_text(json.dumps(payload, indent=2) + "\n")
