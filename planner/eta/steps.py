"""A run's steady step time from its own recent steps, and the helpers the ETA and
resubmit share (the uncertainty of the remaining time, the observed save and resume costs).

Every job of a run starts slow (allocator, cuDNN autotuning, compilation, cold page cache,
data workers filling their queues) and for a number of steps that differs per job and per
model, so a fixed "drop the first K steps" is either too few (compile) or wastes data. Each
job's own step times are cut where MSER-5 finds its steady state begins (the calibration's
rule, so the ETA and the plan mean the same thing by "steady"), looked for in its first
planner.runs.job_log.HEAD timed steps (all of them in a job no longer than that); a job with
fewer than MIN_JOB_STEPS timed steps is left out while older jobs have steady steps, as its warm-up
cannot be told from its steady state yet. The estimate is the mean of the last WINDOW steady
steps, winsorized at 10% each side: the remaining time is a sum of step times, so its P50 is
steps x the mean (not the median: a right-skewed step distribution would be underestimated),
while a handful of one-off stalls in the window (up to 10%) is clipped to the window's 90th
percentile instead of moving the mean. Its 95% CI is the batch-means interval of
jobs.calibration.stats.mean_ci (consecutive steps are correlated) over the winsorized values,
widened by 1/(1 - 2 x 10%) as Tukey and McLaughlin's interval for a trimmed mean is.
Torch-free.
"""

from __future__ import annotations

import collections
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from jobs.calibration.stats import WINSOR, mean_ci, winsorize  # the calibration's rule
from jobs.training.resume import RECENT_STEPS
from planner.model.plan import PlanFacts
from planner.runs.job_log import RECENT, JobLog
from planner.runs.progress import History

# Steady steps the estimate averages, recent enough to follow a node change: as many as a
# job's summary holds (planner.runs.job_log.RECENT).
WINDOW = RECENT
MIN_JOB_STEPS = 10  # fewer timed steps: a job's warm-up cannot be told from its steady state
DEFAULT_SPREAD = 0.02  # run-to-run spread when no plan gives one (plan.run_to_run_spread)
Z95 = 1.6448536269514722  # one-sided 95% normal quantile
Z975 = 1.959963984540054


@dataclass(frozen=True)
class SteadyStepTime:
    """A running run's steady step, read from its jobs' logs (not planner.scaling.ring's
    StepTime: a planned step's compute and communication at a node count)."""

    mean_s: float  # winsorized mean of the window: the P50 cost of one step
    ci_low_s: float  # 95% CI of that mean
    ci_high_s: float
    median_s: float
    p10_s: float
    p90_s: float
    sd_s: float  # of one step, winsorized
    slowest_recent_s: float  # of the newest RECENT_STEPS: the training's stop rule uses it
    window: int  # steps averaged
    warmup_cut: tuple[int, ...]  # per job, timed steps cut as warm-up
    warmup_excess_s: float  # per resumed job (median): warm-up time beyond the steady mean
    provisional: bool  # no job had MIN_JOB_STEPS steps: warm-up not excluded


@dataclass(frozen=True)
class Baseline:
    """The seed's method 2: the mean of every logged step time x the remaining steps."""

    mean_s: float
    samples: int
    remaining_s: float


def steady_step_time(jobs: Sequence[JobLog], cut_warmup: bool = True) -> SteadyStepTime | None:
    """The steady step time of the newest WINDOW steps after each job's warm-up; None with
    fewer than two timed steps."""
    pools: list[list[float]] = []
    cuts: list[int] = []
    excess: list[float] = []
    for job in jobs:
        if not cut_warmup:  # wall-clock rates over save intervals: no warm-up to find
            cuts.append(0)
            pools.append(list(job.recent))
            continue
        if job.timed < MIN_JOB_STEPS:
            cuts.append(0)
            pools.append([])
            continue
        cut = job.warmup_steps
        cuts.append(cut)
        if job.index > 0:
            excess.append(max(sum(job.head[:cut]) - cut * job.steady_mean(cut), 0.0))
        pools.append(job.steady_tail(cut))
    window = [x for pool in pools for x in pool][-WINDOW:]
    provisional = len(window) < 2 and cut_warmup
    if provisional:
        window = [x for job in jobs for x in job.recent][-WINDOW:]
    if len(window) < 2:
        return None
    clipped, share = winsorize(window, WINSOR)
    mean, half = mean_ci(clipped)
    half /= 1 - 2 * share
    deciles = statistics.quantiles(window, n=10, method="inclusive")
    return SteadyStepTime(
        mean_s=mean,
        ci_low_s=max(mean - half, 0.0),
        ci_high_s=mean + half,
        median_s=statistics.median(window),
        p10_s=deciles[0],
        p90_s=deciles[-1],
        sd_s=statistics.stdev(clipped),
        slowest_recent_s=max(window[-RECENT_STEPS:]),
        window=len(window),
        warmup_cut=tuple(cuts),
        warmup_excess_s=statistics.median(excess) if excess else 0.0,
        provisional=provisional,
    )


def baseline(jobs: Sequence[JobLog], remaining_steps: int) -> Baseline | None:
    samples = sum(job.timed for job in jobs)
    if not samples:
        return None
    mean = sum(job.timed_s for job in jobs) / samples
    return Baseline(mean, samples, remaining_steps * mean)


def step_sigma(step: SteadyStepTime, steps: int, spread: float) -> float:
    sigma_mean = (step.ci_high_s - step.mean_s) / Z975
    if not math.isfinite(sigma_mean):
        sigma_mean = step.sd_s  # two or three samples: the CI is infinite, the spread is not
    return math.sqrt(
        (steps * sigma_mean) ** 2 + steps * step.sd_s**2 + (steps * step.mean_s * spread) ** 2
    )


def mean_p95(step: SteadyStepTime, steps: int, spread: float) -> float:
    """The per-step time at which the remaining steps take their P95."""
    return step.mean_s + (Z95 * step_sigma(step, steps, spread) / steps if steps > 0 else 0.0)


def observed_interval(history: History) -> int | None:
    """The most common gap between consecutive checkpoints of one job (the first seen of
    equally common ones, as statistics.mode)."""
    gaps: collections.Counter[int] = collections.Counter()
    for job in history.jobs:
        for gap, count in job.save_gaps:
            gaps[gap] += count
    return gaps.most_common(1)[0][0] if gaps else None


def save_time(history: History, plan: PlanFacts | None) -> float:
    saves = [s for _, s in history.saves]
    if saves:
        return statistics.median(saves[-5:])  # recent: the filesystem's load changes
    return plan.save_s if plan and plan.save_s else 0.0


def resume_time(history: History, plan: PlanFacts | None, step: SteadyStepTime) -> float:
    """Start-up and checkpoint load of a new segment, plus its warm-up beyond steady: the
    plan's (which counts the calibration's warm-up), with the warm-up the run's resumed jobs
    showed in its place once there is one (a compiled run's first steps hold its compile,
    so that replaces the plan's compile too)."""
    if plan and plan.resume_s:
        if step.warmup_excess_s > 0:
            planned = (plan.warmup_s or 0.0) + (plan.compile_s or 0.0)
            return plan.resume_s - planned + step.warmup_excess_s
        return plan.resume_s
    loads = [job.load_s for job in history.jobs if job.load_s is not None]
    base = statistics.median(loads) if loads else 0.0
    return base + step.warmup_excess_s
