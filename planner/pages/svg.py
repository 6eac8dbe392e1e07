"""A figure as inline SVG, drawn twice: wide for a desktop and narrow for a phone, the page
showing the one that fits (planner.pages.html). matplotlib is imported here, on the first
figure, so nothing else of plan-job pays for it.

Deterministic output: the Agg backend, glyphs drawn as paths (svg.fonttype "path": the
figure looks the same on every machine, with no font to fetch), a fixed svg.hashsalt for
the ids matplotlib makes, and no date in the metadata. Each SVG's ids are prefixed with its
figure's key, so several in one page never share one; it gets a <title> for screen readers
and scales to its container (a viewBox, width 100%).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Okabe and Ito's palette: told apart with every common colour-vision deficiency.
BLUE = "#0072B2"
ORANGE = "#E69F00"
GREEN = "#009E73"
VERMILION = "#D55E00"
SKY = "#56B4E9"
PURPLE = "#CC79A7"
YELLOW = "#F0E442"
GREY = "#7f7f7f"
PALETTE = (BLUE, ORANGE, GREEN, VERMILION, PURPLE, SKY, YELLOW, GREY)

_STYLE: dict[str, Any] = {
    "svg.fonttype": "path",
    "svg.hashsalt": "plan-job",
    "font.family": "DejaVu Sans",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e6e6e6",
    "grid.linewidth": 0.7,
    "axes.edgecolor": "#555555",
    "axes.labelcolor": "#222222",
    "axes.titlelocation": "left",
    "axes.titleweight": "bold",
    "xtick.color": "#444444",
    "ytick.color": "#444444",
    "legend.frameon": False,
    "lines.linewidth": 1.6,
    "path.simplify": True,
}


@dataclass(frozen=True)
class Layout:
    """The size a figure is drawn at: a desktop column, or a phone's width."""

    narrow: bool

    @property
    def width_in(self) -> float:
        return 4.6 if self.narrow else 9.6

    @property
    def font_pt(self) -> float:
        return 9.0 if self.narrow else 9.5

    def size(self, height: float) -> tuple[float, float]:
        """``height`` is the wide figure's in inches; a narrow one is a little taller than
        its share, for the legend that moves under the axes."""
        return (self.width_in, height * (0.95 if self.narrow else 1.0))


WIDE = Layout(False)
NARROW = Layout(True)


@dataclass(frozen=True)
class Chart:
    """One figure of a page: ``draw`` fills a matplotlib Figure for a Layout."""

    key: str  # unique in the page: the <figure>'s id and the SVG ids' prefix
    title: str  # the figure's accessible title (the SVG's <title>, the caption's heading)
    caption: str  # what it shows and where its numbers come from
    draw: Callable[[Figure, Layout], None]
    height_in: float = 3.6


def matplotlib_module() -> Any:
    """matplotlib with the Agg backend: no display, nothing interactive."""
    import matplotlib

    matplotlib.use("Agg")
    return matplotlib


def render(chart: Chart, layout: Layout) -> str:
    """The chart as an <svg> element for the page."""
    matplotlib = matplotlib_module()
    from matplotlib.figure import Figure

    style = {**_STYLE, "font.size": layout.font_pt, "axes.prop_cycle": _cycle(matplotlib)}
    with matplotlib.rc_context(style):
        fig = Figure(figsize=layout.size(chart.height_in), layout="constrained")
        chart.draw(fig, layout)
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": "plan-job"})
    suffix = "n" if layout.narrow else "w"
    return inline(buffer.getvalue(), f"{chart.key}-{suffix}", chart.title)


def _cycle(matplotlib: Any) -> Any:
    return matplotlib.cycler(color=list(PALETTE))


_ID = re.compile(r'\bid="([^"]+)"')


def inline(svg: str, prefix: str, title: str) -> str:
    """matplotlib's SVG document as an element of an HTML page: no XML prolog, its ids
    prefixed, a <title>, and a size that follows the page (the viewBox keeps its shape)."""
    start = svg.index("<svg")
    body = svg[start:]
    ids = set(_ID.findall(body))
    if ids:
        names = "|".join(re.escape(name) for name in sorted(ids, key=len, reverse=True))
        body = re.sub(
            rf'(\bid="|url\(#|href="#)({names})(?=[")])',
            lambda m: f"{m.group(1)}{prefix}-{m.group(2)}",
            body,
        )
    head_end = body.index(">") + 1
    head = body[:head_end]
    head = re.sub(r'\s(width|height)="[^"]*"', "", head, count=2)
    title_id = f"{prefix}-title"
    head = head.replace(
        "<svg",
        f'<svg class="chart" role="img" aria-labelledby="{title_id}" '
        'preserveAspectRatio="xMidYMid meet"',
        1,
    )
    return f'{head}<title id="{title_id}">{escape(title)}</title>{body[head_end:]}'.rstrip() + "\n"
