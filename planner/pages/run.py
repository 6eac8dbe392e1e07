"""The run's section of a report page: steps done against wall-clock time beside the plan's
P50/P95 band and today's projection, with the checkpoints as ticks; each job's step times
(restarts, resumes and hangs marked); and the loss the training reported, evaluation loss
beside it.

The headline numbers are the Eta's, as `plan-job eta --json` prints them (this section's "eta"
data: Eta.to_dict()); the curves are the progress file's own lines (jobs.progress), the file
the Eta read. The plan is the run folder's plan.yaml, as emitted.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from planner.clock import clock_text, moment_text
from planner.eta.estimate import Eta
from planner.eta.report import eta_table
from planner.eta.source import Source
from planner.model.plan import Plan
from planner.pages.charts import legend, thin, time_unit
from planner.pages.html import Fact, Section, number
from planner.pages.svg import BLUE, GREEN, GREY, ORANGE, PALETTE, VERMILION, Chart, Layout
from planner.units import fmt_duration, fmt_percent

# Points a curve of a million steps is drawn from: the same line at this size, in a page a
# few hundred KiB large.
STEP_POINTS = 2400


@dataclass
class JobEvents:
    """One job of the run as its progress lines tell it (a ``start`` line to the next)."""

    index: int  # 1-based, in file order
    job_id: str | None = None
    start_time: float | None = None
    start_step: int = 0
    resumed: bool = False
    steps: list[tuple[float, int, float | None, float | None]] = field(default_factory=list)
    evals: list[tuple[float, int, float | None]] = field(default_factory=list)
    saves: list[tuple[float, int]] = field(default_factory=list)
    hangs: list[tuple[float, int]] = field(default_factory=list)
    incidents: list[str] = field(default_factory=list)  # hangs, failures, bad checkpoints
    stop_reason: str | None = None
    last_time: float | None = None


def job_events(events: Sequence[Mapping[str, Any]]) -> list[JobEvents]:
    """The progress file's lines, job by job. Lines of kinds this module does not draw are
    skipped, as every reader of the file must; a ``hang`` line (a job that stopped stepping)
    is marked where it happened."""
    jobs: list[JobEvents] = []
    for event in events:
        kind = event.get("event")
        moment = _number(event.get("time"))
        if kind == "start" or not jobs:
            jobs.append(JobEvents(len(jobs) + 1))
        job = jobs[-1]
        step = _number(event.get("step"))
        if kind == "start":
            job.job_id = str(event["job_id"]) if event.get("job_id") else None
            job.start_time = moment
            job.start_step = int(step or 0)
        elif kind == "resume":
            job.resumed = True
        elif kind == "hang" and moment is not None:
            # Where the job stood when it stopped stepping: its line's step, else its last.
            last = job.steps[-1][1] if job.steps else job.start_step
            job.hangs.append((moment, int(step) if step is not None else last))
        if kind in _INCIDENTS:
            job.incidents.append(f"job {job.index}: " + _INCIDENTS[str(kind)](event))
        elif moment is not None and step is not None:
            if kind == "step":
                job.steps.append(
                    (moment, int(step), _number(event.get("step_s")), _number(event.get("loss")))
                )
            elif kind == "eval":
                job.evals.append((moment, int(step), _number(event.get("loss"))))
            elif kind == "checkpoint":
                job.saves.append((moment, int(step)))
        if kind == "stop":
            job.stop_reason = str(event.get("reason"))
        if moment is not None:
            job.last_time = max(job.last_time or moment, moment)
    return jobs


def _at_step(event: Mapping[str, Any]) -> str:
    return f" at step {event['step']}" if _number(event.get("step")) is not None else ""


def _seconds(value: Any) -> str:
    seconds = _number(value)
    return fmt_duration(seconds) if seconds is not None else "?"


# What the run page says of the lines that tell why a job ended (jobs.progress).
_INCIDENTS: dict[str, Any] = {
    "hang": lambda e: (
        f"hung{_at_step(e)} in its {e.get('phase', '?')} phase (no progress for "
        f"{_seconds(e.get('waited_s'))}, timeout {_seconds(e.get('timeout_s'))}; rank "
        f"{e.get('rank', '?')})"
    ),
    "failure": lambda e: (
        f"failed after step {e.get('step')}: {e.get('cause', '?')}: {e.get('message', '')}"
    ),
    "checkpoint_bad": lambda e: (
        f"checkpoint {e.get('path')} set aside as {e.get('moved_to')} ({e.get('reason')})"
    ),
    "chain_stopped": lambda e: f"stopped its chain at step {e.get('step')}: {e.get('reason')}",
}
MAX_INCIDENTS = 12  # lines of them on the page; the rest counted


def queue_waits(source: Source, jobs: Sequence[JobEvents]) -> dict[int, float]:
    """Seconds before each submitted segment's first line: from its submission (jobs.yaml),
    or the last line of the job before it when that was later (afterany), to its ``start``
    line: its queue wait, and the job's own start (script, interpreter, imports) up to it.
    The progress file tells no more; sacct's start time would split the two."""
    started = {job.job_id: job for job in jobs if job.job_id and job.start_time is not None}
    waits: dict[int, float] = {}
    previous_end: float | None = None
    for submitted in source.chain:
        job = started.get(submitted.job_id)
        if job is None or job.start_time is None:
            continue
        since = _iso_time(submitted.submitted)
        if since is None:
            continue
        if previous_end is not None:
            since = max(since, previous_end)
        waits[submitted.segment] = max(job.start_time - since, 0.0)
        previous_end = job.last_time
    return waits


