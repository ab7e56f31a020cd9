"""``dfd bench evaluate``: videos per minute of an evaluation run's Ray Data actor pool against a
plain sequential loop over the same videos and models, and driver/worker memory as rows stream.

The videos are clips cut from the shared test media (:mod:`bench.clips`); the loop runs in a
spawned process, so its memory is its own.
"""

from __future__ import annotations

import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict
from rich.table import Table

from batch.config import EvaluationConfig, StageSettings
from bench.clips import synthesise_clips
from bench.harness import (
    MEMORY_FIELDS,
    err_console,
    out_console,
    process_memory_mb,
    ray_session,
    run_isolated,
    write_json,
)

if TYPE_CHECKING:
    import pandas as pd

    from batch.datasets import VideoRow


class EvaluateBenchSettings(BaseModel):
    """What ``dfd bench evaluate`` measures (its options; the defaults are the command line's)."""

    model_config = ConfigDict(extra="forbid")

    #: Clips to score, cut from ``data``.
    videos: int
    #: Length of each clip, seconds.
    clip_s: float
    #: The shared test media folder.
    data: Path
    #: Folder for clips and runs (None: a temporary folder).
    work: Path | None = None
    model_dir: Path | None = None
    backend: str
    device: str
    #: Model actors in the pool, and logical CPUs of each.
    actors: int
    cpus_per_actor: float
    #: Shots per ensemble call (``dfd evaluate --score-batch``).
    score_batch: int = 16
    #: Frames per shot for faces.
    max_frames: int
    #: Also time the plain loop.
    sequential: bool
    #: torch threads of the plain loop (0: torch's default).
    loop_threads: int
    json_out: Path | None = None


