"""The history's section of a report page: each run's predicted time against what its jobs
took, per workload, with y = x and the share of runs inside their P95.

The numbers are `plan-job history --json`'s (planner.history.report.history_json: this
section's "history" data): for each run, ``predicted`` is what its plan predicted for exactly
the steps its jobs did (their start-up, steps and saves) and ``timed`` those jobs' elapsed
time; a run's P95 for those steps is ``predicted`` scaled by its plan's P95 / P50.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.pages.charts import time_unit
from planner.pages.html import Fact, Number, Section, Table, number
from planner.pages.svg import GREY, PALETTE, Chart, Layout
from planner.units import fmt_duration, fmt_percent


@dataclass(frozen=True)
class Outcome:
    """One run with timed jobs: what was predicted for the steps they did, and what they
    took."""

    index: int  # in history --json's "runs"
    name: str
    workload: str
    predicted_s: float
    p95_s: float
    actual_s: float

    @property
    def inside_p95(self) -> bool:
        return self.actual_s <= self.p95_s


def outcomes(history: dict[str, Any]) -> list[Outcome]:
    found = []
    for index, run in enumerate(history["runs"]):
        predicted, timed = run.get("predicted"), run.get("timed")
        p50, p95 = run.get("p50_s"), run.get("p95_s")
        if not predicted or not timed or not p50 or not p95:
            continue
        found.append(
            Outcome(
                index,
                Path(str(run["run_dir"])).name,
                str(run["workload"]),
                float(predicted),
                float(predicted) * float(p95) / float(p50),
                float(timed),
            )
        )
    return found


def history_section(data: dict[str, Any], cli_text: str) -> Section:
    """``data["history"]`` is history_json's object."""
    history = data["history"]
    found = outcomes(history)
    inside = sum(o.inside_p95 for o in found)
    facts = [
        Fact("database", Number(str(history["history"]))),
        Fact("runs recorded", Number(f"{len(history['runs']):,}"), "the newest, as history shows"),
    ]
    if found:
        ratios = [o.actual_s / o.predicted_s for o in found]
        facts += [
            Fact(
                "inside their P95",
                Number(f"{inside} of {len(found)} ({fmt_percent(inside / len(found))})"),
                "runs with timed jobs whose actual time was at most the P95",
            ),
            Fact(
                "actual / predicted",
                Number(f"median {statistics.median(ratios):.2f}"),
                f"from {min(ratios):.2f} to {max(ratios):.2f}",
            ),
        ]
    charts = [_chart(found)] if found else []
    notes = (
        [] if found else ["no run has timed jobs yet: `plan-job history --update RUN` records them"]
    )
    return Section(
        key="history",
        title="History: predicted against actual",
        intro=(
            "Each run plan-job planned and whose jobs ended, from the history database: what "
            "its plan predicted for the steps its jobs did, against the time they took."
        ),
        facts=facts,
        charts=charts,
        tables=[_table(data, found)] if found else [],
        notes=notes,
        cli_text=cli_text,
    )


def _table(data: dict[str, Any], found: list[Outcome]) -> Table:
    rows: list[list[Number | str]] = []
    for o in found:
        key = f"runs.{o.index}"
        rows.append(
            [
                number(data, "history", f"{key}.run_dir", lambda d: Path(d).name),
                number(data, "history", f"{key}.workload", str),
                number(data, "history", f"{key}.predicted", fmt_duration),
                fmt_duration(o.p95_s),
                number(data, "history", f"{key}.timed", fmt_duration),
                number(data, "history", f"{key}.actual_over_predicted", "{:.2f}".format),
                "yes" if o.inside_p95 else "no",
            ]
        )
    headers = ("run", "workload", "predicted", "P95", "actual", "actual / predicted", "in P95")
    return Table("Runs with timed jobs (the steps they did)", headers, rows)


def _chart(found: list[Outcome]) -> Chart:
    inside = sum(o.inside_p95 for o in found)
    return Chart(
        "history-accuracy",
        "Predicted against actual time, per workload",
        (
            f"One point per run: the time its plan predicted for the steps its jobs did (P50, "
            f"the line to its P95) against the time they took. On the diagonal the plan was "
            f"exact; above it the jobs were slower. {inside} of {len(found)} runs "
            f"({fmt_percent(inside / len(found))}) finished inside their P95 (filled markers; "
            "hollow: over it)."
        ),
        lambda fig, layout: _draw(fig, layout, found),
        height_in=4.4,
    )


def _draw(fig: Any, layout: Layout, found: list[Outcome]) -> None:
    ax = fig.add_subplot()
    largest = max(max(o.actual_s, o.p95_s) for o in found)
    smallest = min(min(o.actual_s, o.predicted_s) for o in found)
    unit = time_unit(largest)
    workloads = sorted({o.workload for o in found})
    for index, workload in enumerate(workloads):
        colour = PALETTE[index % len(PALETTE)]
        mine = [o for o in found if o.workload == workload]
        for o in mine:
            ax.plot(
                [unit.of(o.predicted_s), unit.of(o.p95_s)],
                [unit.of(o.actual_s)] * 2,
                color=colour,
                linewidth=1.0,
                alpha=0.7,
            )
            ax.plot(
                [unit.of(o.predicted_s)],
                [unit.of(o.actual_s)],
                "o",
                color=colour,
                markerfacecolor=colour if o.inside_p95 else "white",
                markersize=7,
            )
        ax.plot([], [], "o", color=colour, label=_short(workload, layout))
    log = largest / max(smallest, 1e-9) > 30
    low, high = (smallest / 1.5 if log else 0.0), largest * 1.1
    ax.plot(
        [unit.of(low), unit.of(high)],
        [unit.of(low), unit.of(high)],
        color=GREY,
        linestyle="--",
        linewidth=1.0,
        label="y = x",
    )
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
        # Numbers people read (0.5, 2, 10), not powers of ten. (Drawing: matplotlib is in.)
        from matplotlib.ticker import FuncFormatter

        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    ax.set_xlim(unit.of(low), unit.of(high))
    ax.set_ylim(unit.of(low), unit.of(high))
    ax.set_xlabel(unit.label("predicted for the steps done (P50)"))
    ax.set_ylabel(unit.label("actual: the jobs' elapsed time"))
    ax.legend(loc="upper left", fontsize="small")


def _short(workload: str, layout: Layout) -> str:
    limit = 28 if layout.narrow else 60
    return workload if len(workload) <= limit else workload[: limit - 1] + "…"
