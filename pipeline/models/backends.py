"""Inference backends: torch eager, ONNX Runtime and OpenVINO, from the same weights.

Why ONNX for the deployable format: ONNX Runtime ran EfficientNet-B4 at 300x300 about 2.3x faster
than torch eager on these CPUs (ANCHORS.md, and `dfd bench models`), the same file loads in Triton,
ONNX Runtime or OpenVINO, and TorchScript (the paper's format) is deprecated in current PyTorch.
Torch eager stays for CUDA (autocast, channels_last) and for everything that needs gradients.

ONNX Runtime is the default CPU path. Measured on the 2-core development VM (full-size members,
one face, one thread each): ONNX Runtime 672 ms for the five members, OpenVINO 768 ms, torch eager
about 1.7x ONNX Runtime's time. Both runtimes spend most of it in fp32 1x1 convolutions near the
machine's fp32 matmul rate (ONNX Runtime's 1x1 convolutions of EfficientNet-B4 ran at 85 GFLOP/s
against 94 GFLOP/s for a large single-thread sgemm), so little is left to gain in fp32. OpenVINO
(``pip install 'dfd-service[openvino]'``) is kept for Intel CPUs, and runs in fp32 only: its CPU
default on AMX/AVX512-BF16 machines is bf16, faster but ~1e-2 off in ensemble probability, far
outside the 1e-4 agreement with eager this project holds every backend to.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipeline.errors import ModelError
from pipeline.models.settings import Precision
from pipeline.models.spec import MemberSpec

if TYPE_CHECKING:  # the exported runtimes run without torch (see pipeline.models.member)
    import torch
    from torch import Tensor, nn

ONNX_OPSET = 17
#: How the model directory's cached exports are laid out (part of their cache key): graph and
#: weights in separate files (see :func:`export_onnx`).
EXPORT_LAYOUT = "external-data-1"

log = logging.getLogger(__name__)


class Runner(Protocol):
    """Normalised ``(N, 3, S, S)`` float32 batch (a tensor, or for the exported runtimes also a
    numpy array) -> ``(N,)`` float32 logits (numpy)."""

    name: str

    def __call__(self, x: Tensor | np.ndarray) -> np.ndarray: ...


class TorchRunner:
    name = "torch"

    def __init__(
        self,
        net: nn.Module,
        device: torch.device,
        precision: Precision = "fp32",
        channels_last: bool = False,
    ) -> None:
        import torch

        self.device = device
        self.channels_last = channels_last and device.type == "cuda"
        self.net = net.to(device).eval()
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.autocast_dtype = (
            {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
            if device.type == "cuda"
            else None
        )

    def __call__(self, x: Tensor | np.ndarray) -> np.ndarray:
        import torch

        x = torch.as_tensor(x).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.autocast_dtype is not None:
                with torch.autocast(device_type="cuda", dtype=self.autocast_dtype):
                    y = self.net(x)
            else:
                y = self.net(x)
        return y.float().cpu().numpy()


_ARENA_LOCK = threading.Lock()
_ARENA_SHARED = False


def _share_cpu_arena(ort: Any) -> None:
    """Register one arena allocator for the CPU with ONNX Runtime's process-wide environment
    (once; sessions opt in with ``session.use_env_allocators``). It grows in powers of two,
    as a session's own arena does (growing by what is asked instead held 1.40 GB against
    1.27 GB and ran 9% slower, one run each)."""
    global _ARENA_SHARED
    with _ARENA_LOCK:
        if _ARENA_SHARED:
            return
        memory = ort.OrtMemoryInfo(
            "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
        )
        ort.create_and_register_allocator(memory, ort.OrtArenaCfg({"arena_extend_strategy": 0}))
        _ARENA_SHARED = True


class OnnxRunner:
    name = "onnx"

    def __init__(self, path: Path, threads: int = 0) -> None:
        import onnxruntime as ort

        _require_file(path, "ONNX Runtime")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Each session has its own intra-op pool whose threads spin after a run; an ensemble runs
        # five sessions in turn, so the idle pools' spinning took the cores from the running one
        # (measured: ensemble faces/s +50% at batch 1, +16% at batch 4 without spinning).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Memory patterns are planned and kept per input shape: with the varying batch sizes of
        # a service or a dataset run the five sessions grew from 3.4 to 5.2 GB (plateau after
        # ~12 shapes) against 3.5 GB without them, at 1.64 vs 1.70 faces/s (full-size paper
        # ensemble, 40 batches of 1-11 crops, 2 cores).
        opts.enable_mem_pattern = False
        # One CPU arena for every session of the process instead of one per session: the five
        # members run in turn, so their activations need the room of the largest, not of all
        # five (full-size paper ensemble, 60 batches of 1-8 crops: 1.39 GB instead of 2.36 GB).
        _share_cpu_arena(ort)
        opts.add_session_config_entry("session.use_env_allocators", "1")
        self.path = path
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: Tensor | np.ndarray) -> np.ndarray:
        (y,) = self.session.run(None, {self.input_name: _input_array(x)})
        return _logits(y)


class OpenVinoRunner:
    """The exported ONNX file compiled by OpenVINO for the CPU, in fp32."""

    name = "openvino"

    def __init__(self, path: Path, threads: int = 0, cache_dir: Path | None = None) -> None:
        try:
            import openvino as ov
        except ImportError as e:
            raise ModelError(
                "backend openvino needs the openvino package: pip install 'dfd-service[openvino]'"
            ) from e

        _require_file(path, "OpenVINO")
        config: dict[str, object] = {
            # fp32 explicitly: the CPU plugin's default on bf16-capable CPUs is bf16 (see above).
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
            # Pinned, every compiled model put its threads on the same first cores: two members
            # scored side by side on one thread each took 2x as long (measured) as unpinned.
            "ENABLE_CPU_PINNING": False,
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if cache_dir is not None and _writable_dir(cache_dir):
            # Compiled blobs keyed by OpenVINO on model, config and version: later loads skip
            # the compilation (measured: 1 s instead of 5-7 s for the five full-size members).
            config["CACHE_DIR"] = str(cache_dir)
        elif cache_dir is not None:
            log.warning("%s is not writable: OpenVINO compiles %s on every load", cache_dir, path)
        self.path = path
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        # An infer request is not thread-safe; Serve may call one replica from several threads.
        self.lock = threading.Lock()

    def __call__(self, x: Tensor | np.ndarray) -> np.ndarray:
        with self.lock:
            out = self.request.infer({0: _input_array(x)}, share_inputs=True, share_outputs=False)
            y = out[0]
        return _logits(y)


def _input_array(x: Tensor | np.ndarray) -> np.ndarray:
    """What the runtimes of the exported file take: contiguous float32 on the CPU."""
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x, dtype=np.float32)
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)


def _logits(y: object) -> np.ndarray:
    return np.asarray(y, dtype=np.float32).reshape(-1)


def _writable_dir(path: Path) -> bool:
    """Create ``path`` if needed; whether this process can write there (a read-only model mount
    makes the cache unusable, which must not make loading fail)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


