"""The plan's section of a report page: run time (P50, P95) and GPU-hours against node count
with the measured counts drawn apart from the modelled ones and the choice marked; the time
model's terms as one stacked bar; the Slurm jobs as a timeline, each job's expected work
against its --time, its saves as ticks, and the gaps before each job where a run has shown
them (its queue wait, with the job's own start up to its first progress line).

The numbers are the Plan's, as `plan-job plan --json` prints them (planner.model.plan_json:
this section's "plan" data); the words are the plan's own (its choice, its notes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from planner.calibration.record import CalibrationRecord
from planner.model.plan import NodeOption, Plan, Segment
from planner.model.report import plan_table
from planner.model.resources import units_of
from planner.pages.charts import legend, time_unit
from planner.pages.html import Fact, Number, Section, Table, number
from planner.pages.svg import (
    BLUE,
    GREEN,
    GREY,
    ORANGE,
    PURPLE,
    SKY,
    VERMILION,
    YELLOW,
    Chart,
    Layout,
)
from planner.units import fmt_duration, fmt_percent, slurm_minutes

MAX_SEGMENT_ROWS = 16  # a 1T-token run may have a hundred jobs: the first ones show the shape
MAX_SAVE_TICKS = 60  # per job; more would draw a solid band


def plan_section(
    plan: Plan,
    data: dict[str, Any],
    record: CalibrationRecord | None = None,
    waits: Mapping[int, float] | None = None,
    intro: str = "",
) -> Section:
    """``data["plan"]`` is plan_json(plan, model); ``record`` tells which node counts a
    calibration ran; ``waits``: the gap before each job in seconds by segment index, where a
    run has shown it (planner.pages.run.queue_waits)."""
    units = units_of(plan.spec)
    facts = [
        Fact(
            "nodes",
            number(data, "plan", "nodes", lambda n: units.shape(int(n))),
            units.reword(plan.choice_reason),
        ),
        Fact(
            "wall time P50",
            number(data, "plan", "wall_p50_s", fmt_duration),
            "half the runs finish sooner",
        ),
        Fact(
            "wall time P95",
            number(data, "plan", "wall_p95_s", fmt_duration),
            "95% of runs finish sooner",
        ),
        Fact(
            units.hours,
            number(data, "plan", "gpu_hours", "{:,.4g}".format),
            "at the P50 wall time",
        ),
        _energy_fact(plan, data),
        Fact(
            "Slurm jobs",
            number(data, "plan", "segments.0.time_limit_minutes", _first_limit(plan)),
            "chained with afterany" if len(plan.segments) > 1 else "one job",
        ),
        Fact(
            "checkpoint every",
            number(data, "plan", "checkpoint_interval_steps", "{:,} steps".format),
            f"{fmt_duration(plan.checkpoint_interval_s)} at the P50 step",
        ),
        Fact(
            "optimizer steps",
            number(data, "plan", "total_steps", "{:,}".format),
            f"{fmt_duration(plan.step_s)} each at P50, {fmt_duration(plan.step_p95_s)} at P95",
        ),
    ]
    if plan.cost is not None:
        facts.insert(5, Fact("cost", number(data, "plan", "cost", "{:,.2f}".format)))
    measured = measured_counts(plan, record)
    charts = [
        _nodes_chart(plan, measured),
        _terms_chart(plan),
        _segments_chart(plan, waits),
    ]
    return Section(
        key="plan",
        title=f"Plan: {plan.spec.name}",
        intro=intro,
        facts=facts,
        charts=charts,
        tables=[_options_table(plan, data, measured)],
        notes=[f"Note: {note}" for note in plan.notes],
        cli_text=plan_table(plan, width=100),
    )


def _energy_fact(plan: Plan, data: dict[str, Any]) -> Fact:
    if plan.energy_kwh is None:
        return Fact(
            "energy", number(data, "plan", "energy_kwh", lambda _: "unknown"), plan.energy_note
        )
    return Fact(
        "energy (GPUs)",
        number(data, "plan", "energy_kwh", "{:,.4g} kWh".format),
        f"at P50; {plan.energy_note}",
    )


def _first_limit(plan: Plan) -> Any:
    count = len(plan.segments)
    jobs = f"{count} job{'s' if count != 1 else ''}"
    return lambda minutes: (
        f"{jobs}, --time={slurm_minutes(int(minutes))}" + (" (the first)" if count > 1 else "")
    )


def measured_counts(plan: Plan, record: CalibrationRecord | None) -> set[int]:
    """Node counts a calibration job ran with all of a node's ranks: measured, not
    modelled. A one-GPU calibration of an 8-GPU node measured none of them."""
    counts = {o.nodes for o in plan.options if o.measured_efficiency is not None}
    if record is not None:
        if record.scaling is not None:
            counts |= {p.nodes for p in record.scaling.points}
        elif record.measurement.ranks >= units_of(plan.spec).per_node:
            counts.add(record.measurement.nodes)
    elif not plan.scaling_model and units_of(plan.spec).per_node == 1:
        counts.add(1)
    return counts


def _options_table(plan: Plan, data: dict[str, Any], measured: set[int]) -> Table:
    units = units_of(plan.spec)
    energy = plan.energy_kwh is not None
    headers = ["nodes", units.devices, "step", "efficiency", "P50", "P95", units.hours_short]
    headers += ["kWh"] if energy else []
    headers += ["", "why"]
    rows: list[list[Number | str]] = []
    for index, option in enumerate(plan.options):
        key = f"plan.options.{index}"
        if not option.feasible:
            rows.append(
                [str(option.nodes), str(option.gpus), *["-"] * (5 + energy), "", option.reason]
            )
            continue
        row: list[Number | str] = [
            ("* " if option.chosen else "") + str(option.nodes),
            str(option.gpus),
            number(data, "plan", f"{key}.step_s", fmt_duration),
            number(data, "plan", f"{key}.efficiency", fmt_percent),
            number(data, "plan", f"{key}.wall_p50_s", fmt_duration),
            number(data, "plan", f"{key}.wall_p95_s", fmt_duration),
            number(data, "plan", f"{key}.gpu_hours", "{:,.4g}".format),
        ]
        if energy:
            row.append(number(data, "plan", f"{key}.energy_kwh", _kwh))
        row += ["measured" if option.nodes in measured else "modelled"]
        row.append(units.reword(option.reason))
        rows.append(row)
    return Table("Every node count the plan weighed (* the choice)", headers, rows, True)


def _kwh(value: float | None) -> str:
    return "-" if value is None else f"{value:,.4g}"


# -- run time and GPU-hours against node count -----------------------------------------------


def _nodes_chart(plan: Plan, measured: set[int]) -> Chart:
    units = units_of(plan.spec)
    feasible = [o for o in plan.options if o.feasible]
    chosen = next(o for o in plan.options if o.chosen)
    caption = (
        f"Wall time at P50 (solid) and P95 (dashed), and {units.hours} at P50, for every "
        f"node count the plan could run on. Filled markers: a calibration job ran at that "
        f"count; hollow: modelled from the calibration ({plan.scaling_model or 'ring all-reduce'}"
        f"). Chosen: {units.shape(chosen.nodes)}, {units.reword(plan.choice_reason)}."
    )
    if len(feasible) < len(plan.options):
        caption += (
            f" {len(plan.options) - len(feasible)} node count(s) not possible: see the table."
        )
    return Chart(
        "plan-nodes",
        f"Run time and {units.hours} against node count",
        caption,
        lambda fig, layout: _draw_nodes(fig, layout, plan, feasible, measured),
        height_in=4.6,
    )


def _draw_nodes(
    fig: Any, layout: Layout, plan: Plan, options: Sequence[NodeOption], measured: set[int]
) -> None:
    units = units_of(plan.spec)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    nodes = [o.nodes for o in options]
    unit = time_unit(max((o.wall_p95_s or 0.0) for o in options))
    p50 = [unit.of(o.wall_p50_s or 0.0) for o in options]
    p95 = [unit.of(o.wall_p95_s or 0.0) for o in options]
    top.plot(nodes, p50, color=BLUE, label="P50")
    top.plot(nodes, p95, color=BLUE, linestyle="--", linewidth=1.1, label="P95")
    hours = [o.gpu_hours or 0.0 for o in options]
    bottom.plot(nodes, hours, color=ORANGE, label=f"{units.hours} (P50)")
    for ax, values, colour in ((top, p50, BLUE), (top, p95, BLUE), (bottom, hours, ORANGE)):
        _markers(ax, nodes, values, colour, measured)
    chosen = next(o for o in options if o.chosen)
    for ax in (top, bottom):
        ax.axvline(chosen.nodes, color=GREEN, linewidth=5, alpha=0.25, zorder=0)
    top.annotate(
        f"chosen: {chosen.nodes}",
        (chosen.nodes, unit.of(chosen.wall_p50_s or 0.0)),
        xytext=(6, 8),
        textcoords="offset points",
        color="#1a6b4f",
        fontweight="bold",
    )
    # Legend entries for the marker styles, drawn once.
    top.plot([], [], "o", color=GREY, label="measured")
    top.plot([], [], "o", markerfacecolor="white", color=GREY, label="modelled")
    top.set_ylabel(unit.label("wall time"))
    bottom.set_ylabel(units.hours)
    bottom.set_xlabel("nodes")
    top.set_ylim(bottom=0)
    bottom.set_ylim(bottom=0)
    if len(nodes) <= 16:
        bottom.set_xticks(nodes)
    legend(top, layout, columns=4, loc="upper right")


def _markers(
    ax: Any, nodes: Sequence[int], values: Sequence[float], colour: str, measured: set[int]
) -> None:
    for n, value in zip(nodes, values, strict=True):
        filled = n in measured
        ax.plot(
            [n],
            [value],
            "o",
            color=colour,
            markerfacecolor=colour if filled else "white",
            markersize=6,
            zorder=3,
        )


# -- the time model's terms ------------------------------------------------------------------

_TERMS = (
    ("start-up", "startup_s", SKY),
    ("warm-up", "warmup_s", YELLOW),
    ("compile", "compile_s", PURPLE),
    ("steps", "steps_s", BLUE),
    ("checkpoints", "checkpoints_s", ORANGE),
    ("evaluation", "evals_s", GREEN),
    ("resumes", "resumes_s", GREY),
    ("interruptions", "failures_s", VERMILION),
)


def terms(plan: Plan) -> list[tuple[str, float, str]]:
    """The P50's terms (name, seconds, colour) that are not zero: they sum to the P50."""
    return [
        (name, float(getattr(plan.wall, field)), colour)
        for name, field, colour in _TERMS
        if getattr(plan.wall, field) > 0
    ]


