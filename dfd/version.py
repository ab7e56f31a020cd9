"""The service version, re-exported for the command line; it lives in :mod:`pipeline.version`, the
base layer, so every package can report it without importing the command line."""

from pipeline.version import __version__

__all__ = ["__version__"]
