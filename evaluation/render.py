"""How evaluation documents are written: tables, number formats and the Markdown / HTML pages.

One owner for what the report (:mod:`evaluation.report`), the robustness report
(:mod:`evaluation.robustness`) and the model card (:mod:`evaluation.model_card`) share:

* :class:`Table`, one structure rendered to Markdown or HTML;
* number formats: :func:`pct` (``70.31%``), :func:`number`, :func:`pp_change`, and
  :data:`DASH` wherever a figure is missing (never a zero standing in for it);
* dataset display names and order (:data:`DATASET_NAMES`, as paper Table 1 spells them);
* a document as :data:`Items`, rendered by :func:`render_markdown` and :func:`render_html`, and
  the standalone page around an HTML body (:func:`html_page`, one stylesheet :data:`CSS`).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Stands for a figure that is missing or undefined.
DASH = "—"

#: Display names and order of the datasets (paper Table 1 spells them this way).
DATASET_NAMES: dict[str, str] = {
    "ffpp": "FaceForensics++",
    "celebdf": "CelebDF",
    "wdf": "WildDeepFake",
    "dfdc": "DFDC",
    "csv": "CSV manifest",
}


def dataset_name(dataset: str) -> str:
    """A dataset's display name (its key when it has none)."""
    return DATASET_NAMES.get(dataset, dataset)


def dataset_order(dataset: str) -> tuple[int, str]:
    """Sort key: the datasets of :data:`DATASET_NAMES` in its order, then the rest by name."""
    order = list(DATASET_NAMES)
    return (order.index(dataset) if dataset in order else len(order), dataset)


# ----------------------------------------------------------------------------------------------
# Numbers


def pct(value: float | None, digits: int = 2, unit: str = "%") -> str:
    """A fraction as a percentage, as the paper prints BA: ``0.7031`` -> ``70.31%``."""
    return DASH if value is None else f"{100 * value:.{digits}f}{unit}"


def number(value: float | None, digits: int = 3) -> str:
    """A figure with ``digits`` decimals; ``∞`` for infinity (PSNR of an unchanged face)."""
    if value is None:
        return DASH
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}f}"


def pp_change(after: float | None, before: float | None) -> str:
    """The change between two fractions in percentage points: ``+1.25 pp``."""
    if after is None or before is None:
        return DASH
    return f"{100.0 * (after - before):+.2f} pp"


# ----------------------------------------------------------------------------------------------
# Tables


@dataclass
class Table:
    """A table with an optional caption and notes, rendered as Markdown or HTML.

    ``align``: the Markdown separator row aligns the first column left and the others right;
    False writes a plain ``|---|`` row (the robustness report's tables).
    """

    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    notes: list[str] = field(default_factory=list)
    align: bool = True

    def markdown(self) -> str:
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        out = []
        if self.caption:
            out += [f"**{self.caption}**", ""]
        out.append(line(self.headers))
        if self.align:
            out.append(
                "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(self.headers))) + "|"
            )
        else:
            out.append("|" + "---|" * len(self.headers))
        out += [line(r) for r in self.rows]
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"

    def html(self) -> str:
        esc = html.escape
        head = "".join(f"<th>{esc(h)}</th>" for h in self.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in self.rows
        )
        caption = f"<caption>{esc(self.caption)}</caption>" if self.caption else ""
        notes = (
            "<ul class='notes'>" + "".join(f"<li>{esc(n)}</li>" for n in self.notes) + "</ul>"
            if self.notes
            else ""
        )
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"


# ----------------------------------------------------------------------------------------------
# Documents

#: A document as ``(kind, content)`` items; kinds: h1, h2, h3, p, warn, table (a :class:`Table`),
#: img (a :class:`~pathlib.Path`), list (of strings).
Items = Sequence[tuple[str, Any]]


def render_markdown(items: Items, base: Path) -> str:
    """Markdown of ``items``; image paths are written relative to ``base``."""
    parts = []
    for kind, content in items:
        if kind in ("h1", "h2", "h3"):
            parts.append("#" * int(kind[1]) + f" {content}\n")
        elif kind == "p":
            parts.append(f"{content}\n")
        elif kind == "warn":
            parts.append(f"> **WARNING**: {content}\n")
        elif kind == "table":
            parts.append(content.markdown())
        elif kind == "img":
            parts.append(f"![{content.stem}]({content.relative_to(base).as_posix()})\n")
        elif kind == "list":
            parts.append("\n".join(f"- {x}" for x in content) + "\n")
    return "\n".join(parts)


def render_html(items: Items, base: Path, title: str) -> str:
    """A standalone HTML page of ``items``; image paths are written relative to ``base``."""
    esc = html.escape
    parts = []
    for kind, content in items:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{esc(content)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{esc(content)}</p>")
        elif kind == "warn":
            parts.append(f"<div class='warn'><strong>WARNING</strong>: {esc(content)}</div>")
        elif kind == "table":
            parts.append(content.html())
        elif kind == "img":
            src = esc(content.relative_to(base).as_posix())
            parts.append(f"<img src='{src}' alt='{esc(content.stem)}'>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{esc(x)}</li>" for x in content) + "</ul>")
    return html_page(title, "\n".join(parts))


#: The one stylesheet of every page; ``.strip`` and ``figure`` lay out the robustness report's
#: example faces.
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
caption { font-weight: bold; text-align: left; padding: 0.3em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td:first-child { white-space: nowrap; }
.warn { background: #fff3cd; border: 1px solid #e0b000; padding: 0.6em; margin: 0.5em 0; }
.notes { font-size: 0.85em; color: #555; }
img { max-width: 560px; margin: 0.5em 1em 0.5em 0; }
.strip { display: flex; gap: 12px; align-items: flex-start; margin: 0.5em 0; }
figure { margin: 0; text-align: center; font-size: 0.85em; }
figure img { width: 160px; height: 160px; margin: 0; image-rendering: pixelated;
  border: 1px solid #999; }
"""


def html_page(title: str, body: str) -> str:
    """A standalone page (no script, no external resource) around an HTML ``body``."""
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )
