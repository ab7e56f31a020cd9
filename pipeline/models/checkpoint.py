"""Checkpoint files: sha256 verification and strict state-dict loading.

Popular deepfake repositories load with ``strict=False`` and never notice that half the network kept
its random weights. Here every mismatch is an error that names the file and the keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import CheckpointError

if TYPE_CHECKING:  # torch is imported where a state dict is read or written, not to hash a file
    import torch
    from torch import nn

_MAX_KEYS_IN_MESSAGE = 8


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.pt``/``.pth`` (torch, weights only) or ``.safetensors`` state dict onto the CPU."""
    import torch

    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any decoder failure means the file is unusable
        raise CheckpointError(
            f"checkpoint {path} cannot be read: {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    return state


def write_state_dict(module: nn.Module, path: Path) -> str:
    """Save ``module``'s state dict (format from the suffix) and return the file's sha256."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return file_sha256(path)


def format_keys(keys: list[str]) -> str:
    """``keys`` for an error message: the first few in sorted order and how many more."""
    shown = ", ".join(sorted(keys)[:_MAX_KEYS_IN_MESSAGE])
    more = len(keys) - _MAX_KEYS_IN_MESSAGE
    return shown + (f" (+{more} more)" if more > 0 else "")


def load_checkpoint(module: nn.Module, path: Path, expected_sha256: str | None) -> str:
    """Verify ``path`` against ``expected_sha256`` and load it into ``module`` with strict keys.

    Returns the file's sha256. Raises :class:`CheckpointError` naming the file and, for a mismatch,
    the missing, unexpected or wrongly shaped keys.
    """
    actual = verify_checkpoint(path, expected_sha256)
    load_verified(module, path)
    return actual


def load_verified(module: nn.Module, path: Path) -> None:
    """Load ``path``, whose sha256 the caller has checked (:func:`verify_checkpoint`), into
    ``module`` with strict keys (:class:`CheckpointError` naming the keys that do not fit)."""
    state = read_state_dict(path)
    check_state_dict(module, state, f"checkpoint {path}")
    module.load_state_dict(state, strict=True)


def verify_checkpoint(path: Path, expected_sha256: str | None) -> str:
    """The sha256 of ``path``; :class:`CheckpointError` when the file is missing or its sha256
    is not ``expected_sha256`` (when given)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    actual = file_sha256(path)
    if expected_sha256 is not None and actual != expected_sha256:
        raise CheckpointError(
            f"checkpoint {path} has sha256 {actual}, the manifest expects {expected_sha256}; "
            "the file is corrupt or not the one the manifest names"
        )
    return actual


def check_state_dict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Raise :class:`CheckpointError` naming ``what`` and the missing, unexpected or wrongly
    shaped keys unless ``state`` loads into ``module`` with ``strict=True``."""
    check_state_keys(state, module.state_dict(), what)


def check_state_keys(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    what: str,
    ignored: Collection[str] = (),
) -> None:
    """Raise :class:`CheckpointError` starting with ``what`` unless ``state`` has exactly the keys
    of ``expected`` (besides ``ignored`` ones, allowed but not required) with their shapes.

    The message lists the missing, unexpected and misshapen keys under ``state``'s names.
    """
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and k not in ignored]
    shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {format_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {format_keys(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch: {format_keys(shapes)}")
    if problems:
        raise CheckpointError(f"{what} does not fit the network: " + "; ".join(problems))