class _MemorySampler:
    """Samples the driver's RSS and every Ray Data worker's memory (the processes whose title
    names a ``MapWorker``: the stages' actors) twice a second, from a thread.

    Each worker's series splits RSS by kind (:func:`bench.harness.process_memory_mb`): a Ray
    worker's RSS also counts the object-store pages it has read, which are shared and come and
    go with the blocks in flight, so whether a worker leaks is read from its private (anonymous)
    memory, not from RSS alone."""

    def __init__(self, interval_s: float = 0.5) -> None:
        import psutil

        self._proc = psutil.Process()
        self.interval_s = interval_s
        self.driver: list[float] = []
        #: pid -> the worker's title (``ray::MapWorker(MapBatches(ScoreStage))``).
        self.titles: dict[int, str] = {}
        #: pid -> samples of :func:`process_memory_mb`, in time order.
        self.workers: dict[int, list[dict[str, float]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def driver_rss_mb(self) -> float:
        """The driver's resident memory now, MiB."""
        return float(self._proc.memory_info().rss) / 2**20

    def _loop(self) -> None:
        import psutil

        while not self._stop.wait(self.interval_s):
            self.driver.append(self.driver_rss_mb())
            for child in self._proc.children(recursive=True):
                try:
                    title = self.titles.get(child.pid) or " ".join(child.cmdline()[:1])
                    if "MapWorker" in title:
                        self.titles[child.pid] = title
                        sample = process_memory_mb(child.pid)
                        self.workers.setdefault(child.pid, []).append(sample)
                except (psutil.Error, OSError):
                    continue

    def worker_figures(self) -> dict[str, dict[str, Any]]:
        """Per sampled worker (``"<stage> <pid>"``): samples taken, and first -> middle -> last
        (peak) of each memory kind over its samples (:func:`_memory`)."""
        out: dict[str, dict[str, Any]] = {}
        for pid, samples in self.workers.items():
            # ray::MapWorker(MapBatches(ScoreStage)).method -> ScoreStage
            named = re.search(r"MapBatches\((\w+)\)", self.titles[pid])
            stage = named.group(1) if named else self.titles[pid]
            figures: dict[str, Any] = {"samples": len(samples)}
            for kind in MEMORY_FIELDS.values():
                figures[kind] = _memory([s.get(kind, 0.0) for s in samples], k=10)
            out[f"{stage} {pid}"] = figures
        return out


def _sequential_worker(cfg: dict[str, Any], queue: Any) -> None:
    """The baseline: one process, one set of models, a plain ``for`` loop over the rows."""
    import psutil
    import torch

    from batch.datasets import read_dataset
    from batch.execution import resolve_devices
    from batch.models import build_models
    from batch.scoring import RowScorer

    config = EvaluationConfig.model_validate_json(cfg["config"])
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    rows = read_dataset("csv", config.root)
    proc = psutil.Process()
    t0 = time.perf_counter()
    settings = resolve_devices(config.analysis)
    scorer = RowScorer(
        build_models(config.model_copy(update={"analysis": settings})),
        settings,
        per_face=False,
        trim_memory=config.trim_memory,
    )
    load_s = time.perf_counter() - t0
    rss, scores, seconds = [], {}, []
    for row in rows:
        t = time.perf_counter()
        scored = scorer.score(row, "csv")
        seconds.append(time.perf_counter() - t)
        scores[row.video_id] = scored.prediction["score"]
        rss.append(proc.memory_info().rss / 2**20)
        print(f"loop: {len(seconds)}/{len(rows)} rows", end="\r", file=sys.stderr, flush=True)
    queue.put(
        {
            "load_s": load_s,
            "seconds": seconds,
            "rss_mb": rss,
            "scores": scores,
            "threads": torch.get_num_threads(),
        }
    )


def _memory(series: list[float], k: int = 3) -> dict[str, float]:
    """RSS (MB) over a run's rows: mean of the first ``k`` rows, of ``k`` rows around the
    middle and of the last ``k``, and the peak. Flat memory means middle ~ last: the first
    rows include the allocator's warm-up (every clip size seen once), not growth."""
    if not series:
        return {"first": 0.0, "middle": 0.0, "last": 0.0, "peak": 0.0}
    mid = len(series) // 2
    parts = {
        "first": series[:k],
        "middle": series[max(0, mid - k // 2) : mid - k // 2 + k],
        "last": series[-k:],
    }
    out = {name: sum(v) / len(v) for name, v in parts.items()}
    out["peak"] = max(series)
    return out


def _memory_text(m: dict[str, float]) -> str:
    return f"{m['first']:.0f} -> {m['middle']:.0f} -> {m['last']:.0f} ({m['peak']:.0f})"


def _evaluation_config(s: EvaluateBenchSettings, manifest: Path, out: Path) -> EvaluationConfig:
    """The run over the clips: the batch analysis with the benchmark's models and frames, no
    per-face rows."""
    from batch.config import batch_analysis_settings
    from pipeline.faces import FaceSettings
    from pipeline.models import InferenceSettings

    analysis = batch_analysis_settings().model_copy(
        update={
            "inference": InferenceSettings.model_validate(
                {"model_dir": s.model_dir, "backend": s.backend, "device": s.device}
            ),
            "faces": FaceSettings(
                max_frames_per_shot=s.max_frames,
                device=s.device if s.device.startswith("cuda") else "cpu",
            ),
        }
    )

    def stage(batch_size: int) -> StageSettings:
        return StageSettings(actors=s.actors, num_cpus=s.cpus_per_actor, batch_size=batch_size)

    return EvaluationConfig(
        dataset="csv", root=manifest, out=out, analysis=analysis, per_face=False,
        decode=StageSettings(num_cpus=s.cpus_per_actor), detect=stage(2),
        score=stage(s.score_batch),
    )  # fmt: skip


def _pool_run(
    config: EvaluationConfig, rows: list[VideoRow], figures: dict[str, Any]
) -> pd.DataFrame:
    """The evaluation run on the actor pool, memory sampled as rows arrive; adds ``cpus``,
    ``gpus`` and ``pool`` to ``figures`` and returns the run's predictions."""
    import ray

    from batch.evaluate import run_evaluation
    from evaluation.runs import RunFolder

    arrivals: list[tuple[int, float, float]] = []
    with ray_session():
        figures["cpus"] = ray.cluster_resources().get("CPU")
        figures["gpus"] = ray.cluster_resources().get("GPU", 0.0)
        with _MemorySampler() as sampler:
            t0 = time.perf_counter()

            def progress(done: int, total: int, elapsed_s: float) -> None:
                arrivals.append((done, time.perf_counter() - t0, sampler.driver_rss_mb()))
                err_console.print(
                    f"pool: {done}/{total} rows, {done / elapsed_s:.2f} rows/s", end="\r"
                )

            summary = run_evaluation(config, rows=rows, progress=progress)
            wall = time.perf_counter() - t0
    err_console.print()
    table = RunFolder(config.out).predictions()
    assert table is not None
    pool = table.to_pandas()
    first, last = arrivals[0][1], arrivals[-1][1]
    steady = (len(arrivals) - 1) / (last - first) * 60 if last > first else float("nan")
    per_worker: dict[str, list[float]] = {}
    for _, r in pool.sort_values("finished_at").iterrows():
        per_worker.setdefault(str(r["worker"]), []).append(float(r["worker_rss_mb"]))
    figures["pool"] = {
        "actors": config.score.actors,
        "cpus_per_actor": config.score.num_cpus,
        "score_batch": config.score.batch_size,
        "wall_s": wall,
        "first_row_s": first,
        "videos_per_min": len(rows) / wall * 60,
        "videos_per_min_steady": steady,
        "errors": summary.errors,
        "no_face": summary.no_face,
        "driver_rss_mb": _memory([a[2] for a in arrivals]),
        "driver_rss_mb_sampled_peak": max(sampler.driver, default=0.0),
        "worker_rss_mb": {w: _memory(s) for w, s in per_worker.items()},
        "worker_memory_mb_sampled": sampler.worker_figures(),
        "rows_per_worker": {w: len(s) for w, s in per_worker.items()},
    }
    return pool


def _sequential_run(
    config: EvaluationConfig, n_rows: int, pool: pd.DataFrame, loop_threads: int
) -> dict[str, Any]:
    """The plain loop in a spawned process over the same rows and models; its figures, with
    the largest score difference from the pool's."""
    with err_console.status("plain sequential loop over the same videos and models"):
        job = {"config": config.model_dump_json(), "threads": loop_threads}
        t1 = time.perf_counter()
        seq = run_isolated(_sequential_worker, job)
        seq_wall = time.perf_counter() - t1
    loop_s = sum(seq["seconds"])
    pooled = dict(zip(pool["video_id"], pool["score"], strict=True))
    diffs = [
        abs(pooled[v] - s) for v, s in seq["scores"].items()
        if s is not None and pooled.get(v) is not None and not np.isnan(pooled[v])
    ]  # fmt: skip
    return {
        "torch_threads": seq["threads"],
        "load_s": seq["load_s"],
        "wall_s": seq_wall,
        "videos_per_min": n_rows / seq_wall * 60,
        "videos_per_min_steady": n_rows / loop_s * 60,
        "rss_mb": _memory(seq["rss_mb"]),
        "max_abs_score_difference_vs_pool": max(diffs, default=float("nan")),
    }


def bench_evaluate(settings: EvaluateBenchSettings) -> dict[str, Any]:
    """Cut the clips, run the pool (and the plain loop); print the table, return the figures."""
    from batch.datasets import read_dataset

    s = settings
    work = s.work or Path(tempfile.mkdtemp(prefix="dfd-bench-evaluate-"))
    with err_console.status(f"cutting {s.videos} clips of {s.clip_s:g} s from {s.data}"):
        manifest = synthesise_clips(s.data, work / "clips", s.videos, s.clip_s)
    rows = read_dataset("csv", manifest)
    out = work / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    config = _evaluation_config(s, manifest, out)
    figures: dict[str, Any] = {"videos": len(rows), "clip_s": s.clip_s, "max_frames": s.max_frames}
    pool = _pool_run(config, rows, figures)
    if s.sequential:
        seq = figures["sequential"] = _sequential_run(config, len(rows), pool, s.loop_threads)
        figures["ratio_pool_over_sequential"] = (
            figures["pool"]["videos_per_min"] / seq["videos_per_min"]
        )
        figures["ratio_pool_over_sequential_steady"] = (
            figures["pool"]["videos_per_min_steady"] / seq["videos_per_min_steady"]
        )
    _print_evaluate(figures)
    write_json(s.json_out, figures)
    return figures


def _print_evaluate(f: dict[str, Any]) -> None:
    table = Table(
        title=f"evaluation throughput: {f['videos']} clips of {f['clip_s']:g} s, "
        f"{f['max_frames']} frames per shot, {f['cpus']:g} CPUs, {f['gpus']:g} GPUs"
    )
    for col in ("mode", "videos/min", "steady", "wall s", "RSS MB: first -> middle -> last (peak)"):
        table.add_column(col, justify="right" if col != "mode" else "left")
    p = f["pool"]
    table.add_row(
        f"staged run ({p['actors']} actors per model stage x {p['cpus_per_actor']:g} CPU, "
        f"{p.get('score_batch', 16)} shots per ensemble call)",
        f"{p['videos_per_min']:.1f}",
        f"{p['videos_per_min_steady']:.1f}",
        f"{p['wall_s']:.0f}",
        "driver " + _memory_text(p["driver_rss_mb"]),
    )
    for worker, memory in p["worker_rss_mb"].items():
        label = f"  worker {worker} ({p['rows_per_worker'][worker]} rows)"
        table.add_row(label, "", "", "", _memory_text(memory))
    if "sequential" in f:
        s = f["sequential"]
        table.add_row(
            f"plain loop ({s['torch_threads']} torch threads)",
            f"{s['videos_per_min']:.1f}",
            f"{s['videos_per_min_steady']:.1f}",
            f"{s['wall_s']:.0f}",
            _memory_text(s["rss_mb"]),
        )
    out_console.print(table)
    _print_sampled_workers(p["worker_memory_mb_sampled"])
    if "sequential" in f:
        out_console.print(
            f"ratio pool/loop: {f['ratio_pool_over_sequential']:.2f} end to end, "
            f"{f['ratio_pool_over_sequential_steady']:.2f} steady (model loading excluded); "
            f"max |score difference| {f['sequential']['max_abs_score_difference_vs_pool']:.1e}"
        )


def _print_sampled_workers(workers: dict[str, dict[str, Any]]) -> None:
    table = Table(
        title="stage workers sampled every 0.5 s, MiB: first -> middle -> last (peak) of 10 "
        "samples; private = anonymous pages, shared = object-store pages read"
    )
    for col in ("worker", "samples", "RSS", "private", "shared", "files"):
        table.add_column(col, justify="right" if col != "worker" else "left")
    for worker, m in workers.items():
        table.add_row(
            worker, str(m["samples"]),
            *(_memory_text(m[kind]) for kind in ("rss", "anon", "shmem", "file")),
        )  # fmt: skip
    out_console.print(table)
