"""How long a run takes, and the estimates people make instead.

Work:
    samples_total = ceil(data.samples x epochs), or ceil(ceil(data.tokens / tokens_per_sample)
                    x epochs) with tokens_per_sample from the calibration (its token_unit)
    tokens_total  = samples_total x tokens_per_sample
    total_steps   = ceil(samples_total / global_batch)

Wall time, P50 (step = the P50 optimizer step at the node count, planner.scaling.ring):
    startup + warmup_extra + total_steps x step           startup: the job's script and srun
                                                          (job_start_s), the process's start-
                                                          up, its exit and the job's end
                                                          (job_end_s): job_overhead_s
    + (ceil(total_steps / interval) + k) x save_s         saves as jobs.train makes them
                                                          (run_saves): every interval and at
                                                          the last step, one per segment end,
                                                          and the first job's probe save
    + floor(total_steps / eval_interval) x eval_s         eval_s: plan.eval_s, else the
                                                          calibration's, per held-out batch
    + (k - 1) x (startup + checkpoint_load_s + warmup_extra)   resuming segments 2..k
    + k x compile_s                                       workload.compile: every job compiles
    + failures: (the sum above / MTBF) x ((tau + save_s) / 2 + resume), resume as above
P95 = P50 + 1.645 sigma, where sigma adds in quadrature
    the calibration's uncertainty of the mean, ci_half_width / 1.96 (systematic: every step),
    plan.run_to_run_spread (systematic: another job, other nodes), both x total_steps x step,
    and per-step noise, std x sqrt(total_steps), with the calibrated std / mean ratio.

The estimates people make instead: planner.model.baselines. Segments (Slurm --time): see
split_segments.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from jobs.contract.measurement import Measurement
from planner.errors import PartitionLimitError, SpecError
from planner.model.plan import (
    Z95,
    CheckpointChoice,
    Segment,
    TimeEstimate,
)
from planner.spec.load import INT64_MAX
from planner.spec.run_spec import RunSpec
from planner.units import fmt_duration

_CI_Z = 1.96  # the calibration's CI half-width is 1.96 sigma of the mean


@dataclass(frozen=True)
class Totals:
    samples: int
    tokens: int
    steps: int
    tokens_per_sample: int
    token_unit: str


@dataclass(frozen=True)
class StepStats:
    """One optimizer step at a node count and how uncertain it is."""

    mean_s: float
    rel_sigma: float  # systematic, shared by all steps: the mean's CI and run-to-run spread
    noise_s: float  # per-step std, independent between steps

    @property
    def p95_s(self) -> float:
        return self.mean_s * (1 + Z95 * self.rel_sigma) + Z95 * self.noise_s


@dataclass(frozen=True)
class StretchTime:
    """Time of a stretch of steps with their saves and evaluations spread evenly over them
    (not the jobs' Work, jobs.contract.work: what a job runs)."""

    step: StepStats
    save_s: float
    interval_steps: int
    eval_s: float = 0.0
    eval_interval_steps: int | None = None

    def p50(self, steps: float) -> float:
        extra = self.save_s / self.interval_steps
        if self.eval_interval_steps:
            extra += self.eval_s / self.eval_interval_steps
        return steps * (self.step.mean_s + extra)

    def sigma(self, steps: float) -> float:
        return math.hypot(
            self.step.rel_sigma * steps * self.step.mean_s, self.step.noise_s * math.sqrt(steps)
        )

    def p95(self, steps: float) -> float:
        return self.p50(steps) + Z95 * self.sigma(steps)


def count_work(spec: RunSpec, m: Measurement) -> Totals:
    data, per_sample = spec.data, m.tokens_per_sample
    if data.tokens is not None:
        if per_sample <= 0:
            raise SpecError(
                "data.tokens",
                data.tokens,
                f"the calibrated workload counts no tokens per sample ({m.token_unit!r}); "
                "give data.samples",
                spec.source,
            )
        per_epoch = -(-data.tokens // per_sample)
    else:
        per_epoch = data.samples or 0
    # round(): 1000 x 0.1 epochs must be 100 samples, not 101 from a float's last bit.
    samples = math.ceil(round(per_epoch * data.epochs, 6))
    steps = -(-samples // spec.batch.global_batch)
    if steps > INT64_MAX:
        field = "data.tokens" if data.tokens is not None else "data.samples"
        raise SpecError(
            field,
            data.tokens if data.tokens is not None else data.samples,
            f"with data.epochs {data.epochs:g} and batch.global_batch "
            f"{spec.batch.global_batch:,} that is {steps:.3g} optimizer steps, more than fit "
            f"in 64 bits (2^63 - 1): no run is that long",
            spec.source,
        )
    return Totals(samples, samples * per_sample, steps, per_sample, m.token_unit)


def step_stats(
    spec: RunSpec, m: Measurement, step_s: float, spread: float | None = None
) -> StepStats:
    """``spread``: the run-to-run spread to use when not the spec's (a noisy calibration, the
    history's)."""
    mean_rel = m.step_ci_half_s / _CI_Z / m.step_mean_s
    spread = spec.plan.run_to_run_spread if spread is None else spread
    return StepStats(
        mean_s=step_s,
        rel_sigma=math.hypot(mean_rel, spread),
        noise_s=m.step_std_s / m.step_mean_s * step_s,
    )


def job_overhead_s(m: Measurement) -> float:
    """What every job pays outside its training loop: its script and srun, the process's
    start-up (imports, build) and, after the last save, its exit and the job's end."""
    return m.job_start_s + m.startup_s + m.job_end_s


def first_overhead_s(m: Measurement) -> float:
    """The first job's time beyond its steps and saves: its script, srun and start-up, its
    compile (workload.compile) and warm-up, the probe save that times a save before it can
    decide when to stop, its exit."""
    return job_overhead_s(m) + m.compile_s + m.warmup_extra_s + m.checkpoint_save_s


def resume_s(m: Measurement) -> float:
    """What a job after the first pays beyond its steady steps and saves: its script and srun
    start a new process, which loads the checkpoint, compiles (workload.compile) and warms up
    again, and exits."""
    return job_overhead_s(m) + m.checkpoint_load_s + m.compile_s + m.warmup_extra_s


def eval_seconds(spec: RunSpec, m: Measurement, calibration_path: str = "--calibration") -> float:
    """Seconds one evaluation takes: plan.eval_s when given, else the calibration's timing
    scaled to plan.eval_batches (an evaluation is that many forward-only micro-batches)."""
    plan = spec.plan
    if not plan.eval_interval_steps:
        return 0.0
    if plan.eval_s is not None:
        return plan.eval_s
    if m.eval_batches <= 0:
        raise SpecError(
            "plan.eval_interval_steps",
            plan.eval_interval_steps,
            f"asks for evaluation but the calibration {calibration_path} timed none: "
            "calibrate with plan.eval_interval_steps set, or give plan.eval_s",
            spec.source,
        )
    return m.eval_s / m.eval_batches * plan.eval_batches


def job_saves(from_step: int, to_step: int, interval: int, first_job: bool) -> int:
    """The saves one Slurm job of jobs.train makes training from ``from_step`` to ``to_step``.

    jobs.train saves after every step that is a multiple of the interval and after the run's
    last step, and a job that stops before the end (its signal, its stop time) saves the step
    it stopped at unless that step was just saved: so one save per multiple of the interval
    passed, and one more when ``to_step`` is not a multiple. The first job of a run also
    writes (and deletes) a probe save before its first step: it is given a stop time
    ($PLANJOB_STOP_AT, which every emitted segment sets) and needs a save time to honour it,
    and no earlier job of the run has timed one. A direct ``python -m jobs.train`` without a
    stop time makes no probe: the plan models the Slurm segment.
    """
    if to_step <= from_step:
        return 1 if first_job else 0  # the probe comes before the (first) step
    periodic = to_step // interval - from_step // interval
    last = 0 if to_step % interval == 0 else 1
    return periodic + last + (1 if first_job else 0)


def run_saves(total_steps: int, interval: int, segments: int) -> int:
    """Saves of a run of ``segments`` jobs: ceil(total / interval) (the multiples of the
    interval and the last step, saved once when it is a multiple), one at each of the first
    segments - 1 jobs' stops (a stop that lands on a multiple is rare: not modelled) and the
    first job's probe."""
    return -(-total_steps // interval) + segments - 1 + 1


def estimate_time(
    spec: RunSpec,
    m: Measurement,
    totals: Totals,
    step: StepStats,
    checkpoint: CheckpointChoice,
    segments: int,
    resume_s: float,
    eval_s: float = 0.0,
) -> TimeEstimate:
    steps_s = totals.steps * step.mean_s
    saves = run_saves(totals.steps, checkpoint.interval_steps, segments)
    evals_s = 0.0
    if spec.plan.eval_interval_steps:
        evals_s = totals.steps // spec.plan.eval_interval_steps * eval_s
    terms = {
        "startup_s": job_overhead_s(m),
        "warmup_s": m.warmup_extra_s,
        "steps_s": steps_s,
        "checkpoints_s": saves * checkpoint.save_s,
        "evals_s": evals_s,
        # resume_s holds a later job's compile: it is shown with the first job's.
        "resumes_s": (segments - 1) * (resume_s - m.compile_s),
        "compile_s": segments * m.compile_s,
    }
    before_failures = sum(terms.values())
    per_failure = (checkpoint.interval_s + checkpoint.save_s) / 2 + resume_s
    failures_s = before_failures / checkpoint.mtbf_s * per_failure
    sigma = math.hypot(step.rel_sigma * steps_s, step.noise_s * math.sqrt(totals.steps))
    p50 = before_failures + failures_s
    return TimeEstimate(
        p50_s=p50, p95_s=p50 + Z95 * sigma, sigma_s=sigma, failures_s=failures_s, **terms
    )


def most_steps(time_of: Callable[[int], float], budget_s: float, upper: int) -> int:
    """The most steps s in [0, upper] with time_of(s) <= budget_s (time_of increasing)."""
    if budget_s < 0:
        return 0
    low, high = 0, upper
    while low < high:
        mid = (low + high + 1) // 2
        if time_of(mid) <= budget_s:
            low = mid
        else:
            high = mid - 1
    return low


def split_segments(
    work: StretchTime,
    total_steps: int,
    first_overhead_s: float,
    resume_s: float,
    lead_s: int,
    max_time_s: int | None,
    partition: str = "the partition",
) -> tuple[Segment, ...]:
    """Cut the run into sbatch jobs no longer than MaxTime, chained with afterany.

    --time of a segment = its overhead (the first: start-up and warm-up; later ones: start-up
    plus checkpoint load) + its steps' P95 time + lead_s, in whole minutes rounded up. When
    the run does not fit, every segment but the last gets MaxTime (whole minutes, rounded
    down) and as many steps as fit in it at P95; the last gets the rest. --time-min = the P50
    time of its planned steps with the same overheads. steps_p50 = its progress at P50 speed
    when it runs until its signal.
    """
    first, middle, count = _layout(
        work, total_steps, first_overhead_s, resume_s, lead_s, max_time_s, partition
    )
    if count == 1:
        planned = [total_steps]
    else:
        planned = [first, *[middle] * (count - 2), total_steps - first - middle * (count - 2)]
    segments, done = [], 0
    for index, steps in enumerate(planned, start=1):
        overhead = first_overhead_s if index == 1 else resume_s
        last = index == count
        # Only the last segment can be shorter than MaxTime: the others were filled up to it.
        limit = _minutes(overhead + work.p95(steps) + lead_s) if last else (max_time_s or 0) // 60
        time_min = min(limit, _minutes(overhead + work.p50(steps) + lead_s))
        budget = limit * 60 - overhead - lead_s
        progress = total_steps - done if last else most_steps(work.p50, budget, total_steps - done)
        done += progress
        segments.append(Segment(index, limit, time_min, progress, steps))
    return tuple(segments)


def segment_count(
    work: StretchTime,
    total_steps: int,
    first_overhead_s: float,
    resume_s: float,
    lead_s: int,
    max_time_s: int | None,
    partition: str = "the partition",
) -> int:
    """len(split_segments(...)) without building them (a short MaxTime may need thousands)."""
    args = (work, total_steps, first_overhead_s, resume_s, lead_s, max_time_s, partition)
    return _layout(*args)[2]


def _layout(
    work: StretchTime,
    total_steps: int,
    first_overhead_s: float,
    resume_s: float,
    lead_s: int,
    max_time_s: int | None,
    partition: str,
) -> tuple[int, int, int]:
    """(steps of the first segment, of each middle one, number of segments)."""
    if max_time_s is None:
        return total_steps, 0, 1
    limit_s = max_time_s // 60 * 60
    if first_overhead_s + work.p95(total_steps) + lead_s <= limit_s:
        return total_steps, 0, 1
    first = _capacity(work, limit_s, first_overhead_s, lead_s, total_steps, partition)
    middle = _capacity(work, limit_s, resume_s, lead_s, total_steps, partition)
    return first, middle, 1 + -(-(total_steps - first) // middle)


def _capacity(
    work: StretchTime, limit_s: int, overhead_s: float, lead_s: int, total: int, partition: str
) -> int:
    budget = limit_s - overhead_s - lead_s
    steps = most_steps(work.p95, budget, total)
    if steps <= 1:
        raise PartitionLimitError(
            f"{partition} MaxTime",
            fmt_duration(limit_s),
            f"leaves {fmt_duration(max(budget, 0))} per job after start-up/resume "
            f"({fmt_duration(overhead_s)}) and the stop margin ({lead_s} s): not more than one "
            f"step ({fmt_duration(work.p95(1))} at P95) -- use a partition with a longer "
            "MaxTime or more nodes",
        )
    return steps


def _minutes(seconds: float) -> int:
    return max(1, math.ceil(seconds / 60 - 1e-9))
