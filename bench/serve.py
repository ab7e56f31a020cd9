"""``dfd bench serve``: image jobs through the service (local Ray + Serve, real HTTP on loopback).

Jobs/s, faces/s and p50/p99 latency at each concurrency, with and without ``@serve.batch``, with
the ensemble's crops put in the object store once for all members or copied to each; the same image
through ``dfd analyze``'s in-process analyzer; and how fast the service refuses work beyond its
capacity (429/503).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict
from rich.table import Table

from bench.harness import out_console, process_memory_mb, write_json
from bench.http_load import overload_round, serve_round
from serve.local import free_port, start_service, stop_service

if TYPE_CHECKING:
    from pipeline.analyze import AnalysisSettings
    from serve.config import ServiceConfig

#: The deployments whose ``@serve.batch`` the benchmark turns on and off.
MODEL_DEPLOYMENTS = ("detector", "embedder", "features", "members")
#: The rounds' settings, in order: (``@serve.batch`` on, the members' crops put once for all).
MODES = ((True, True), (True, False), (False, True))


class ServeBenchSettings(BaseModel):
    """What ``dfd bench serve`` measures (its options; the defaults are the command line's)."""

    model_config = ConfigDict(extra="forbid")

    model_dir: Path | None = None
    #: The image every job submits.
    image: Path
    backend: str
    #: Client counts, one round each.
    concurrency: list[int]
    #: Jobs per client at each concurrency (at least ``min_jobs`` per round).
    jobs_per_client: int
    min_jobs: int
    #: Jobs the runner analyses at once.
    runner_concurrency: int
    #: Submissions fired in the overload round.
    overload_requests: int
    #: Timed in-process analyses.
    in_process_runs: int
    #: torch threads of the in-process analyzer (replicas get 1).
    torch_threads: int
    json_out: Path | None = None


def _service_config(
    analysis: AnalysisSettings,
    batching: bool,
    runner_concurrency: int,
    *,
    share_crops: bool = True,
    max_queued: int = 10_000,
    rate: int = 1_000_000,
) -> ServiceConfig:
    """Small replicas (a quarter CPU each), ``@serve.batch`` on or off, the members' crops
    shared or copied, queue and rate limits out of the way unless given."""
    from serve.config import AuthSettings, DeploymentsConfig, JobSettings, ServiceConfig

    base_deployments = DeploymentsConfig()
    small = {"num_cpus": 0.25}
    deployments = base_deployments.model_copy(
        update={
            name: getattr(base_deployments, name).model_copy(update=small)
            for name in ("runner", *MODEL_DEPLOYMENTS)
        }
    )
    models = {
        name: getattr(deployments, name).model_copy(
            update={
                "batch": getattr(deployments, name).batch.model_copy(update={"enabled": batching})
            }
        )
        for name in MODEL_DEPLOYMENTS
    }
    return ServiceConfig(
        home=Path(tempfile.gettempdir()) / "dfd-bench-serve",
        auth=AuthSettings(anonymous_rate_per_min=rate),
        jobs=JobSettings(
            concurrency=runner_concurrency,
            max_queued_jobs=max_queued,
            share_member_crops=share_crops,
        ),
        analysis=analysis,
        deployments=deployments.model_copy(update=models),
    ).resolved()


def _in_process_seconds(
    analysis: AnalysisSettings, image: Path, runs: int, torch_threads: int
) -> tuple[float, int]:
    """Seconds per analysis of ``image`` by an in-process analyzer, after one warm-up, and the
    faces it finds there."""
    # In-process first, before Ray starts. One torch thread by default, as Ray gives each
    # fractional-CPU replica (OMP_NUM_THREADS=1); measured here: 2 threads on a busy 2-core
    # machine ran 20x slower than 1 (spinning intra-op threads).
    import torch

    from pipeline.analyze import load_analyzer
    from pipeline.artefacts import MemorySink

    torch.set_num_threads(torch_threads)
    analyzer = load_analyzer(analysis.model_copy(update={"shot_workers": 1}))
    faces = analyzer.analyze_file(image, MemorySink()).faces_total
    t = time.perf_counter()
    for _ in range(runs):
        analyzer.analyze_file(image, MemorySink())
    return (time.perf_counter() - t) / runs, faces


def _through_service(
    settings: ServeBenchSettings, analysis: AnalysisSettings, data: bytes, figures: dict[str, Any]
) -> None:
    """Start the service, run the rounds (:data:`MODES`: each a redeploy of the settings that
    change) and the overload round, stop it; adds ``startup_s``, ``rounds`` and ``overload`` to
    ``figures``."""
    from ray import serve as ray_serve

    from serve.app import APP_NAME, build_app, model_deployment_names

    image = settings.image
    t0 = time.perf_counter()
    config = _service_config(analysis, True, settings.runner_concurrency)
    url = start_service(config, "127.0.0.1", free_port())
    figures["startup_s"] = time.perf_counter() - t0
    figures["replicas"] = replica_memory(model_deployment_names(config))
    _print_replicas(figures["replicas"])
    try:
        for i, (batching, share) in enumerate(MODES):
            if i:  # batching is user_config (reconfigured in place); sharing redeploys the runner
                config = _service_config(
                    analysis, batching, settings.runner_concurrency, share_crops=share
                )
                ray_serve.run(build_app(config), name=APP_NAME, route_prefix="/")
            serve_round(url, data, image.name, 1, 2, 0.05)  # warm-up
            for c in settings.concurrency:
                jobs = max(settings.min_jobs, c * settings.jobs_per_client)
                row = serve_round(url, data, image.name, c, jobs, 0.1)
                row.pop("job_ids")
                row["batching"] = batching
                row["shared_crops"] = share
                row["faces_per_s"] = row["jobs_per_s"] * figures["faces_per_image"]
                figures["rounds"].append(row)
                out_console.print(row)
        limited = _service_config(
            analysis, True, settings.runner_concurrency, max_queued=8, rate=60
        )
        ray_serve.run(build_app(limited), name=APP_NAME, route_prefix="/")
        figures["overload"] = overload_round(url, data, image.name, settings.overload_requests, 64)
    finally:
        stop_service()


def replica_memory(model_deployments: Collection[str]) -> list[dict[str, Any]]:
    """Resident memory (MiB, by kind: see :func:`bench.harness.process_memory_mb`) of every Serve
    replica process on this machine (Ray titles them ``ray::ServeReplica:<app>:<deployment>``),
    with its deployment and whether it holds a model (is one of ``model_deployments``)."""
    rows = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            if not title.startswith("ray::ServeReplica:"):
                continue
            memory = process_memory_mb(proc.name)
        except OSError:  # gone meanwhile
            continue
        deployment = title.rpartition(":")[2].strip()
        model = deployment in model_deployments
        rows.append({"deployment": deployment, "pid": int(proc.name), "model": model, **memory})
    return sorted(rows, key=lambda r: (not r["model"], r["deployment"]))


def _print_replicas(rows: list[dict[str, Any]]) -> None:
    table = Table(title="Serve replicas after start-up, resident memory (MiB)")
    for col in ("deployment", "holds a model", "RSS", "private", "file", "shared"):
        table.add_column(col, justify="left" if col == "deployment" else "right")
    kinds = ("rss", "anon", "file", "shmem")
    for r in rows:
        table.add_row(
            r["deployment"], "yes" if r["model"] else "no", *(f"{r[k]:.0f}" for k in kinds)
        )
    models = [r for r in rows if r["model"]]
    sums = (f"{sum(r[k] for r in models):.0f}" for k in kinds)
    table.add_row(f"sum of the {len(models)} model replicas", "", *sums)
    out_console.print(table)


def bench_serve(settings: ServeBenchSettings) -> dict[str, Any]:
    """The in-process baseline, then the service's rounds; print the tables and return the
    figures (``in_process_s``, ``startup_s``, ``rounds``, ``overload``)."""
    from pipeline.analyze import AnalysisSettings
    from pipeline.models import InferenceSettings

    analysis = AnalysisSettings(
        inference=InferenceSettings.model_validate(
            {"model_dir": settings.model_dir, "backend": settings.backend}
        ),
        shot_workers=4,
    )
    data = settings.image.read_bytes()
    figures: dict[str, Any] = {"image": str(settings.image), "rounds": []}
    figures["in_process_s"], figures["faces_per_image"] = _in_process_seconds(
        analysis, settings.image, settings.in_process_runs, settings.torch_threads
    )
    _through_service(settings, analysis, data, figures)
    _print_serve(figures, settings)
    write_json(settings.json_out, figures)
    return figures


def _print_serve(figures: dict[str, Any], settings: ServeBenchSettings) -> None:
    table = Table(
        title=f"image jobs through the service ({settings.image.name}, "
        f"{figures['faces_per_image']} faces)"
    )
    columns = ("@serve.batch", "member crops", "clients", "jobs", "jobs/s", "faces/s", "p50 s",
               "p99 s", "p50 / in-process")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="right")
    for r in figures["rounds"]:
        table.add_row(
            "on" if r["batching"] else "off",
            "one put" if r["shared_crops"] else "a copy each",
            str(r["concurrency"]),
            f"{r['done']}/{r['jobs']}",
            f"{r['jobs_per_s']:.2f}",
            f"{r['faces_per_s']:.2f}",
            f"{r['p50_s']:.3f}",
            f"{r['p99_s']:.3f}",
            f"{r['p50_s'] / figures['in_process_s']:.2f}",
        )
    out_console.print(table)
    out_console.print(
        f"in-process Analyzer ({settings.torch_threads} torch thread(s)): "
        f"{figures['in_process_s']:.3f} s per image"
    )
    out_console.print(f"service start-up: {figures['startup_s']:.1f} s")
    over = Table(
        title=f"beyond capacity: {settings.overload_requests} submissions from 64 clients "
        "(queue of 8 jobs, 60 requests/min per client address)"
    )
    for col in ("HTTP status", "answers", "p50 s", "p99 s", "max s"):
        over.add_column(col, justify="right")
    for status, r in figures["overload"].items():
        over.add_row(
            status, str(r["count"]), f"{r['p50_s']:.3f}", f"{r['p99_s']:.3f}", f"{r['max_s']:.3f}"
        )
    out_console.print(over)
