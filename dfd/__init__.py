"""The ``dfd`` command line, the top layer: Typer commands that parse options, build the settings
objects of the layers below (``bench``, ``batch``, ``serve``, ``evaluation``, ``pipeline``) and
call them. Nothing below imports it. The version is re-exported from :mod:`pipeline.version`.
"""

from dfd.version import __version__

__all__ = ["__version__"]
