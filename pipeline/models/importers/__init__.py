"""Importers: a detector's checkpoint exactly as its authors publish it -> a member.

Each family module converts the upstream file (its nesting, key prefixes, extra entries) into the
state dict of a network from :mod:`pipeline.models.registry`, and gives the member spec that runs
it with the family's own preprocessing and output convention. ``dfd models import --format
FAMILY FILE`` and ``dfd models fetch`` go through :func:`import_format`.
"""

from pipeline.models.importers.base import FORMATS, ImportedMember, import_format

__all__ = ["FORMATS", "ImportedMember", "import_format"]
