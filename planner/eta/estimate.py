"""How long a run still needs, from its own recent steps; and whether its jobs get it there.

Step time: planner.eta.steps (each job's warm-up cut by MSER-5, a winsorized mean of the
newest steady steps and its batch-means CI).

Remaining time. P50 = steps x step time + the checkpoint saves still due (at the newest
observed save time) + per segment still to start: start-up and checkpoint load (the plan's
resume_s, else the observed load) and the observed warm-up excess. P95 adds 1.645 sigma,
sigma combining in quadrature the CI of the mean (all steps move together), per-step noise
(sqrt(steps) x sd) and the run-to-run spread of the plan (default 2%), as planner.model.timemodel
does. The seed's "method 2" (mean of every logged step, warm-up included) is shown beside it.

Segments and the chain: planner.eta.outlook. Output (table, JSON, --watch): planner.eta.report.
Torch-free.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import SlurmUnavailableError
from planner.eta.outlook import (
    ChainOutlook,
    SegmentOutlook,
    Simulation,
    chain_outlook,
    pending_jobs,
    segment_of,
    segment_outlook,
    simulate,
    stop_reserve,
    with_waits,
)
from planner.eta.remaining import Costs, Remaining, costs_of, remaining_time
from planner.eta.source import Source, load_source
from planner.eta.standing import SlurmView, Standing, standing
from planner.eta.steps import (
    MIN_JOB_STEPS,
    Baseline,
    SteadyStepTime,
    baseline,
    mean_p95,
    steady_step_time,
)
from planner.runs.diagnosis import Diagnosis
from planner.runs.progress_reader import ProgressReader
from planner.shell import command_text
from planner.slurm.accounting import job_outcomes
from planner.slurm.chain_starts import QueuedStart, queued_starts
from planner.slurm.queue import Runner, queued, with_end_from_env
from planner.slurm.queue_waits import partition_waits
from planner.spec.run_spec import PlanSpec
from planner.units import fmt_duration

DEFAULT_HISTORY_DAYS = PlanSpec().queue_history_days

STALE_MIN_S = 300.0  # no line for this long (and 20 steps): say the job may be dead


@dataclass(frozen=True)
class Eta:
    target: str
    kind: str  # progress or trainer_state
    path: str
    run_dir: str | None
    now: float
    status: str  # done, running, pending, stopped
    done_step: int
    total_steps: int
    jobs_seen: int
    timing: str
    step_time: SteadyStepTime | None
    baseline: Baseline | None
    remaining: Remaining | None
    finish_p50: float | None
    finish_p95: float | None
    segment: SegmentOutlook | None
    chain: ChainOutlook | None
    notes: tuple[str, ...]
    watch_over: bool  # nothing more will happen: done, or no job left to run
    # How the newest job ended when it wrote no stop line (planner.runs.diagnosis), as a dict.
    diagnosis: dict[str, Any] | None = None
    # Each pending segment's expected start and where it comes from (planner.eta.outlook).
    queued: tuple[QueuedStart, ...] = ()

    @property
    def fraction(self) -> float:
        return min(self.done_step / self.total_steps, 1.0) if self.total_steps else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["fraction"] = self.fraction
        for key in ("now", "finish_p50", "finish_p95"):
            out[f"{key}_local"] = _iso(getattr(self, key))
        if self.segment is not None:
            out["segment"]["end_time_local"] = _iso(self.segment.end_time)
        return _json_safe(out)


def eta_for(
    target: str,
    total_steps: int | None = None,
    runner: Runner | None = None,
    now: float | None = None,
    readers: dict[Path, ProgressReader] | None = None,
) -> Eta:
    """The estimate for TARGET (a progress.jsonl, a trainer_state.json, a run folder or a
    Slurm job id), with what squeue says about its jobs where Slurm is here. ``readers``:
    kept between calls (`--watch`), so that each reads only the progress lines added since."""
    source = load_source(target, total_steps, runner, readers)
    return estimate(source, observe_slurm(source, runner), now)


def observe_slurm(source: Source, runner: Runner | None = None) -> SlurmView | None:
    """One squeue call for the jobs of the chain, the newest job in the file and TARGET's."""
    ids = [job.job_id for job in source.chain]
    ids += [source.history.current.job_id or "", source.job.job_id if source.job else ""]
    asked = tuple(dict.fromkeys(i for i in ids if i))
    if not asked:
        return None
    try:
        queue = queued(asked, runner)
    except SlurmUnavailableError as exc:
        return SlurmView(asked, {}, str(exc))
    current = source.history.current
    ended = {}
    if current.job_id and current.job_id not in queue and current.stop_reason is None:
        # One sacct call, only for a job that ended without its stop line: why it ended.
        ended = job_outcomes([current.job_id], runner).outcomes
    waits = None
    plan = source.plan
    startless = any(j.state == "PENDING" and j.start_time is None for j in queue.values())
    if startless and plan is not None and plan.partition and plan.nodes:
        # One sacct call, only when Slurm gives a pending job no start (a dependency).
        days = plan.queue_history_days or DEFAULT_HISTORY_DAYS
        waits = partition_waits(plan.partition, plan.nodes, days, runner)
    view = {k: with_end_from_env(v) for k, v in queue.items()}
    return SlurmView(asked, view, None, ended, waits)


