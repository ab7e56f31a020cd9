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


#: The lines of ``/proc/PID/status`` that split resident memory: all of it, private anonymous
#: pages (the heap: what grows if a process leaks), file pages (libraries, memory-mapped weights)
#: and shared memory (for a Ray worker, mostly object-store pages it has read).
MEMORY_FIELDS = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem"}


def process_memory_mb(pid: int | str = "self") -> dict[str, float]:
    """Resident memory of a process split by kind, MiB (Linux ``/proc``): ``rss``, ``anon``,
    ``file`` and ``shmem`` (see :data:`MEMORY_FIELDS`). Raises ``OSError`` when the process has
    gone."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in MEMORY_FIELDS:
            out[MEMORY_FIELDS[key]] = int(value.split()[0]) / 1024.0  # kB
    return out


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