def _require_file(path: Path, runtime: str) -> None:
    if not path.is_file():
        raise ModelError(
            f"{runtime} needs the exported model {path}, which does not exist "
            "(`dfd models export` writes one; loading an ensemble exports into <model dir>/.cache)"
        )


def export_onnx(
    net: nn.Module, spec: MemberSpec, path: Path, *, separate_weights: bool = False
) -> Path:
    """Export ``net`` to ONNX with a dynamic batch axis; written atomically.

    ``separate_weights`` puts the weights in ``<path>.data`` beside the graph (ONNX external
    data): ONNX Runtime then reads them straight into its tensors instead of parsing them inside
    the graph's protobuf first, which cut the load peak of EfficientNetV2-M's session from
    2.3x to 1.5x its weights (same session, same speed). The graph file is written last, so it
    exists only once its weights do.
    """
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        example = torch.zeros(2, 3, spec.input_size, spec.input_size)
        net = net.to("cpu").eval()
        with warnings.catch_warnings():
            # The TorchScript-based exporter is deprecated but exports these graphs exactly and
            # needs no extra dependency; the dynamo exporter needs onnxscript.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (example,),
                str(staged),
                dynamo=False,
                input_names=["faces"],
                output_names=["logits"],
                dynamic_axes={"faces": {0: "n"}, "logits": {0: "n"}},
                opset_version=ONNX_OPSET,
                do_constant_folding=True,
            )
        if separate_weights:
            import onnx

            data = weights_path(path)
            graph = onnx.load(str(staged))
            staged.unlink()
            onnx.save_model(
                graph,
                str(staged),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data.name,
                size_threshold=1024,
            )
            del graph
            staged_data = Path(tmp) / data.name
            # onnx writes the weights owner-only; readable as the graph is (a shared model dir).
            staged_data.chmod(staged.stat().st_mode & 0o777)
            staged_data.replace(data)
        staged.replace(path)
    return path


def weights_path(onnx_path: Path) -> Path:
    """Where an export with ``separate_weights`` keeps its weights."""
    return onnx_path.with_name(onnx_path.name + ".data")


def export_key(spec: MemberSpec, weights_id: str) -> str:
    """Cache key of an exported file: architecture, weights and exporter versions (torch's from
    the package metadata: the key is computed without importing torch)."""
    torch_version = _package_version("torch")
    raw = f"{spec.architecture_digest()}:{weights_id}:{torch_version}:{ONNX_OPSET}:{EXPORT_LAYOUT}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


@functools.cache
def _package_version(name: str) -> str:
    """An installed package's version, read once (from its metadata, without importing it)."""
    return importlib.metadata.version(name)