def estimate(source: Source, slurm: SlurmView | None, now: float | None = None) -> Eta:
    """The run's ETA in named steps: where it stands (planner.eta.standing), its steady
    step, what the rest costs besides steps (planner.eta.remaining), the queued jobs played
    forward (_simulations), the segments still to start (_resumes), the time left
    (remaining_time) and the finish with the running segment and the chain (_finish)."""
    now = time.time() if now is None else now
    history = source.history
    notes = list(history.notes)
    stand = standing(source, slurm, now, notes)
    starts = _queued_starts(source, stand, slurm, now)
    step = steady_step_time(history.jobs, cut_warmup=history.timing == "step_s")
    if step is None:
        if history.timing == "step_s":
            notes.append("fewer than two timed steps so far: no ETA yet")
        unknown = (None, None)
        found = _eta(
            source, now, stand.status, None, None, unknown, None, None, notes, stand.done, slurm
        )
        return dataclasses.replace(found, queued=starts)
    if step.provisional:
        notes.append(f"no job has {MIN_JOB_STEPS} timed steps yet: warm-up not excluded")
    costs = costs_of(source, step, notes)
    sims, current_end = _simulations(source, stand, slurm, step, costs, now)
    resumes = _resumes(source, stand, sims)
    remaining = remaining_time(history, step, stand.from_step, costs, resumes, stand.done)
    finish, segment, chain = _finish(
        source, stand, slurm, step, costs, sims, current_end, remaining, now
    )
    notes += finish.notes
    progress = history.kind == "progress"
    if stand.known and not stand.done and history.current.job_id is None and progress:
        notes.append("the progress file names no job ($SLURM_JOB_ID): its segment not checked")
    if resumes and source.plan is None and progress:
        notes.append("no plan.yaml: each resume costs only the observed checkpoint load")
    outlook = ((finish.p50, finish.p95), segment, chain)
    found = _eta(
        source,
        now,
        stand.status,
        step,
        remaining,
        *outlook,
        notes,
        stand.done,
        slurm,
        stand.diagnosis,
    )
    return dataclasses.replace(found, queued=starts)


def _queued_starts(
    source: Source, stand: Standing, slurm: SlurmView | None, now: float
) -> tuple[QueuedStart, ...]:
    """Each pending segment's expected start: Slurm's, else after the one before it ends and
    the partition's median wait (planner.slurm.chain_starts)."""
    waits = slurm.waits if slurm is not None else None
    pending = with_waits(pending_jobs(source, stand.queue, stand.writer), waits)
    writer = stand.writer
    free_at = writer.end_time if writer is not None and writer.end_time else now
    return tuple(queued_starts(pending, max(free_at, now), waits))


_Sims = tuple[Simulation, Simulation]  # at the P50 step and at the P95 mean


def _simulations(
    source: Source,
    stand: Standing,
    slurm: SlurmView | None,
    step: SteadyStepTime,
    costs: Costs,
    now: float,
) -> tuple[_Sims | None, tuple[int | None, float] | None]:
    """The queued jobs played forward at the P50 and the P95 step (each waiting its P50 or
    P95 wait where Slurm gives it no start), and the running job's segment and end; no
    simulation when the run is done or nothing is queued."""
    history = source.history
    waits = slurm.waits if slurm is not None else None
    pending = with_waits(pending_jobs(source, stand.queue, stand.writer), waits)
    current_end = None
    if stand.writer is not None and stand.writer.end_time is not None:
        current_end = (segment_of(source, stand.writer.job_id), stand.writer.end_time)
    if stand.done or (current_end is None and not pending):
        return None, current_end
    start = (history.last_time or now, stand.from_step) if stand.live else (now, stand.from_step)
    reserve = stop_reserve(step, costs.save_s, source.plan)
    total = history.total_steps
    args = (start, current_end, pending, total, reserve, costs.resume_each, costs.save_s)
    mean95 = mean_p95(step, total - stand.from_step, costs.spread)
    sims = (
        simulate(step.mean_s + costs.per_save, *args),
        simulate(mean95 + costs.per_save, *args, band=1),
    )
    return sims, current_end