def _terms_chart(plan: Plan) -> Chart:
    parts = ", ".join(f"{name} {fmt_duration(s)}" for name, s, _ in terms(plan))
    return Chart(
        "plan-terms",
        "What the P50 wall time is made of",
        (
            f"The time model's terms at the chosen node count: {parts}; P50 "
            f"{fmt_duration(plan.wall.p50_s)}. The P95 ({fmt_duration(plan.wall.p95_s)}, the "
            "line) adds the calibration's CI, the run-to-run spread and step noise."
        ),
        lambda fig, layout: _draw_terms(fig, layout, plan),
        height_in=2.4,
    )


def _draw_terms(fig: Any, layout: Layout, plan: Plan) -> None:
    ax = fig.add_subplot()
    unit = time_unit(plan.wall.p95_s)
    left = 0.0
    for name, seconds, colour in terms(plan):
        width = unit.of(seconds)
        share = seconds / plan.wall.p50_s if plan.wall.p50_s > 0 else 0.0
        ax.barh(0, width, left=left, color=colour, height=0.5, label=f"{name} {fmt_percent(share)}")
        left += width
    ax.axvline(unit.of(plan.wall.p95_s), color="black", linestyle="--", linewidth=1.2)
    ax.annotate(
        "P95",
        (unit.of(plan.wall.p95_s), 0.3),
        xytext=(3, 0),
        textcoords="offset points",
        fontsize="small",
    )
    ax.set_yticks([])
    ax.set_ylim(-0.4, 0.45)
    ax.set_xlim(0, unit.of(plan.wall.p95_s) * 1.08)
    ax.set_xlabel(unit.label("wall time at P50"))
    ax.spines["left"].set_visible(False)
    ax.grid(axis="y", visible=False)
    # Above the bar, where its labels have the figure's width.
    ax.legend(
        loc="lower left",
        bbox_to_anchor=(0.0, 1.02),
        ncol=2 if layout.narrow else 4,
        fontsize="small",
        borderaxespad=0.0,
    )