def run_section(
    eta: Eta,
    data: dict[str, Any],
    jobs: Sequence[JobEvents],
    plan: Plan | None,
    name: str = "",
) -> Section:
    """``data["eta"]`` is eta.to_dict(); ``jobs``: the progress file's lines, by job."""
    facts = [
        Fact(
            "progress",
            number(data, "eta", "done_step", lambda s: f"step {s:,} of {eta.total_steps:,}"),
            f"{fmt_percent(eta.fraction)}; {eta.status}",
        ),
        Fact("jobs seen", number(data, "eta", "jobs_seen", "{:,}".format), "start lines"),
    ]
    if eta.step_time is not None:
        st = eta.step_time
        facts.append(
            Fact(
                "step time",
                number(data, "eta", "step_time.mean_s", fmt_duration),
                f"95% CI {fmt_duration(st.ci_low_s)} to {fmt_duration(st.ci_high_s)}, last "
                f"{st.window:,} steady steps",
            )
        )
    if eta.remaining is not None:
        facts += [
            Fact("remaining P50", number(data, "eta", "remaining.p50_s", fmt_duration)),
            Fact("remaining P95", number(data, "eta", "remaining.p95_s", fmt_duration)),
        ]
    if eta.finish_p50 is not None:

        def moment(value: float) -> str:
            return moment_text(value, eta.now)

        facts += [
            Fact("finish P50", number(data, "eta", "finish_p50", moment)),
            Fact("finish P95", number(data, "eta", "finish_p95", moment)),
        ]
    if plan is not None:
        facts.append(
            Fact(
                "planned",
                number(data, "plan", "wall_p50_s", lambda s: f"P50 {fmt_duration(s)}"),
                f"P95 {fmt_duration(plan.wall.p95_s)}, in the jobs (queue waits not included)",
            )
        )
    charts = [_progress_chart(eta, jobs, plan), _step_chart(eta, jobs, plan)]
    if any(loss is not None for job in jobs for *_, loss in job.steps):
        charts.append(_loss_chart(jobs))
    notes = list(eta.notes)
    incidents = [line for job in jobs for line in job.incidents]
    notes += incidents[:MAX_INCIDENTS]
    if len(incidents) > MAX_INCIDENTS:
        notes.append(f"... and {len(incidents) - MAX_INCIDENTS} more such lines in the file")
    if not any(job.steps for job in jobs):
        notes.append("no step lines yet: the figures are empty until the run has stepped")
    return Section(
        key="run",
        title=f"Run: {name}",
        intro=f"Where the run stands as of {clock_text(eta.now, seconds=True)}, from {eta.path}.",
        facts=facts,
        charts=charts,
        notes=notes,
        cli_text=eta_table(eta, width=100),
    )


# -- steps against time ----------------------------------------------------------------------


def _t0(jobs: Sequence[JobEvents]) -> float | None:
    moments = [j.start_time for j in jobs if j.start_time is not None]
    moments += [j.steps[0][0] for j in jobs if j.steps]
    return min(moments) if moments else None


def _progress_chart(eta: Eta, jobs: Sequence[JobEvents], plan: Plan | None) -> Chart:
    t0 = _t0(jobs)
    started = f" (the first job started {clock_text(t0)})" if t0 is not None else ""
    band = (
        "The band: the plan's pace between P50 and P95, counted in the jobs' own time (the "
        "gaps between jobs seen so far added; the plan does not predict queue waits). "
        if plan is not None
        else "No plan.yaml beside the progress file: no planned band. "
    )
    projection = (
        "Dashed: today's projection to the last step at P50 and P95 (the eta)."
        if eta.finish_p50 is not None and eta.status in ("running", "pending")
        else ""
    )
    return Chart(
        "run-progress",
        "Steps done against time, beside the plan",
        f"Optimizer steps done against time since the run began{started}; ticks: checkpoint "
        f"saves; dotted lines: a job's start. {band}{projection}",
        lambda fig, layout: _draw_progress(fig, layout, eta, jobs, plan),
        height_in=3.9,
    )


