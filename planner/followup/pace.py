"""How fast a run really goes, from its own progress lines: the numbers resubmit and tighten
size new --time limits with.

Step time: the steady step time of planner.eta.steps (each job's warm-up cut, the newest
WINDOW steady steps, winsorized), turned into the planner's StepStats so that a segment's
P95 means what it means in a plan: the CI of the mean and the plan's run-to-run spread are
systematic (every step moves together), the step's own spread is noise. A run with fewer
than MIN_RUN_STEPS steady steps falls back to the plan's step time, and says so.

Resume cost: from the job's start in Slurm's records (sacct's Start) to the beginning of its
first step: srun, Python start-up, the model build and the checkpoint load, all observed;
plus the warm-up steps' time beyond the steady mean. Saves: the newest observed save times.
Reserve: one P95 step, one save, SIGNAL_MARGIN_S and SIGNAL_SLACK_S, as planner.model.planning
reserves it. Torch-free.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from planner.eta.steps import Z975, SteadyStepTime, steady_step_time
from planner.model.plan import SIGNAL_MARGIN_S, SIGNAL_SLACK_S, Z95, Plan
from planner.model.timemodel import StepStats, StretchTime
from planner.runs.progress import History

MIN_RUN_STEPS = 20  # steady steps below which the plan's step time is used instead
RECENT_SAVES = 5


@dataclass(frozen=True)
class JobTiming:
    """One job's lines in the progress file: when its first step began, what it loaded."""

    job_id: str | None
    resumed: bool
    first_step_begin: float | None  # Unix seconds: the first step line's time minus step_s
    load_s: float | None


@dataclass(frozen=True)
class RunPace:
    stats: StepStats  # the P50 step and its uncertainty
    step_source: str  # "run" or "plan"
    steps_timed: int  # steady steps behind the figure (0: the plan's)
    resume_s: float  # start-up, checkpoint load and warm-up of a resumed job
    resume_source: str
    save_s: float
    save_source: str
    eval_s: float
    interval_steps: int
    eval_interval_steps: int | None
    notes: tuple[str, ...]

    @property
    def step_p95_s(self) -> float:
        return self.stats.p95_s

    @property
    def work(self) -> StretchTime:
        return StretchTime(
            self.stats, self.save_s, self.interval_steps, self.eval_s, self.eval_interval_steps
        )

    @property
    def lead_s(self) -> int:
        """The reserve after a segment's work, as the planner sizes it."""
        return math.ceil(self.stats.p95_s + self.save_s + SIGNAL_MARGIN_S + SIGNAL_SLACK_S)

    @property
    def signal_lead_s(self) -> int:
        return self.lead_s - SIGNAL_SLACK_S


def job_timings(history: History) -> list[JobTiming]:
    """Per job (a start line up to the next), from the progress file's summary."""
    return [
        JobTiming(job.job_id, job.resumed, job.first_step_begin, job.load_s) for job in history.jobs
    ]


def measure_pace(
    history: History,
    plan: Plan,
    timings: Sequence[JobTiming],
    slurm_starts: Mapping[str, float],
    interval_steps: int,
    eval_interval_steps: int | None,
    eval_times: Sequence[float] = (),
) -> RunPace:
    """The run's own pace; ``slurm_starts`` maps job ids to their start in Slurm's records."""
    notes: list[str] = []
    spread = plan.spec.plan.run_to_run_spread
    step = steady_step_time(history.jobs)
    if step is not None and not step.provisional and step.window >= MIN_RUN_STEPS:
        stats, source, timed = _stats(step, spread), "run", step.window
    else:
        seen = 0 if step is None else step.window
        # The plan's P95 step as a systematic sigma: for many steps, the noise would add less.
        rel = max(plan.step_p95_s / plan.step_s - 1, 0.0) / Z95
        stats, source, timed = StepStats(plan.step_s, rel, 0.0), "plan", 0
        notes.append(
            f"the run has {seen} steady steps (fewer than {MIN_RUN_STEPS}): the step time is "
            f"the plan's, not a measurement of this run"
        )
    saves = [s for _, s in history.saves]
    if saves:
        save_s, save_source = statistics.median(saves[-RECENT_SAVES:]), "run"
    else:
        save_s, save_source = plan.checkpoint.save_s, "plan"
    eval_s = statistics.median(eval_times[-RECENT_SAVES:]) if eval_times else plan.eval_s
    resume_s, resume_source = _resume(plan, step, timings, slurm_starts, notes)
    return RunPace(
        stats=stats,
        step_source=source,
        steps_timed=timed,
        resume_s=resume_s,
        resume_source=resume_source,
        save_s=save_s,
        save_source=save_source,
        eval_s=eval_s,
        interval_steps=interval_steps,
        eval_interval_steps=eval_interval_steps or None,
        notes=tuple(notes),
    )


def _stats(step: SteadyStepTime, spread: float) -> StepStats:
    sigma_mean = (step.ci_high_s - step.mean_s) / Z975
    if not math.isfinite(sigma_mean):
        sigma_mean = step.sd_s  # a handful of steps: the CI is infinite, the spread is not
    return StepStats(step.mean_s, math.hypot(sigma_mean / step.mean_s, spread), step.sd_s)


def _resume(
    plan: Plan,
    step: SteadyStepTime | None,
    timings: Sequence[JobTiming],
    slurm_starts: Mapping[str, float],
    notes: list[str],
) -> tuple[float, str]:
    """Start-up + checkpoint load + warm-up excess of a resumed job. The plan's resume_s
    counts all three (the calibration's start-up, load and warm-up)."""
    observed = [
        (t.resumed, t.first_step_begin - slurm_starts[t.job_id])
        for t in timings
        if t.job_id is not None and t.job_id in slurm_starts and t.first_step_begin is not None
    ]
    resumed = [s for was_resumed, s in observed if was_resumed and s >= 0]
    fresh = [s for was_resumed, s in observed if not was_resumed and s >= 0]
    warmup = step.warmup_excess_s if step is not None else 0.0
    if resumed:
        # Jobs after the first were seen: their start-up with the load, their warm-up.
        return statistics.median(resumed) + warmup, "run"
    # load, compile (workload.compile) and warm-up
    beyond_startup = max(plan.resume_s - plan.wall.startup_s, 0.0)
    if fresh:
        loads = [t.load_s for t in timings if t.load_s is not None]
        if loads:
            # A compiled run's compile comes with its first step, after first_step_begin.
            planned = plan.wall.warmup_s + plan.compile_s
            return statistics.median(fresh) + statistics.median(loads) + planned, "run"
        return statistics.median(fresh) + beyond_startup, "run, with the plan's load and warm-up"
    notes.append(
        "no job's start is known from Slurm: the resume cost is the plan's start-up, checkpoint "
        "load and warm-up"
    )
    return plan.resume_s, "plan"
