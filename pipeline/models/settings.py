"""How the ensemble runs: where the models are, on which device, with which backend."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

Backend = Literal["auto", "torch", "onnx", "openvino"]
ResolvedBackend = Literal["torch", "onnx", "openvino"]
Precision = Literal["fp32", "fp16", "bf16"]

if TYPE_CHECKING:
    import torch


class InferenceSettings(BaseModel):
    """Validated once at the boundary; defaults run on a laptop CPU."""

    model_config = ConfigDict(extra="forbid")

    model_dir: Path | None = None
    #: "cpu", "cuda", "cuda:1" or "auto" (CUDA when available).
    device: str = "auto"
    #: "auto" picks ONNX Runtime on CPU (the fastest in `dfd bench models`; see backends.py) and
    #: torch on CUDA. "onnx" (ONNX Runtime) and "openvino" both run the exported ONNX file in fp32.
    backend: Backend = "auto"
    #: Autocast precision on CUDA; CPU always runs fp32.
    precision: Precision = "fp16"
    channels_last: bool = True
    require_trained_weights: bool = False
    #: Faces per forward pass.
    batch_size: int = Field(8, ge=1)
    #: Threads of the runtimes that execute the exported ONNX file (ONNX Runtime intra-op threads,
    #: OpenVINO inference threads) per member; 0: the cores divided among the member workers.
    onnx_threads: int = Field(0, ge=0)
    #: Members of an ensemble scored side by side (CPU runtimes only: on CUDA, and for torch on
    #: CPU with its own thread pool, they run in turn); 0: one per core, at most one per member.
    member_workers: int = Field(0, ge=0)
    #: The named ensemble of the manifest to run (``paper``, ``mesonet``, a user's own); None:
    #: ``$DFD_ENSEMBLE``, else the manifest's default (``dfd models use NAME``), else ``auto``.
    ensemble: str | None = None
    #: Run exactly these members (by name) instead of a named ensemble.
    members: list[str] | None = None

    def device_type(self) -> str:
        """``cpu`` or ``cuda``; imports torch only to resolve ``auto`` (a process that runs an
        exported file on the CPU need not load torch at all)."""
        if self.device == "auto":
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device.partition(":")[0]

    def torch_device(self) -> torch.device:
        import torch

        return torch.device(self.device_type() if self.device == "auto" else self.device)

    def resolved_backend(self) -> ResolvedBackend:
        if self.backend != "auto":
            return self.backend
        return "torch" if self.device_type() == "cuda" else "onnx"

    def member_workers_for(self, members: int) -> int:
        """How many of ``members`` members an ensemble scores at once."""
        if self.resolved_backend() == "torch" or self.device_type() != "cpu":
            return 1
        return max(1, min(members, self.member_workers or cpu_budget()))

    def runtime_threads_for(self, members: int) -> int:
        """Threads for each member's runtime when ``members`` members share this process."""
        if self.onnx_threads or self.resolved_backend() == "torch":
            return self.onnx_threads
        return max(1, cpu_budget() // self.member_workers_for(members))


def cpu_budget() -> int:
    """Cores this process may use: torch's intra-op thread count, which follows
    ``OMP_NUM_THREADS`` (Ray sets it to a task's or actor's CPUs) and else the machine's cores.
    Without torch loaded: ``OMP_NUM_THREADS``, else the cores this process may run on."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        return int(threads)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
