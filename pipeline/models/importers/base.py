"""What every importer returns, and the table of formats."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from pipeline.errors import CheckpointError
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
