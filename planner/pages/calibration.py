"""The calibration's section of a report page: step time against step index with the warm-up
cut, the slowdowns and the steady mean's 95% CI; and the CI's half-width as the job's stop
rule saw it grow narrower, against its target, to where the job stopped.

Everything is read from the CalibrationRecord (the YAML `plan-job calibrate` wrote, whose
dict is this section's "calibration" data): the per-step times, MSER's cut, the slowdowns
and the CI. The CI curve is recomputed from the recorded times with the job's own rule
(jobs.calibration.steps.ci_if_ready), at up to CI_POINTS step counts.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from jobs.calibration.steps import ci_if_ready
from planner.calibration.record import CalibrationRecord
from planner.calibration.report import calibration_table
from planner.pages.charts import legend, thin, time_unit
from planner.pages.html import Fact, Number, Section, number
from planner.pages.svg import BLUE, GREEN, GREY, ORANGE, VERMILION, Chart, Layout
from planner.units import fmt_bytes, fmt_count, fmt_duration, fmt_percent

CI_POINTS = 160  # step counts the CI curve is recomputed at (log-spaced): ~1 s for 10k steps

_STOPPED = {
    "ci_target": "the CI reached its target",
    "step_cap": "calibration.max_steps (before the CI target)",
    "time_cap": "calibration.max_seconds (before the CI target)",
    "exited": "the command ended by itself",
}


def calibration_section(record: CalibrationRecord, path: str, data: dict[str, Any]) -> Section:
    """``data["calibration"]`` is record.to_dict(): the numbers shown are read from it."""
    m = record.measurement
    facts = [
        Fact("device", Number(f"{m.device_name} ({m.device_kind})"), f"on {m.host}"),
        Fact(
            "steady step time",
            number(data, "calibration", "measurement.step_mean_s", fmt_duration),
            f"± {fmt_percent(m.step_ci_relative)} (95% CI) over {m.steady_steps:,} steps",
        ),
        Fact(
            "steps timed",
            number(data, "calibration", "measurement.steps_run", "{:,}".format),
            "stopped by " + _STOPPED.get(m.stopped_by, m.stopped_by),
        ),
        Fact(
            "warm-up cut",
            number(data, "calibration", "measurement.warmup_steps", _steps),
            f"{fmt_duration(m.warmup_extra_s)} beyond steady in a fresh process",
        ),
        Fact(
            "throughput",
            number(data, "calibration", "derived.samples_per_s", _per_s("samples")),
            f"{fmt_count(record.derived.tokens_per_s)} tokens/s",
        ),
        Fact(
            "start-up",
            number(data, "calibration", "measurement.startup_s", fmt_duration),
            "process start to its first step",
        ),
        Fact(
            "checkpoint save",
            number(data, "calibration", "measurement.checkpoint_save_s", fmt_duration),
            f"load {fmt_duration(m.checkpoint_load_s)}, {fmt_bytes(m.checkpoint_bytes)}",
        ),
        Fact(
            "peak memory",
            number(data, "calibration", "measurement.peak_memory_bytes", fmt_bytes),
            m.memory_kind.replace("_", " "),
        ),
    ]
    if m.device_kind == "cuda":
        facts.append(_power_fact(record, data))
    charts = [_steps_chart(record)]
    if len(m.step_times_s) >= 2:
        charts.append(_ci_chart(record))
    return Section(
        key="calibration",
        title=f"Calibration: {record.spec.name}",
        intro=(
            f"What `plan-job calibrate` measured on {m.host}, recorded {record.created} ({path})."
        ),
        facts=facts,
        charts=charts,
        cli_text=calibration_table(record, path, width=100),
    )


def _power_fact(record: CalibrationRecord, data: dict[str, Any]) -> Fact:
    m = record.measurement
    if not m.power_w:
        return Fact("GPU power", Number("unknown"), m.power_source or "not read")
    watts = number(
        data, "calibration", "measurement.power_w", lambda w: ", ".join(f"{x:.0f}" for x in w)
    )
    idle = ", ".join(f"{w:.0f}" for w in m.idle_power_w) or "unknown"
    return Fact("GPU power (W per GPU)", watts, f"median over the steady steps; idle {idle} W")


def _steps(count: int) -> str:
    return f"{count:,} step{'s' if count != 1 else ''}"


def _per_s(what: str) -> Any:
    return lambda value: f"{fmt_count(value)} {what}/s"


# -- step time against step ------------------------------------------------------------------


def _steps_chart(record: CalibrationRecord) -> Chart:
    m = record.measurement
    caption = (
        f"Each timed step of the calibration (its data, the step, reading the loss). The first "
        f"{_steps(m.warmup_steps)} are warm-up (MSER-5's cut, shaded); the steady mean "
        f"{fmt_duration(m.step_mean_s)} and its 95% confidence interval "
        f"(± {fmt_percent(m.step_ci_relative)}) are over the {m.steady_steps:,} steps after "
        "them, slowdowns included."
    )
    if m.slowdowns:
        caption += " Slow stretches after the warm-up (noise such as a load spike) are shaded."
    return Chart(
        "calibration-steps",
        "Step time by step, with the warm-up cut and the steady mean",
        caption,
        lambda fig, layout: _draw_steps(fig, layout, record),
    )


def _draw_steps(fig: Any, layout: Layout, record: CalibrationRecord) -> None:
    m = record.measurement
    times = list(m.step_times_s)
    ax = fig.add_subplot()
    if not times:
        ax.text(0.5, 0.5, "no per-step times in this record", ha="center", transform=ax.transAxes)
        return
    n = len(times)
    top_s = _robust_top(times, m.step_mean_s + m.step_ci_half_s)
    unit = time_unit(top_s)
    points = thin(list(enumerate(times, start=1)))
    ax.plot(
        [i for i, _ in points],
        [unit.of(min(t, top_s)) for _, t in points],
        color=BLUE,
        linewidth=0.9,
        label="each step",
    )
    over = [(i, t) for i, t in enumerate(times, start=1) if t > top_s]
    if over:
        ax.plot(
            [i for i, _ in over],
            [unit.of(top_s)] * len(over),
            linestyle="none",
            marker="^",
            color=VERMILION,
            markersize=5,
            label=f"{len(over)} off the scale (up to {fmt_duration(max(t for _, t in over))})",
        )
    cut = m.warmup_steps
    if cut:
        ax.axvspan(0.5, cut + 0.5, color=ORANGE, alpha=0.22, linewidth=0, label="warm-up cut")
    for index, (first, last, _ratio) in enumerate(m.slowdowns):
        ax.axvspan(
            first - 0.5,
            last + 0.5,
            color=VERMILION,
            alpha=0.12,
            linewidth=0,
            label="slowdown (kept in the mean)" if index == 0 else None,
        )
    mean, half = m.step_mean_s, m.step_ci_half_s
    ax.fill_between(
        [cut + 0.5, n + 0.5],
        unit.of(mean - half),
        unit.of(mean + half),
        color=GREY,
        alpha=0.35,
        linewidth=0,
        label="95% CI of the mean",
    )
    ax.hlines(unit.of(mean), cut + 0.5, n + 0.5, color="black", label="steady mean")
    ax.set_xlim(0.5, n + 0.5)
    ax.set_ylim(0, unit.of(top_s) * 1.05)
    ax.set_xlabel("step of the calibration")
    ax.set_ylabel(unit.label("step time"))
    legend(ax, layout, columns=3, loc="upper right")


def _robust_top(times: list[float], floor: float) -> float:
    """The y axis' top: every step but the few far above the rest (a compile, a first step
    100x the steady one) which would flatten the steady ones into a line."""
    ordered = sorted(times)
    p98 = ordered[min(len(ordered) - 1, math.ceil(0.98 * len(ordered)) - 1)]
    median = statistics.median(ordered)
    top = max(min(ordered[-1], max(p98 * 1.15, 4 * median)), floor)
    return top if top > 0 else 1.0


# -- the CI against steps --------------------------------------------------------------------


def ci_curve(record: CalibrationRecord) -> list[tuple[int, float]]:
    """(steps timed, 95% CI half-width over the mean) as the calibration's stop rule computes
    it, at up to CI_POINTS step counts; nothing before the rule trusts a CI."""
    times = list(record.measurement.step_times_s)
    n = len(times)
    min_steps = max(record.spec.calibration.min_steps, 2)
    if n < min_steps:
        return []
    counts = sorted(
        {min_steps + round((n - min_steps) * (i / (CI_POINTS - 1)) ** 2) for i in range(CI_POINTS)}
    )
    curve = []
    for count in counts:
        ci = ci_if_ready(times[:count], min_steps)
        if ci is not None and math.isfinite(ci):
            curve.append((count, ci))
    return curve


def _ci_chart(record: CalibrationRecord) -> Chart:
    m = record.measurement
    stop = _STOPPED.get(m.stopped_by, m.stopped_by)
    return Chart(
        "calibration-ci",
        "The steady mean's 95% CI as the calibration ran, against its target",
        (
            f"Half-width of the 95% confidence interval of the steady mean, as a share of it, "
            f"recomputed from the recorded step times with the job's stop rule (no CI until "
            f"{record.spec.calibration.min_steps} steady steps and a warm-up clearly over). "
            f"The job stopped after {m.steps_run:,} steps: {stop}."
        ),
        lambda fig, layout: _draw_ci(fig, layout, record),
    )


def _draw_ci(fig: Any, layout: Layout, record: CalibrationRecord) -> None:
    m = record.measurement
    curve = ci_curve(record)
    ax = fig.add_subplot()
    target = m.target_ci * 100
    if curve:
        ax.plot(
            [c for c, _ in curve],
            [ci * 100 for _, ci in curve],
            color=BLUE,
            label="CI half-width",
        )
    else:
        ax.text(
            0.5,
            0.6,
            "the stop rule never had a CI it trusted",
            ha="center",
            transform=ax.transAxes,
        )
    ax.axhline(target, color=GREEN, linestyle="--", label=f"target ±{fmt_percent(m.target_ci)}")
    ax.axvline(m.steps_run, color=GREY, linestyle=":", label=f"stopped at {m.steps_run:,}")
    final = m.step_ci_relative * 100
    values = [ci * 100 for _, ci in curve] or [final]
    top = max(target * 1.6, min(max(values), max(target, final) * 6))
    ax.set_ylim(0, top)
    ax.set_xlim(0, max(m.steps_run, 1) * 1.02)
    ax.set_xlabel("steps timed")
    ax.set_ylabel("95% CI half-width (% of the mean)")
    legend(ax, layout, columns=3, loc="upper right")
