"""What every figure of the report shares: the time unit an axis reads best in, and a legend
that sits beside the axes on a desktop and under them on a phone. Torch- and matplotlib-free
(the axes come in as arguments)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from planner.pages.svg import Layout


@dataclass(frozen=True)
class TimeUnit:
    """Seconds shown in ms, s, min, h or days: the largest unit that keeps the axis above 1."""

    name: str
    seconds: float

    def of(self, seconds: float) -> float:
        return seconds / self.seconds

    def label(self, what: str) -> str:
        return f"{what} ({self.name})"


_UNITS = (
    TimeUnit("days", 86400.0),
    TimeUnit("h", 3600.0),
    TimeUnit("min", 60.0),
    TimeUnit("s", 1.0),
    TimeUnit("ms", 1e-3),
)


def time_unit(largest_s: float) -> TimeUnit:
    """The unit for an axis whose largest value is ``largest_s`` seconds: at least 2 of it
    (90 s reads as 90 s, 150 s as 2.5 min)."""
    for unit in _UNITS:
        if largest_s >= 2 * unit.seconds:
            return unit
    return _UNITS[-1]


def legend(ax: Any, layout: Layout, columns: int = 3, loc: str = "best") -> None:
    """Inside the axes at ``loc`` on a desktop; under the figure on a phone, where the plot is
    too narrow to share (constrained layout keeps room for it)."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    if layout.narrow:
        ax.figure.legend(
            handles, labels, loc="outside lower center", ncol=min(2, len(handles)), fontsize="small"
        )
    else:
        ax.legend(loc=loc, ncol=min(columns, len(handles)), fontsize="small")


def thin(points: list[Any], limit: int = 4000) -> list[Any]:
    """At most about ``limit`` points, evenly taken, the last one kept: a million-step log
    draws the same line from a few thousand, in a page a thousand times smaller."""
    if len(points) <= limit:
        return points
    every = -(-len(points) // limit)
    kept = points[::every]
    if kept[-1] is not points[-1]:
        kept.append(points[-1])
    return kept
