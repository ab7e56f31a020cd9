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
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from dfd.common import cli_errors, out_console

app = typer.Typer(help="Benchmarks (figures for the closing notes and the README).", no_args_is_help=True)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _bench_faces(n: int, seed: int = 0) -> list[np.ndarray]:
    """Face-sized uint8 crops of varied sizes (speed does not depend on content)."""
    rng = np.random.default_rng(seed)
    sides = rng.integers(160, 400, size=(n, 2))
    return [rng.integers(0, 256, size=(int(h), int(w), 3), dtype=np.uint8) for h, w in sides]


def _models_worker(cfg: dict[str, Any], queue: Any) -> None:
    import torch

    from pipeline.models import Ensemble, InferenceSettings

    if cfg["torch_threads"]:
        torch.set_num_threads(cfg["torch_threads"])
    t0 = time.perf_counter()
    settings = InferenceSettings(
        model_dir=cfg["model_dir"], backend=cfg["backend"], device=cfg["device"], batch_size=1
    )
    ensemble = Ensemble.load(settings)
    load_s = time.perf_counter() - t0
    rss_loaded = _peak_rss_mb()
    faces = _bench_faces(cfg["faces"])
    results = []
    for bs in cfg["batch_sizes"]:
        ensemble.settings.batch_size = bs
        ensemble.predict(faces[:bs])  # warm-up
        t = time.perf_counter()
        pred = ensemble.predict(faces)
        dt = time.perf_counter() - t
        results.append({"batch_size": bs, "seconds": dt, "faces_per_s": len(faces) / dt})
    queue.put(
        {
            "backend": cfg["backend"],
            "load_s": load_s,
            "rss_loaded_mb": rss_loaded,
            "peak_rss_mb": _peak_rss_mb(),
            "runs": results,
            "probability": pred.probability.tolist(),
            "members": [m.name for m in ensemble.members],
            "weights": sorted({m.info.weights for m in ensemble.members}),
        }
    )


def _run_isolated(target: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(cfg, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result  # type: ignore[no-any-return]


@app.command()
@cli_errors
def models(
    model_dir: Annotated[Path | None, typer.Option(help="Model directory (default: the user's).")] = None,
    backends: Annotated[str, typer.Option(help="Comma-separated backends.")] = "torch,onnx",
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,4,8",
    faces: Annotated[int, typer.Option(help="Faces per timed run.")] = 16,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    torch_threads: Annotated[int, typer.Option(help="torch.set_num_threads (0: default).")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures as JSON.")] = None,
) -> None:
    """Faces per second of the whole ensemble, per backend and batch size, and peak RSS."""
    from pipeline.models.manifest import resolve_model_dir

    directory = resolve_model_dir(model_dir)
    sizes = [int(s) for s in batch_sizes.split(",")]
    out: list[dict[str, Any]] = []
    for backend in backends.split(","):
        cfg = {
            "model_dir": directory.root, "backend": backend, "device": device,
            "batch_sizes": sizes, "faces": faces, "torch_threads": torch_threads,
        }
        out.append(_run_isolated(_models_worker, cfg))
    base = out[0]
    table = Table(title=f"ensemble throughput ({len(base['members'])} members, {faces} faces per run)")
    for col in ("backend", "batch", "faces/s", "x first", "load s", "RSS loaded MB", "peak RSS MB", "max |dp|"):
        table.add_column(col, justify="right")
    base_rate = base["runs"][0]["faces_per_s"]
    for r in out:
        diff = float(np.abs(np.array(r["probability"]) - np.array(base["probability"])).max())
        for run in r["runs"]:
            table.add_row(
                r["backend"], str(run["batch_size"]), f"{run['faces_per_s']:.2f}",
                f"{run['faces_per_s'] / base_rate:.2f}", f"{r['load_s']:.1f}",
                f"{r['rss_loaded_mb']:.0f}", f"{r['peak_rss_mb']:.0f}", f"{diff:.1e}",
            )
    out_console.print(table)
    out_console.print(f"weights: {base['weights']}; members: {', '.join(base['members'])}")
    if json_out is not None:
        json_out.write_text(json.dumps(out, indent=2) + "\n")
