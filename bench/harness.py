"""What the benchmarks share: each configuration in its own spawned process (so its peak RSS is
its own), peak RSS, percentiles, a local Ray session when none is connected, and where the figures
go (tables on the terminal, JSON in a file).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import resource
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

#: The tables and summary lines of a benchmark (stdout).
out_console = Console()
#: Progress and spinners (stderr, one line each, never wrapped).
err_console = Console(stderr=True, soft_wrap=True)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``; NaN when there are none."""
    return float(np.percentile(values, q)) if values else float("nan")


def run_isolated(target: Callable[[Any, Any], None], cfg: Any) -> dict[str, Any]:
    """Run ``target(cfg, queue)`` in a spawned process and return what it puts on the queue."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(cfg, queue))
    proc.start()
    result: dict[str, Any] = queue.get()
    proc.join()
    return result


@contextlib.contextmanager
def ray_session() -> Iterator[None]:
    """Local Ray (no dashboard, no worker logs on the driver) unless this process is connected
    already; shuts down only a session it started."""
    import ray

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        if started_ray:
            ray.shutdown()


def write_json(path: Path | None, figures: Any) -> None:
    """Write ``figures`` as indented JSON to ``path`` (nothing when ``path`` is None)."""
    if path is not None:
        path.write_text(json.dumps(figures, indent=2, default=str) + "\n")
