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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planner.errors import SlurmUnavailableError
from planner.eta.outlook import (
    ChainOutlook,
    SegmentOutlook,
    chain_outlook,
    pending_jobs,
    running_job,
    segment_of,
    segment_outlook,
    simulate,
    stop_reserve,
)
from planner.eta.source import Source, load_source
from planner.eta.steps import (
    DEFAULT_SPREAD,
    MIN_JOB_STEPS,
    Z95,
    Baseline,
    SteadyStepTime,
    baseline,
    mean_p95,
    observed_interval,
    resume_time,
    save_time,
    steady_step_time,
    step_sigma,
)
from planner.runs.diagnosis import Diagnosis, diagnose, diagnose_job
from planner.runs.progress import History
from planner.runs.progress_reader import ProgressReader
from planner.shell import command_text
from planner.slurm.accounting import JobOutcome, job_outcomes
from planner.slurm.queue import Runner, SlurmJob, queued, with_end_from_env
from planner.units import fmt_duration

STALE_MIN_S = 300.0  # no line for this long (and 20 steps): say the job may be dead
LOG_LINES_SHOWN = 5  # of a failed job's log, in the notes (--json: its diagnosis has 15)
# Lines the training writes as it ends without a stop line (issues 20/21's contract).
ENDING_EVENTS = ("hang", "failure", "chain_stopped")


@dataclass(frozen=True)
class Remaining:
    from_step: int  # the step the rest starts from (the newest checkpoint after a crash)
    steps: int
    steps_s: float
    saves: int
    save_s: float  # each
    saves_s: float
    resumes: int  # segments still to start
    resume_s: float  # each: start-up, checkpoint load and warm-up
    resumes_s: float
    p50_s: float
    p95_s: float


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


@dataclass(frozen=True)
class SlurmView:
    """What the queue says about the run's jobs; jobs missing from ``queue`` have ended."""

    asked: tuple[str, ...]
    queue: dict[str, SlurmJob]
    error: str | None = None
    # How the newest job in the file ended, when it is no longer queued and wrote no stop line.
    ended: dict[str, JobOutcome] = field(default_factory=dict)


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
    return SlurmView(asked, {k: with_end_from_env(v) for k, v in queue.items()}, None, ended)


def estimate(source: Source, slurm: SlurmView | None, now: float | None = None) -> Eta:
    now = time.time() if now is None else now
    history, plan = source.history, source.plan
    notes = list(history.notes)
    current = history.current
    known = slurm is not None and slurm.error is None
    if slurm is not None and slurm.error:
        notes.append(f"segment and chain not checked: {slurm.error}")
    queue = slurm.queue if slurm is not None and known else {}

    running = running_job(source, queue)
    writer = running if running is not None and running.job_id == current.job_id else None
    done = history.done_step >= history.total_steps or current.stop_reason == "done"
    # The training's own last words (a hang, a failure, a stopped chain): it has ended.
    last_words = bool(current.events(*ENDING_EVENTS))
    if done:
        status = "done"
    elif known:
        active = any(job.active for job in queue.values())
        status = "running" if running else ("pending" if active else "stopped")
    else:
        status = "running" if current.stop_reason is None and not last_words else "stopped"
    # Live: the job that writes the file is still stepping, so its newest line is where the
    # run is; otherwise the next job resumes from the newest checkpoint.
    writing = current.stop_reason is None and not last_words
    live = not done and (writer is not None or (not known and writing))
    diagnosis = None
    if not live and not done and current.stop_reason is None and history.kind == "progress":
        diagnosis = _diagnose_newest(source, slurm, now)
        if diagnosis.orphan is not None:
            live = True  # a trainer still writes: the run is where its lines are
            if status == "stopped":
                status = "running"
    from_step = history.done_step if live or done else history.resumable_step
    if diagnosis is not None:
        notes += _diagnosis_notes(diagnosis, live, from_step)

    step = steady_step_time(history.jobs, cut_warmup=history.timing == "step_s")
    if step is None:
        if history.timing == "step_s":
            notes.append("fewer than two timed steps so far: no ETA yet")
        return _eta(source, now, status, None, None, (None, None), None, None, notes, done, slurm)
    if step.provisional:
        notes.append(f"no job has {MIN_JOB_STEPS} timed steps yet: warm-up not excluded")

    interval = source.checkpoint_interval or history.checkpoint_interval
    interval = interval or observed_interval(history)
    if not history.includes_saves and interval is None:
        notes.append("checkpoint interval unknown: the saves still due are not counted")
    save_s = save_time(history, plan)
    resume_each = resume_time(history, plan, step)
    spread = (plan.run_to_run_spread if plan else None) or DEFAULT_SPREAD
    per_save = 0.0 if history.includes_saves or not interval else save_s / interval

    pending = pending_jobs(source, queue, writer)
    current_end = None
    if writer is not None and writer.end_time is not None:
        current_end = (segment_of(source, writer.job_id), writer.end_time)
    sims = None
    if not done and (current_end is not None or pending):
        start = (history.last_time or now, from_step) if live else (now, from_step)
        reserve = stop_reserve(step, save_s, plan)
        args = (start, current_end, pending, history.total_steps, reserve, resume_each, save_s)
        mean95 = mean_p95(step, history.total_steps - from_step, spread)
        sims = (simulate(step.mean_s + per_save, *args), simulate(mean95 + per_save, *args))
        resumes = sims[0].resumes
    elif plan and plan.segment_limits_s and not done:
        # Not on the cluster (or not submitted): the plan's segments not yet started.
        resumes = max(len(plan.segment_limits_s) - len(history.jobs), 0 if live else 1)
    else:
        resumes = 0 if live or done else 1
    remaining = _remaining(
        history, step, from_step, interval, save_s, resumes, resume_each, spread, done
    )

    segment = chain = None
    finish: tuple[float | None, float | None] = (None, None)
    if done:
        finish = (history.last_time, history.last_time)
    elif sims is not None:
        finish = (sims[0].finish, sims[1].finish)
        if writer is not None and current_end is not None:
            segment = segment_outlook(writer, sims, history, step, interval, save_s)
        chain = chain_outlook(source, queue, sims, history.total_steps)
        if sims[0].resumes:
            notes.append("queue waits between segments are not known and not counted")
    elif live and history.last_time is not None:
        finish = (history.last_time + remaining.p50_s, history.last_time + remaining.p95_s)
        quiet = now - history.last_time
        if not known and quiet > max(STALE_MIN_S, 20 * step.mean_s):
            notes.append(
                f"no progress line for {fmt_duration(quiet)}: the job may have died; the "
                f"finish assumes it still runs"
            )
    elif not done:
        folder = source.run_dir or source.target
        where = "no job of this run is queued or running" if known else "the last job stopped"
        notes.append(
            f"{where}: {remaining.steps:,} steps remain; submit the rest with "
            f"`{command_text('plan-job', 'resubmit', folder)}`"
        )
    if known and not done and current.job_id is None and history.kind == "progress":
        notes.append("the progress file names no job ($SLURM_JOB_ID): its segment not checked")
    if resumes and plan is None and history.kind == "progress":
        notes.append("no plan.yaml: each resume costs only the observed checkpoint load")
    return _eta(
        source, now, status, step, remaining, finish, segment, chain, notes, done, slurm, diagnosis
    )