def job_time_gaps(jobs: Sequence[JobEvents]) -> list[tuple[float, float]]:
    """(from, to) of the stretches between one job's last line and the next one's start: the
    time the run spent outside its jobs (queue waits, or nobody resubmitting)."""
    gaps = []
    for before, after in itertools.pairwise(jobs):
        ended, began = before.last_time, after.start_time
        if ended is not None and began is not None and began > ended:
            gaps.append((ended, began))
    return gaps


def planned_steps(
    moments: Sequence[float],
    t0: float,
    wall_s: float,
    total: int,
    gaps: Sequence[tuple[float, float]],
) -> list[float]:
    """Steps done at each moment at the plan's pace (total steps over ``wall_s`` of the
    jobs' own time), the gaps between jobs not counted."""
    out = []
    for moment in moments:
        inside = moment - t0 - sum(max(0.0, min(moment, b) - a) for a, b in gaps if a < moment)
        out.append(min(total, max(0.0, total * inside / wall_s)) if wall_s > 0 else 0.0)
    return out


def _draw_progress(
    fig: Any, layout: Layout, eta: Eta, jobs: Sequence[JobEvents], plan: Plan | None
) -> None:
    ax = fig.add_subplot()
    t0 = _t0(jobs)
    if t0 is None:
        ax.text(0.5, 0.5, "no timed lines yet", ha="center", transform=ax.transAxes)
        return
    gaps = job_time_gaps(jobs)
    # A run still going (or queued) runs to now; one that ended, or stopped short with no
    # job left to run, ends where its last line is, however long ago that was.
    going = eta.status in ("running", "pending")
    ends = [eta.now] if going else []
    if eta.finish_p95 is not None and going:
        ends.append(eta.finish_p95)
    if plan is not None:
        ends.append(t0 + plan.wall.p95_s + sum(b - a for a, b in gaps))
    last = max(j.last_time or t0 for j in jobs)
    ends.append(last)
    end = max(ends)
    unit = time_unit(end - t0)
    if plan is not None:
        grid = [t0 + (end - t0) * i / 400 for i in range(401)]
        low = planned_steps(grid, t0, plan.wall.p95_s, plan.total_steps, gaps)
        high = planned_steps(grid, t0, plan.wall.p50_s, plan.total_steps, gaps)
        xs = [unit.of(t - t0) for t in grid]
        ax.fill_between(
            xs, low, high, color=GREEN, alpha=0.18, linewidth=0, label="plan P50 to P95"
        )
        ax.plot(xs, high, color=GREEN, linewidth=1.0)
    share = max(STEP_POINTS // max(len(jobs), 1), 200)
    for index, job in enumerate(jobs):
        points = thin([(t, s) for t, s, _, _ in job.steps], share)
        if job.start_time is not None and job.steps:
            points = [(job.start_time, job.start_step), *points]
        if points:
            ax.plot(
                [unit.of(t - t0) for t, _ in points],
                [s for _, s in points],
                color=BLUE,
                label="steps done" if index == 0 else None,
            )
        if index > 0 and job.start_time is not None:
            ax.axvline(unit.of(job.start_time - t0), color=GREY, linestyle=":", linewidth=1.0)
        if job.saves:
            ax.plot(
                [unit.of(t - t0) for t, _ in job.saves],
                [s for _, s in job.saves],
                "|",
                color="black",
                markersize=8,
                label="save" if index == 0 else None,
            )
        if job.hangs:
            ax.plot(
                [unit.of(t - t0) for t, _ in job.hangs],
                [s for _, s in job.hangs],
                "x",
                color=VERMILION,
                markersize=8,
                label="hang",
            )
    if eta.finish_p50 is not None and going and eta.remaining is not None:
        # From where the estimate starts: the newest line of a job still stepping, else now
        # at the step the next job resumes from.
        since = last if eta.status == "running" else eta.now
        here = (unit.of(since - t0), eta.remaining.from_step)
        for finish, style, name in ((eta.finish_p50, "--", "P50"), (eta.finish_p95, ":", "P95")):
            if finish is None:
                continue
            ax.plot(
                [here[0], unit.of(finish - t0)],
                [here[1], eta.total_steps],
                linestyle=style,
                color=ORANGE,
                label=f"projection {name}",
            )
    if going:
        ax.axvline(unit.of(eta.now - t0), color="black", linewidth=0.8, alpha=0.6)
        ax.annotate(
            "now",
            (unit.of(eta.now - t0), eta.total_steps),
            xytext=(3, -12),
            textcoords="offset points",
            fontsize="small",
        )
    ax.set_ylim(0, eta.total_steps * 1.04)
    ax.set_xlim(0, unit.of(end - t0) * 1.02)
    ax.set_xlabel(unit.label("time since the run began"))
    ax.set_ylabel("optimizer steps done")
    legend(ax, layout, columns=3, loc="lower right")


# -- step time per job -----------------------------------------------------------------------


def _step_chart(eta: Eta, jobs: Sequence[JobEvents], plan: Plan | None) -> Chart:
    st = eta.step_time
    steady = f" The eta's steady step: {fmt_duration(st.mean_s)}." if st is not None else ""
    planned = f" The plan's P50 step: {fmt_duration(plan.step_s)}." if plan is not None else ""
    return Chart(
        "run-steps",
        "Step time of each job",
        "Each step's time as the job logged it (its data, the step and the loop's own work; "
        f"saves and evaluations apart), one colour per job; dotted lines: a job's start, "
        f"resumed from a checkpoint or fresh.{steady}{planned}",
        lambda fig, layout: _draw_steps(fig, layout, eta, jobs, plan),
    )


def _draw_steps(
    fig: Any, layout: Layout, eta: Eta, jobs: Sequence[JobEvents], plan: Plan | None
) -> None:
    ax = fig.add_subplot()
    timed = [s_s for job in jobs for _, _, s_s, _ in job.steps if s_s is not None]
    if not timed:
        ax.text(0.5, 0.5, "no timed steps yet", ha="center", transform=ax.transAxes)
        return
    ordered = sorted(timed)
    top_s = max(
        ordered[min(len(ordered) - 1, math.ceil(0.98 * len(ordered)) - 1)] * 1.2,
        4 * ordered[len(ordered) // 2],
    )
    top_s = min(top_s, ordered[-1]) if ordered[-1] > 0 else 1.0
    unit = time_unit(top_s)
    share = max(STEP_POINTS // max(len(jobs), 1), 200)
    for index, job in enumerate(jobs):
        points = thin([(s, t) for _, s, t, _ in job.steps if t is not None], share)
        if not points:
            continue
        colour = PALETTE[index % len(PALETTE)]
        how = "resumed" if job.resumed else ("restart" if index else "first")
        ax.plot(
            [s for s, _ in points],
            [unit.of(min(t, top_s)) for _, t in points],
            color=colour,
            linewidth=0.9,
            label=f"job {job.index} ({how})",
        )
        if index > 0:
            ax.axvline(job.start_step + 0.5, color=GREY, linestyle=":", linewidth=1.0)
        if job.hangs:
            ax.plot(
                [s for _, s in job.hangs],
                [unit.of(top_s)] * len(job.hangs),
                "x",
                color=VERMILION,
                markersize=8,
                label="hang",
            )
    if eta.step_time is not None:
        ax.axhline(
            unit.of(eta.step_time.mean_s), color="black", linewidth=1.0, label="steady (eta)"
        )
    if plan is not None:
        ax.axhline(
            unit.of(plan.step_s), color=GREEN, linestyle="--", linewidth=1.2, label="plan P50"
        )
    ax.set_ylim(0, unit.of(top_s) * 1.05)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(unit.label("step time"))
    legend(ax, layout, columns=3, loc="upper right")


# -- loss ------------------------------------------------------------------------------------


def _loss_chart(jobs: Sequence[JobEvents]) -> Chart:
    evals = any(loss is not None for job in jobs for *_, loss in job.evals)
    return Chart(
        "run-loss",
        "Training loss" + (" and evaluation loss" if evals else ""),
        "The loss each step line reported (the mean over the step's micro-batches)"
        + ("; markers: each evaluation's held-out loss." if evals else "."),
        lambda fig, layout: _draw_loss(fig, layout, jobs),
        height_in=3.2,
    )


def _draw_loss(fig: Any, layout: Layout, jobs: Sequence[JobEvents]) -> None:
    ax = fig.add_subplot()
    points = thin(
        sorted((s, loss) for job in jobs for _, s, _, loss in job.steps if loss is not None),
        STEP_POINTS,
    )
    ax.plot(
        [s for s, _ in points],
        [v for _, v in points],
        color=BLUE,
        linewidth=0.9,
        label="training loss",
    )
    evals = sorted((s, loss) for job in jobs for _, s, loss in job.evals if loss is not None)
    if evals:
        ax.plot(
            [s for s, _ in evals],
            [v for _, v in evals],
            "o-",
            color=VERMILION,
            markersize=4,
            linewidth=1.0,
            label="evaluation loss",
        )
    losses = [v for _, v in points] + [v for _, v in evals]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 30:
        ax.set_yscale("log")  # a loss that falls by orders of magnitude
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    legend(ax, layout, columns=2, loc="upper right")


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) else None


def _iso_time(text: str) -> float | None:
    try:
        return dt.datetime.fromisoformat(text).timestamp() if text else None
    except ValueError:
        return None