def _resumes(source: Source, stand: Standing, sims: _Sims | None) -> int:
    """Segments still to start."""
    plan = source.plan
    if sims is not None:
        return sims[0].resumes
    if plan and plan.segment_limits_s and not stand.done:
        # Not on the cluster (or not submitted): the plan's segments not yet started.
        return max(len(plan.segment_limits_s) - len(source.history.jobs), 0 if stand.live else 1)
    return 0 if stand.live or stand.done else 1


@dataclass(frozen=True)
class _Finish:
    p50: float | None
    p95: float | None
    notes: tuple[str, ...] = ()


def _finish(
    source: Source,
    stand: Standing,
    slurm: SlurmView | None,
    step: SteadyStepTime,
    costs: Costs,
    sims: _Sims | None,
    current_end: tuple[int | None, float] | None,
    remaining: Remaining,
    now: float,
) -> tuple[_Finish, SegmentOutlook | None, ChainOutlook | None]:
    """When the run finishes, with the running segment's and the chain's outlook."""
    history = source.history
    if stand.done:
        return _Finish(history.last_time, history.last_time), None, None
    if sims is not None:
        segment = None
        if stand.writer is not None and current_end is not None:
            segment = segment_outlook(
                stand.writer, sims, history, step, costs.interval, costs.save_s
            )
        chain = chain_outlook(source, stand.queue, sims, history.total_steps)
        notes: tuple[str, ...] = ()
        waits = slurm.waits if slurm is not None else None
        if sims[0].resumes and not (waits is not None and waits.known):
            why = waits.source if waits is not None else "not read"
            notes = (f"queue waits between segments not counted ({why})",)
        return _Finish(sims[0].finish, sims[1].finish, notes), segment, chain
    if stand.live and history.last_time is not None:
        quiet = now - history.last_time
        stale: tuple[str, ...] = ()
        if not stand.known and quiet > max(STALE_MIN_S, 20 * step.mean_s):
            stale = (
                f"no progress line for {fmt_duration(quiet)}: the job may have died; the "
                f"finish assumes it still runs",
            )
        last = history.last_time
        return _Finish(last + remaining.p50_s, last + remaining.p95_s, stale), None, None
    folder = source.run_dir or source.target
    where = "no job of this run is queued or running" if stand.known else "the last job stopped"
    note = (
        f"{where}: {remaining.steps:,} steps remain; submit the rest with "
        f"`{command_text('plan-job', 'resubmit', folder)}`"
    )
    return _Finish(None, None, (note,)), None, None


def _eta(
    source: Source,
    now: float,
    status: str,
    step: SteadyStepTime | None,
    remaining: Remaining | None,
    finish: tuple[float | None, float | None],
    segment: SegmentOutlook | None,
    chain: ChainOutlook | None,
    notes: list[str],
    done: bool,
    slurm: SlurmView | None,
    diagnosis: Diagnosis | None = None,
) -> Eta:
    history = source.history
    left = remaining.steps if remaining else history.total_steps - history.done_step
    if slurm is not None and slurm.error is None:
        over = done or not any(job.active for job in slurm.queue.values())
    else:
        over = done or history.stopped
    return Eta(
        target=source.target,
        kind=history.kind,
        path=str(history.path),
        run_dir=str(source.run_dir) if source.run_dir else None,
        now=now,
        status=status,
        done_step=history.done_step,
        total_steps=history.total_steps,
        jobs_seen=len(history.jobs),
        timing=history.timing,
        step_time=step,
        baseline=baseline(history.jobs, max(left, 0)),
        remaining=remaining,
        finish_p50=finish[0],
        finish_p95=finish[1],
        segment=segment,
        chain=chain,
        notes=tuple(notes),
        watch_over=over,
        diagnosis=diagnosis.to_dict() if diagnosis is not None else None,
    )


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return dt.datetime.fromtimestamp(moment).astimezone().isoformat(timespec="seconds")


def _json_safe(value: Any) -> Any:
    """JSON has no Infinity or NaN: an unknown number is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
