"""ROC curves as PNG pictures, drawn with matplotlib.

A plot is a :class:`matplotlib.figure.Figure` saved by its own Agg canvas, without pyplot: no
global figure state and no GUI backend, so plots can be drawn from several threads. Colours are
the Okabe-Ito palette of the galleries (:mod:`pipeline.gallery`), which stays distinguishable
under the common colour-vision deficiencies; a dashed line tells a frame-level curve from the
video-level one of the same colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.render import DASH

#: Okabe & Ito (2008), blue first as in the galleries; yellow last (faint on white).
PALETTE: tuple[str, ...] = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#E69F00",  # orange
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#F0E442",  # yellow
)

#: Margins around the plot area in pixels (left, right, top, bottom), room for the title,
#: the tick labels and the axis labels.
_MARGINS = (64, 16, 40, 52)
_DPI = 100


@dataclass
class RocLine:
    label: str
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float | None
    dashed: bool = False
    #: Index into the palette; None: the line's position.
    colour: int | None = None


def plot_roc(lines: Sequence[RocLine], path: Path, title: str, size: int = 560) -> Path:
    """Draw ROC curves (false positive rate on x, true positive rate on y) to a PNG.

    Args:
        lines: one curve each; ``fpr``/``tpr`` as returned by
            :func:`evaluation.metrics.roc_curve_points`. Each legend entry carries its AUC.
        path: the PNG to write.
        title: drawn above the plot.
        size: width and height in pixels.
    """
    # Imported here: matplotlib builds its font cache (a file write) on first import.
    from matplotlib.figure import Figure

    left, right, top, bottom = _MARGINS
    figure = Figure(figsize=(size / _DPI, size / _DPI), dpi=_DPI)
    axes = figure.add_axes(
        (left / size, bottom / size, (size - left - right) / size, (size - top - bottom) / size)
    )
    ticks = np.linspace(0.0, 1.0, 6)
    axes.set_xticks(ticks)
    axes.set_yticks(ticks)
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.0)
    axes.grid(color="#e6e6e6", linewidth=0.8)
    axes.set_axisbelow(True)
    axes.tick_params(labelsize=8)
    axes.plot([0, 1], [0, 1], color="#969696", linestyle="--", linewidth=1, label="_chance")
    for i, line in enumerate(lines):
        colour = PALETTE[(i if line.colour is None else line.colour) % len(PALETTE)]
        auc = DASH if line.auc is None else f"{line.auc:.3f}"
        axes.plot(
            line.fpr,
            line.tpr,
            color=colour,
            linestyle="--" if line.dashed else "-",
            linewidth=2,
            label=f"{line.label} (AUC {auc})",
            # Above the axes frame, so a curve along an edge stays visible.
            clip_on=False,
            zorder=3,
        )
    axes.set_xlabel("false positive rate (reals called fake)", fontsize=9)
    axes.set_ylabel("true positive rate (fakes caught)", fontsize=9)
    axes.set_title(title, fontsize=10)
    if lines:
        axes.legend(loc="lower right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=_DPI)
    return path
