"""Inference backends: torch eager and ONNX Runtime, from the same weights.

Why ONNX for the deployable format: ONNX Runtime ran EfficientNet-B4 at 300x300 about 2.3x faster
than torch eager on these CPUs (ANCHORS.md, and `dfd bench models`), the same file loads in Triton
or any ONNX runtime, and TorchScript (the paper's format) is deprecated in current PyTorch.
Torch eager stays for CUDA (autocast, channels_last) and for everything that needs gradients.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.models.settings import Precision
from pipeline.models.spec import MemberSpec

ONNX_OPSET = 17


class Runner(Protocol):
    """Normalised ``(N, 3, S, S)`` float32 batch -> ``(N,)`` float32 logits (numpy)."""

    name: str

    def __call__(self, x: Tensor) -> np.ndarray: ...


class TorchRunner:
    name = "torch"

    def __init__(
        self,
        net: nn.Module,
        device: torch.device,
        precision: Precision = "fp32",
        channels_last: bool = False,
    ) -> None:
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

    def __call__(self, x: Tensor) -> np.ndarray:
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.autocast_dtype is not None:
                with torch.autocast(device_type="cuda", dtype=self.autocast_dtype):
                    y = self.net(x)
            else:
                y = self.net(x)
        return y.float().cpu().numpy()


class OnnxRunner:
    name = "onnx"

    def __init__(self, path: Path, threads: int = 0) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = path
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: Tensor) -> np.ndarray:
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (y,) = self.session.run(None, {self.input_name: arr})
        return np.asarray(y, dtype=np.float32).reshape(-1)


def export_onnx(net: nn.Module, spec: MemberSpec, path: Path) -> Path:
    """Export ``net`` to ONNX with a dynamic batch axis; written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    example = torch.zeros(2, 3, spec.input_size, spec.input_size)
    net = net.to("cpu").eval()
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated but exports these graphs exactly and needs
        # no extra dependency; the dynamo exporter needs onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (example,),
            str(tmp),
            dynamo=False,
            input_names=["faces"],
            output_names=["logits"],
            dynamic_axes={"faces": {0: "n"}, "logits": {0: "n"}},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
        )
    tmp.replace(path)
    return path


def export_key(spec: MemberSpec, weights_id: str) -> str:
    """Cache key of an exported file: architecture, weights and exporter versions."""
    raw = f"{spec.architecture_digest()}:{weights_id}:{torch.__version__}:{ONNX_OPSET}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]