# -- the Slurm jobs as a timeline ------------------------------------------------------------


def segment_spans(plan: Plan) -> list[tuple[Segment, float, float]]:
    """(segment, its --time in s, the time it is expected to run at P50 in s): all but the
    last run until their stop signal; the last runs its start (a resume after the first)
    and the steps left at the P50 pace, their saves and evaluations included. The P50's
    expected cost of interruptions is in no job."""
    wall = plan.wall
    per_step = (wall.steps_s + wall.checkpoints_s + wall.evals_s) / max(plan.total_steps, 1)
    spans = []
    done = 0
    for index, segment in enumerate(plan.segments):
        limit_s = segment.time_limit_minutes * 60.0
        if index < len(plan.segments) - 1:
            expected = max(limit_s - plan.signal_lead_s, 0.0)
            done += segment.steps_p50
        else:
            start = wall.startup_s + wall.warmup_s + wall.compile_s if index == 0 else plan.resume_s
            expected = min(start + (plan.total_steps - done) * per_step, limit_s)
        spans.append((segment, limit_s, expected))
    return spans


def _segments_chart(plan: Plan, waits: Mapping[int, float] | None) -> Chart:
    count = len(plan.segments)
    shown = min(count, MAX_SEGMENT_ROWS)
    waits_text = (
        "hatched: the gap before each job as the run showed it, from its submission (or the "
        "job before it ending) to its first progress line: the queue wait, with the job's "
        "start"
        if waits
        else "queue waits are not known before the jobs run (not drawn)"
    )
    return Chart(
        "plan-segments",
        "The Slurm jobs: expected work against each --time",
        (
            f"Each job's --time (outline) and the time it is expected to run at P50 (filled): "
            f"all but the last run until their stop signal, {plan.signal_lead_s} s before the "
            f"limit. Ticks: checkpoint saves, every {plan.checkpoint_interval_steps:,} steps; "
            f"{waits_text}." + (f" The first {shown} of {count} jobs." if shown < count else "")
        ),
        lambda fig, layout: _draw_segments(fig, layout, plan, waits or {}),
        height_in=max(1.8, 0.9 + 0.38 * shown),
    )


