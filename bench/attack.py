"""``dfd bench attack``: attacked faces per second of one actor (one process), per model size.

Times :meth:`batch.attack.FaceAttacker.attack_crops`: resize, PGD through the whole ensemble
(``max_iter`` forward and backward passes) and re-scoring; face extraction is not included
(``dfd bench analyze`` measures it). Each configuration runs in a spawned process after a
one-face warm-up.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from rich.table import Table

from bench.harness import out_console, peak_rss_mb, run_isolated, write_json
from evaluation.attack_runs import AttackSettings


class AttackBenchSettings(BaseModel):
    """What ``dfd bench attack`` times (its options; the defaults are the command line's)."""

    model_config = ConfigDict(extra="forbid")

    #: Model presets of ``dfd models init`` to time (untrained), e.g. tiny and paper.
    presets: list[str]
    #: Also time this model directory.
    model_dir: Path | None = None
    #: Faces per timed attack call.
    faces: int
    #: The attack (PGD norm, budget, iterations; one batch of ``faces``).
    attack: AttackSettings
    device: str
    #: ``torch.set_num_threads`` (0: torch's default).
    torch_threads: int
    json_out: Path | None = None


def _bench_worker(cfg: dict[str, Any], queue: Any) -> None:
    """One configuration in its own process: load, warm up on one face, time ``faces`` faces."""
    import numpy as np
    import torch

    from batch.attack import FaceAttacker
    from pipeline.models import Ensemble, InferenceSettings
    from pipeline.models.manifest import ModelDirectory

    if cfg["torch_threads"]:
        torch.set_num_threads(cfg["torch_threads"])
    with tempfile.TemporaryDirectory(prefix="dfd-bench-attack-") as tmp:
        model_dir = cfg["model_dir"]
        if model_dir is None:
            ModelDirectory(Path(tmp)).init(cfg["preset"])
            model_dir = tmp
        t0 = time.perf_counter()
        settings = InferenceSettings(model_dir=model_dir, backend="torch", device=cfg["device"])
        ensemble = Ensemble.load(settings)
        attack = AttackSettings.model_validate(cfg["attack"])
        attacker = FaceAttacker.for_ensemble(ensemble, attack)
        load_s = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        sides = rng.integers(160, 400, size=(cfg["faces"] + 1, 2))
        crops = [rng.integers(0, 256, size=(int(h), int(w), 3), dtype=np.uint8) for h, w in sides]
        attacker.attack_crops(crops[:1])  # warm-up
        t = time.perf_counter()
        out = attacker.attack_crops(crops[1:])
        seconds = time.perf_counter() - t
    queue.put(
        {
            "label": cfg["label"],
            "members": list(ensemble.member_names),
            "input_size": attacker.input_size,
            "weights": sorted({m.info.weights for m in ensemble.members}),
            "threads": torch.get_num_threads(),
            "faces": cfg["faces"],
            "seconds": seconds,
            "faces_per_s": cfg["faces"] / seconds,
            "load_s": load_s,
            "peak_rss_mb": peak_rss_mb(),
            "linf_max": float(out.linf.max()),
        }
    )


def bench_attack(settings: AttackBenchSettings) -> list[dict[str, Any]]:
    """Time each preset (and the model directory, if given) in turn; print the table and return
    one row per configuration."""
    s = settings
    configs: list[dict[str, Any]] = [
        {"label": p, "preset": p, "model_dir": None} for p in s.presets
    ]
    if s.model_dir is not None:
        configs.append({"label": str(s.model_dir), "preset": None, "model_dir": str(s.model_dir)})
    results = []
    for cfg in configs:
        cfg.update(
            faces=s.faces,
            attack=s.attack.model_dump(),
            device=s.device,
            torch_threads=s.torch_threads,
        )
        results.append(run_isolated(_bench_worker, cfg))
    _print_attack(results, s.attack)
    write_json(s.json_out, results)
    return results


def _print_attack(results: list[dict[str, Any]], attack: AttackSettings) -> None:
    table = Table(
        title=f"attacked faces per second, one actor (PGD norm-{attack.norm}, "
        f"{attack.max_iter} iterations)"
    )
    for col in (
        "models",
        "input",
        "weights",
        "threads",
        "faces",
        "s",
        "faces/s",
        "s/face",
        "load s",
        "peak RSS MB",
    ):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            r["label"],
            str(r["input_size"]),
            ",".join(r["weights"]),
            str(r["threads"]),
            str(r["faces"]),
            f"{r['seconds']:.1f}",
            f"{r['faces_per_s']:.3f}",
            f"{1 / r['faces_per_s']:.2f}",
            f"{r['load_s']:.1f}",
            f"{r['peak_rss_mb']:.0f}",
        )
    out_console.print(table)
