"""The ``dfd`` command line."""

from dfd.version import __version__

__all__ = ["__version__"]
