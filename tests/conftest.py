"""Session-wide fixtures: where the shared real media live, and isolation from the user's setup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("DFD_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real photos and videos of ``../shared/data`` (read-only, never copied into the repo)."""
    if not (SHARED_DATA / "MANIFEST.csv").is_file():
        pytest.fail(f"real test media not found at {SHARED_DATA}; set DFD_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """One intra-op thread in the test process and its subprocesses.

    Tests share two cores with Ray workers and subprocesses; with torch's default of one thread
    per core, oversubscribed OpenMP spin-waits made MTCNN 5-15x slower here. One thread keeps
    test times predictable; benchmarks (``dfd bench``) use the defaults.
    """
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never read or write the developer's real model directory or settings."""
    home = tmp_path_factory.getbasetemp() / "dfd-home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("DFD_HOME", str(home))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