def _diagnose_newest(source: Source, slurm: SlurmView | None, now: float) -> Diagnosis:
    """How the file's newest job ended: from its lines, and with a run folder its log, the
    run's trainer lock and what sacct said (SlurmView.ended)."""
    job = source.history.current
    outcome = slurm.ended.get(job.job_id or "") if slurm is not None else None
    if source.run_dir is not None and job.job_id:
        return diagnose_job(source.run_dir, job.job_id, outcome, job, source.checkpoint_dir, now)
    return diagnose(job.job_id, outcome, job, None, None, None, now)


def _diagnosis_notes(found: Diagnosis, live: bool, from_step: int) -> list[str]:
    if found.orphan is not None:
        return [found.orphan]
    if found.cause is None and found.state is None:
        lead = "the last job ended without a stop line (killed or crashed; nothing says why)"
    else:
        lead = found.headline()
    notes = [f"{lead}: the run resumes from its newest checkpoint, step {from_step:,}"]
    notes += list(found.notes)
    if found.last_line:
        notes.append(f"its last progress line: {found.last_line}")
    if found.log_tail:
        shown = found.log_tail[-LOG_LINES_SHOWN:]
        notes.append(f"its log ({found.log_path}), last {len(shown)} lines:")
        notes += [f"  {line}" for line in shown]
    return notes


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


def _remaining(
    history: History,
    step: SteadyStepTime,
    from_step: int,
    interval: int | None,
    save_s: float,
    resumes: int,
    resume_each: float,
    spread: float,
    done: bool,
) -> Remaining:
    steps = 0 if done else max(history.total_steps - from_step, 0)
    saves = 0
    if steps and not history.includes_saves:
        saves = resumes  # the save at the end of each segment but the last
        if interval:
            total = history.total_steps
            saves += total // interval - from_step // interval + (1 if total % interval else 0)
    steps_s = steps * step.mean_s
    p50 = steps_s + saves * save_s + resumes * resume_each
    return Remaining(
        from_step=from_step,
        steps=steps,
        steps_s=steps_s,
        saves=saves,
        save_s=save_s,
        saves_s=saves * save_s,
        resumes=resumes,
        resume_s=resume_each,
        resumes_s=resumes * resume_each,
        p50_s=p50,
        p95_s=p50 + Z95 * step_sigma(step, steps, spread),
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
