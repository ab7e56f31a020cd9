"""Fixtures shared by the Ray Data run tests (evaluation, attacks, face extraction)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """One local Ray for the module: 4 logical CPUs (actors ask 0.5 each), no auth, never
    another cluster."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.delenv("RAY_ADDRESS", raising=False)
        import ray

        if ray.is_initialized():
            ray.shutdown()
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                from ray import serve

                serve.shutdown()
            ray.shutdown()
