"""Load on a running service over HTTP: forced image jobs from concurrent clients (throughput and
latency), and a burst of submissions beyond its capacity (how fast it says no). Used by
:mod:`bench.serve` and :mod:`bench.cluster`.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx

from bench.harness import percentile


def serve_round(
    base: str, image: bytes, name: str, concurrency: int, jobs: int, poll_s: float
) -> dict[str, Any]:
    """``jobs`` forced image jobs from ``concurrency`` clients: throughput and latency.

    Latency is the job's own ``created_at -> updated_at`` when done (server clock, so the
    clients' polling interval does not blur it); throughput is jobs over client wall time.
    """

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
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
        "client_p50_s": percentile([o[1] for o in done], 50),
        "job_ids": [o[3] for o in done],
    }


def overload_round(
    base: str, image: bytes, name: str, requests: int, concurrency: int
) -> dict[str, Any]:
    """Fire ``requests`` submissions at once: how fast does the service say no?"""

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
            "p50_s": percentile(times, 50),
            "p99_s": percentile(times, 99),
            "max_s": max(times),
        }
        for status, times in sorted(by_status.items())
    }
