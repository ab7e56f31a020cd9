"""What every importer returns, the table of formats, and reading upstream checkpoint files.

The importers of ``torch.save`` files read them with :func:`read_torch_file` and
:func:`state_dict_of`, convert them with :func:`rename_upstream_state` (which reports a mismatch
in the upstream project's own key names) or check them with :func:`check_member_state`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pipeline.errors import CheckpointError
from pipeline.models.checkpoint import (
    check_state_dict,
    check_state_keys,
    file_sha256,
    format_keys,
)
from pipeline.models.registry import build_network
from pipeline.models.spec import MemberSpec


@dataclass(frozen=True)
class ImportedMember:
    """A converted checkpoint: the spec that runs it (no ``checkpoint``/``sha256`` yet) and the
    state dict of ``build_network(spec)``."""

    spec: MemberSpec
    state: dict[str, Tensor]


#: An importer: ``(file, member name, variant or None) -> ImportedMember``. ``variant`` picks an
#: architecture where the file alone cannot tell (e.g. Meso4 or MesoInception4); importers infer
#: it from the keys when they can, and raise :class:`CheckpointError` naming the file and keys
#: when the file is not of their family.
Importer = Callable[[Path, str, "str | None"], ImportedMember]

#: ``--format`` name -> ``module:function`` of its importer, imported on first use.
FORMATS: dict[str, str] = {
    "mesonet-keras": "pipeline.models.importers.mesonet:import_mesonet",
    "sbi": "pipeline.models.importers.sbi:import_sbi",
    "selimsef": "pipeline.models.importers.selimsef:import_selimsef",
    "icpr2020dfdc": "pipeline.models.importers.icpr:import_icpr",
    "deepfakebench": "pipeline.models.importers.deepfakebench:import_deepfakebench",
    "fsfm": "pipeline.models.importers.fsfm:import_fsfm",
}


def import_format(fmt: str, path: Path, name: str, variant: str | None = None) -> ImportedMember:
    """Convert ``path`` with the importer of ``fmt``."""
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; known: {', '.join(FORMATS)}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    module_name, _, function = FORMATS[fmt].partition(":")
    importer: Importer = getattr(importlib.import_module(module_name), function)
    return importer(path, name, variant)


def read_torch_file(path: Path, family: str, safe_globals: Sequence[Any] = ()) -> dict[str, Any]:
    """The dict a ``torch.save`` file at ``path`` holds, read with ``weights_only=True``.

    ``safe_globals``: the few non-tensor classes the family's files are known to pickle (see
    ``torch.serialization.safe_globals``); anything else is refused rather than executed.
    Raises :class:`CheckpointError` naming the file for an unreadable (e.g. truncated) file or a
    file that holds something other than a dict.
    """
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any decoder failure means the file is unusable
        raise CheckpointError(
            f"{family} checkpoint {path} cannot be read: {type(exc).__name__}: {_reason(exc)}"
        ) from exc
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"{family} checkpoint {path} holds a {type(raw).__name__}, not a dict as {family} saves"
        )
    return raw


def state_dict_of(
    raw: Mapping[str, Any], path: Path, family: str, entry: str | None = None
) -> dict[str, Tensor]:
    """The state dict in ``raw``: ``raw[entry]`` for a training file that wraps it (with the
    optimizer, epoch...), else ``raw`` itself; ``module.`` (DataParallel/DDP) stripped."""
    state = raw[entry] if entry is not None and isinstance(raw.get(entry), dict) else raw
    if not state or not all(isinstance(v, Tensor) for v in state.values()):
        wrapped = f" or {{{entry!r}: state dict, ...}}" if entry else ""
        raise CheckpointError(
            f"checkpoint {path} is not as {family} saves its models: expected a state dict"
            f"{wrapped}; its top-level keys are: {format_keys(list(raw))}"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def rename_upstream_state(
    state: Mapping[str, Tensor],
    names: Mapping[str, str],
    expected: Mapping[str, Tensor],
    what: str,
    dropped: Collection[str] = (),
) -> dict[str, Tensor]:
    """``state`` in upstream key names -> the state dict of a network whose own state is
    ``expected``, by ``names`` (own key -> upstream key, one for each key of ``expected``).

    ``dropped``: upstream keys known to be unused by upstream's forward (dropped where present).
    Raises :class:`CheckpointError` starting with ``what`` (which names the file) and listing the
    missing, unexpected and misshapen keys under their upstream names, so that a user can find
    them in the file; nothing is loaded partially.
    """
    assert set(names) == set(expected), "names must cover the network's keys exactly"
    own = {up: mine for mine, up in names.items()}
    check_state_keys(state, {up: expected[mine] for up, mine in own.items()}, what, dropped)
    return {mine: state[up] for up, mine in own.items()}


def check_member_state(spec: MemberSpec, state: dict[str, Tensor], what: str) -> ImportedMember:
    """``ImportedMember(spec, state)`` once ``state`` loads strictly into ``spec``'s network;
    else :class:`CheckpointError` starting with ``what`` and naming the keys."""
    # Only names and shapes are compared: a network on the meta device has them without
    # allocating or initialising any weights (a ViT-B takes seconds to build on a CPU).
    with torch.device("meta"):
        network = build_network(spec)
    check_state_dict(network, state, what)
    return ImportedMember(spec=spec, state=state)


def upstream_source(upstream: str, path: Path) -> str:
    """A member's ``source``: what upstream calls the weights, then the file and its sha256."""
    return f"{upstream}, {path.name} (sha256 {file_sha256(path)})"


def _reason(exc: Exception) -> str:
    """The informative line of a ``torch.load`` error: for a refused pickle global the line that
    names it (torch's first lines are generic advice to pass ``weights_only=False``)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "Unsupported global" in line]
    if not (named or lines) and isinstance(exc, EOFError):
        return "the file ends early (truncated?)"
    return (named or lines or ["no details"])[0]
