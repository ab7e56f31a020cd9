"""``dfd bench train``: training throughput with Ray Train, images/s for each worker count side by
side (same faces, member and steps), data-loading and compute time per step, peak RSS per worker.

Each configuration trains two epochs into a temporary folder; the second is timed (the first pays
for start-up). The model directory is not written.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from rich.table import Table

from bench.harness import out_console, ray_session, write_json


class TrainBenchSettings(BaseModel):
    """What ``dfd bench train`` compares (its options; the defaults are the command line's)."""

    model_config = ConfigDict(extra="forbid")

    #: A faces folder of ``dfd faces extract``.
    faces: Path
    #: Member to train (manifest or sbi_lite0).
    member: str
    #: Worker counts to compare.
    workers: list[int]
    #: Steps per epoch (the second epoch is timed).
    steps: int
    #: Faces per step and worker.
    batch_size: int
    #: Logical CPUs shared by the workers of a configuration.
    cpus: float
    #: GPUs per worker (0: CPU).
    gpus_per_worker: float
    #: Start from ImageNet weights.
    init_backbone: bool
    #: Model directory (read only).
    model_dir: Path | None = None
    json_out: Path | None = None


def _train_rows(settings: TrainBenchSettings) -> list[dict[str, Any]]:
    """One two-epoch run per worker count, its second epoch's figures as a row."""
    from batch.train import TrainConfig
    from batch.train import train as train_member

    s = settings
    rows = []
    with ray_session(), tempfile.TemporaryDirectory(prefix="dfd-bench-train-") as tmp:
        for n in s.workers:
            config = TrainConfig(
                faces=s.faces,
                member=s.member,
                out=Path(tmp) / f"workers-{n}",
                model_dir=s.model_dir,
                init_backbone=s.init_backbone,
                epochs=2,
                batch_size=s.batch_size,
                max_steps_per_epoch=s.steps,
                workers=n,
                cpus_per_worker=s.cpus / n,
                gpus_per_worker=s.gpus_per_worker,
                torch_threads=max(1, int(s.cpus // n)),
            )
            summary = train_member(config, write=False)
            timed = summary.history[-1]  # the first epoch pays for start-up
            done = max(1.0, timed["train_images"] / s.batch_size)
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
    return rows


def bench_train(settings: TrainBenchSettings) -> list[dict[str, Any]]:
    """Train once per worker count; print the table and return the rows."""
    s = settings
    rows = _train_rows(s)
    base = rows[0]["images_per_s"] or 1.0
    table = Table(title=f"dfd train: {s.member}, batch {s.batch_size}/worker, {s.steps} steps")
    for col in ("workers", "images/s", f"vs {s.workers[0]}", "data ms/step", "compute ms/step",
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
    payload = {"member": s.member, "batch_size": s.batch_size, "steps": s.steps, "rows": rows}
    write_json(s.json_out, payload)
    return rows
