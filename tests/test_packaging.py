"""The project's top-level packages share names with other PyPI distributions (STYLE.md 12)."""

import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["pipeline", "evaluation", "serve", "batch", "bench", "dfd"])
def test_package_resolves_to_this_repository(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().parent == REPO / name


def test_version_is_in_one_place() -> None:
    from dfd.version import __version__

    parts = __version__.split(".")
    assert len(parts) == 3 and all(p.isdigit() for p in parts)
    assert __version__ in (REPO / "CHANGELOG.md").read_text()