def _draw_segments(fig: Any, layout: Layout, plan: Plan, waits: Mapping[int, float]) -> None:
    ax = fig.add_subplot()
    spans = segment_spans(plan)[:MAX_SEGMENT_ROWS]
    total = 0.0
    starts = []
    for segment, _limit_s, expected_s in spans:
        total += waits.get(segment.index, 0.0)
        starts.append(total)
        total += expected_s
    end = max(start + limit for start, (_, limit, _e) in zip(starts, spans, strict=True))
    unit = time_unit(end)
    step_share = plan.checkpoint_interval_s / max(plan.checkpoint_interval_steps, 1)
    done = 0
    labels = []
    for row, ((segment, limit_s, expected_s), start) in enumerate(zip(spans, starts, strict=True)):
        y = -row
        wait = waits.get(segment.index, 0.0)
        if wait > 0:
            ax.barh(
                y,
                unit.of(wait),
                left=unit.of(start - wait),
                height=0.55,
                color="white",
                edgecolor=GREY,
                hatch="////",
                linewidth=0.6,
                label="queue and start" if "wait" not in labels else None,
            )
            labels.append("wait")
        ax.barh(
            y,
            unit.of(limit_s),
            left=unit.of(start),
            height=0.55,
            color="white",
            edgecolor=BLUE,
            linewidth=1.0,
            label="--time" if row == 0 else None,
        )
        ax.barh(
            y,
            unit.of(expected_s),
            left=unit.of(start),
            height=0.55,
            color=SKY,
            alpha=0.85,
            label="expected work (P50)" if row == 0 else None,
        )
        overhead = (
            plan.wall.startup_s + plan.wall.warmup_s + plan.compile_s if row == 0 else plan.resume_s
        )
        ticks = _save_ticks(plan, done, segment.steps_p50, overhead, step_share, expected_s)
        if ticks:
            ax.plot(
                [unit.of(start + t) for t in ticks],
                [y] * len(ticks),
                "|",
                color="black",
                markersize=9,
                label="save" if row == 0 else None,
            )
        done += segment.steps_p50
    ax.set_yticks([-row for row in range(len(spans))])
    ax.set_yticklabels([f"job {s.index}" for s, _, _ in spans])
    ax.set_xlabel(unit.label("time from the first job's start"))
    ax.set_xlim(0, unit.of(end) * 1.03)
    ax.set_ylim(-len(spans) + 0.4, 0.7)
    ax.grid(axis="y", visible=False)
    legend(ax, layout, columns=4, loc="lower right")


def _save_ticks(
    plan: Plan,
    first_step: int,
    steps: int,
    overhead_s: float,
    step_share_s: float,
    expected_s: float,
) -> list[float]:
    """Seconds into a job of its saves: every multiple of the interval it passes, and its
    stop save at the end; none when there are too many to tell apart."""
    interval = plan.checkpoint_interval_steps
    if interval <= 0:
        return []
    first = (first_step // interval + 1) * interval
    saves = range(first, first_step + steps + 1, interval)
    if len(saves) > MAX_SAVE_TICKS:
        return []
    ticks = [overhead_s + (k - first_step) * step_share_s for k in saves]
    return [t for t in ticks if t <= expected_s] + [expected_s]
