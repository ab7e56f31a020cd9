"""ROC plots drawn with matplotlib: a readable PNG of the asked size, whatever the lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation.metrics import roc_curve_points
from evaluation.plots import PALETTE, RocLine, plot_roc


def _png_size(path: Path) -> tuple[int, int]:
    assert path.is_file()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_roc_plot_is_a_png_of_the_asked_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    lines = []
    # More lines than colours: the palette wraps around instead of failing.
    for k in range(len(PALETTE) + 2):
        curve = roc_curve_points(labels, labels * 0.3 + rng.random(200))
        lines.append(RocLine(f"run {k}", curve.fpr, curve.tpr, None, dashed=k % 2 == 1))
    path = plot_roc(lines, tmp_path / "deeper" / "roc.png", "many curves")
    assert _png_size(path) == (560, 560)


@pytest.mark.parametrize("size", [320, 800])
def test_roc_plot_without_lines_still_draws_the_axes(tmp_path: Path, size: int) -> None:
    width, height = _png_size(plot_roc([], tmp_path / "empty.png", "nothing", size=size))
    assert (width, height) == (size, size) and width > 300 and height > 300
