"""``dfd bench models``: faces per second of the whole ensemble, per backend and batch size, and
resident memory (after loading, and at its peak).

Each backend loads in its own spawned process (so one's memory does not hide in another's) and
the timed runs take turns across backends; warm-up passes are excluded and model loading is
reported apart.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict
from rich.table import Table

from bench.harness import out_console, peak_rss_mb, process_memory_mb, write_json


class ModelsBenchSettings(BaseModel):
    """What ``dfd bench models`` compares (its options; the defaults are the command line's)."""

    model_config = ConfigDict(extra="forbid")

    #: Model directory (None: the user's).
    model_dir: Path | None = None
    #: Backends side by side; the first is the baseline.
    backends: list[str]
    batch_sizes: list[int]
    #: Faces per timed run.
    faces: int
    #: Timed runs per batch size; faces/s is their median.
    repeats: int
    #: Named ensemble of the manifest (None: the default one).
    ensemble: str | None = None
    device: str
    #: ``torch.set_num_threads`` in each backend's process (0: torch's default).
    torch_threads: int
    #: Members scored side by side by the CPU runtimes (0: one per core).
    member_workers: int
    #: Write the figures here as JSON.
    json_out: Path | None = None


def bench_faces(n: int, seed: int = 0) -> list[np.ndarray]:
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
    conn.send(
        {
            "load_s": time.perf_counter() - t0,
            "rss_loaded_mb": process_memory_mb()["rss"],
            "load_peak_rss_mb": peak_rss_mb(),
        }
    )
    faces = bench_faces(cfg["faces"])
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
            "peak_rss_mb": peak_rss_mb(),
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


def bench_models(settings: ModelsBenchSettings) -> list[dict[str, Any]]:
    """Time every backend of ``settings`` at every batch size; print the table, return the rows
    (one per backend: load figures, RSS, probabilities and a ``runs`` entry per batch size)."""
    from pipeline.models.manifest import resolve_model_dir

    directory = resolve_model_dir(settings.model_dir)
    cfgs = [
        {
            "model_dir": directory.root,
            "backend": backend,
            "device": settings.device,
            "faces": settings.faces,
            "torch_threads": settings.torch_threads,
            "member_workers": settings.member_workers,
            "ensemble": settings.ensemble,
        }
        for backend in settings.backends
    ]
    out = _bench_models_interleaved(cfgs, settings.batch_sizes, settings.repeats)
    _print_models(out, settings)
    write_json(settings.json_out, out)
    return out


def _print_models(out: list[dict[str, Any]], settings: ModelsBenchSettings) -> None:
    base = out[0]
    base_best = max(run["faces_per_s"] for run in base["runs"])
    table = Table(
        title=f"ensemble throughput ({len(base['members'])} members, {settings.faces} faces per "
        f"run, median of {settings.repeats} interleaved runs)"
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
