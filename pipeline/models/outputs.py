"""Output conventions: whatever a detector's authors made it output, one "fake" logit out.

Detectors disagree on what they output: the paper's members give one logit whose sigmoid is
P(fake); MesoNet's sigmoid is P(real); SBI, DeepfakeBench and FSFM give two softmax logits, with
"fake" at index 1 (SBI, DeepfakeBench) or 0 (FSFM, whose ImageFolder sorted ``fake`` first). The
spec says which; :class:`DetectorNet` applies it inside the network, so every runner (torch, ONNX
Runtime, OpenVINO), the ensemble and the differentiable attack module see one logit ``z`` per
face with ``sigmoid(z) = P(fake)``, and no scoring code knows about families.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.models.spec import MemberSpec


def fake_logit(raw: Tensor, spec: MemberSpec) -> Tensor:
    """Raw output ``(N,)``, ``(N, 1)`` or ``(N, C)`` -> ``(N,)`` logit of "fake".

    For a softmax, ``log p_fake - log(1 - p_fake)`` is computed as ``z_fake - logsumexp(others)``,
    whose sigmoid equals the softmax probability exactly (two classes: ``z_fake - z_real``).
    """
    if spec.output == "softmax":
        # A traced shape comparison is a constant in the graph and warns (TracerWarning); the
        # check is for eager calls, an export's shapes are the traced network's own.
        tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        if not tracing and (raw.ndim != 2 or raw.shape[1] != spec.num_classes):
            raise ValueError(
                f"{spec.name}: expected (N, {spec.num_classes}) logits, got {raw.shape}"
            )
        k = spec.fake_index
        others = [i for i in range(spec.num_classes) if i != k]
        rest = raw[:, others]
        return raw[:, k] - (rest[:, 0] if len(others) == 1 else rest.logsumexp(dim=1))
    z = raw.reshape(raw.shape[0])
    return -z if spec.output == "real-logit" else z


class DetectorNet(nn.Module):
    """A member's raw network plus its output convention: ``(N, 3, S, S)`` -> ``(N,)`` fake logit.

    The state dict is the raw network's own (no ``body.`` prefix), so checkpoints load into it as
    their authors' code (after key renaming by the importer) would load them.
    """

    def __init__(self, body: nn.Module, spec: MemberSpec) -> None:
        super().__init__()
        self.body = body
        self.spec = spec

    def forward(self, x: Tensor) -> Tensor:
        return fake_logit(self.body(x), self.spec)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.body.state_dict(*args, **kwargs)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        return self.body.load_state_dict(state_dict, strict=strict, assign=assign)
