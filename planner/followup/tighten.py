"""plan-job tighten: lower the --time of a run's pending segments to what its pace needs.

A chain is planned at the calibration's P95 pace. Once the run shows it is faster, its
pending segments ask for more time than they will use, and a shorter --time starts sooner
(backfill fits it into smaller holes). Slurm lets a user lower a pending job's TimeLimit
(`scontrol update JobId=ID TimeLimit=...`), not raise it: a chain that falls short needs
`plan-job resubmit` once it has ended.

Where the running job stops at P95 comes from planner.eta.estimate; each pending segment then
resumes from there and is given, when it can finish the run, its start-up, the remaining steps
at the run's P95 pace (planner.followup.pace) and its reserve (the one its script's --signal
was sized for), in whole minutes (planner.model.timemodel.split_segments). Segments not
needed at P95 are left as they are: they are the chain's spare, and exit at once if the run is
done.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from planner.errors import SlurmUnavailableError
from planner.eta.estimate import estimate, observe_slurm
from planner.eta.outlook import Queued, pending_jobs, running_job
from planner.eta.source import load_source
from planner.followup.pace import RunPace, job_timings, measure_pace
from planner.model.plan import SIGNAL_SLACK_S, Plan
from planner.model.timemodel import most_steps, split_segments
from planner.runs.run_folder import load_plan, script_name
from planner.shell import run_command
from planner.slurm.queue import Runner
from planner.units import slurm_minutes

_SIGNAL_RE = re.compile(r"^#SBATCH --signal=\S*@(\d+)\s*$", re.M)


@dataclass(frozen=True)
class LimitChange:
    job_id: str
    segment: int | None
    limit_s: int | None  # its --time now
    new_limit_minutes: int | None  # None: left as it is
    new_min_minutes: int | None
    steps: int  # steps it is expected to run at P95
    reason: str

    @property
    def argv(self) -> list[str] | None:
        if self.new_limit_minutes is None:
            return None
        argv = ["scontrol", "update", f"JobId={self.job_id}"]
        argv.append(f"TimeLimit={slurm_minutes(self.new_limit_minutes)}")
        if self.new_min_minutes is not None:
            argv.append(f"TimeMin={slurm_minutes(self.new_min_minutes)}")
        return argv


@dataclass(frozen=True)
class TightenPlan:
    run_dir: Path
    pace: RunPace
    from_step: int
    from_what: str
    total_steps: int
    changes: tuple[LimitChange, ...]
    notes: tuple[str, ...]


def plan_tightening(
    target: str, runner: Runner | None = None, now: float | None = None
) -> TightenPlan:
    source = load_source(target, runner=runner)
    folder = (source.run_dir or Path(target)).resolve()
    plan = load_plan(folder)
    history = source.history
    view = observe_slurm(source, runner)
    if view is not None and view.error:
        raise SlurmUnavailableError(f"tighten needs the Slurm queue: {view.error}")
    queue = view.queue if view is not None else {}
    eta = estimate(source, view, now)
    interval = source.checkpoint_interval or plan.checkpoint_interval_steps
    # The running job's start is in the queue; ended jobs' would need sacct: not worth it.
    starts = {i: job.start_time for i, job in queue.items() if job.running and job.start_time}
    timings = job_timings(history)
    pace = measure_pace(history, plan, timings, starts, interval, None)
    segment = eta.segment
    if segment is not None and segment.stop_step_p95 is not None:
        start, what = segment.stop_step_p95, f"where job {segment.job_id} stops at P95"
    else:
        start, what = history.resumable_step, "the newest checkpoint"
    writer = running_job(source, queue) if segment is not None else None
    changes, step = [], start
    for job in pending_jobs(source, queue, writer):
        change, step = _change(job, step, history.total_steps, pace, _lead(folder, job, plan))
        changes.append(change)
    notes = list(pace.notes)
    if not changes:
        notes.append("no segment of the run is pending: nothing to tighten")
    return TightenPlan(folder, pace, start, what, history.total_steps, tuple(changes), tuple(notes))


def apply_tightening(plan: TightenPlan, runner: Runner | None = None) -> list[list[str]]:
    """Run the scontrol updates; returns the commands run."""
    run = runner or (lambda argv: run_command(argv, timeout=60))
    done = []
    for change in plan.changes:
        if change.argv is not None:
            run(change.argv)
            done.append(change.argv)
    return done


def _change(
    job: Queued, step: int, total: int, pace: RunPace, lead: int
) -> tuple[LimitChange, int]:
    left = total - step
    if left <= 0:
        why = "not needed at P95 (the run ends before it starts): left as the chain's spare"
        return LimitChange(job.job_id, job.segment, job.limit_s, None, None, 0, why), step
    work, resume = pace.work, pace.resume_s
    if job.limit_s is None:
        why = "no time limit known: left as it is"
        return LimitChange(job.job_id, job.segment, None, None, None, 0, why), step
    capacity = most_steps(work.p95, job.limit_s - resume - lead, left)
    if job.start_time is not None or capacity < left:
        why = "running: not changed" if job.start_time is not None else "needed whole at P95"
        return (
            LimitChange(job.job_id, job.segment, job.limit_s, None, None, capacity, why),
            step + capacity,
        )
    need = split_segments(work, left, resume, resume, lead, None)[0]
    if need.time_limit_minutes * 60 >= job.limit_s:
        why = f"{left:,} steps at P95 need its whole --time"
        return LimitChange(job.job_id, job.segment, job.limit_s, None, None, left, why), total
    why = f"{left:,} steps to the end at P95: start-up, steps and reserve fit"
    change = LimitChange(
        job.job_id,
        job.segment,
        job.limit_s,
        need.time_limit_minutes,
        need.time_min_minutes,
        left,
        why,
    )
    return change, total


def _lead(folder: Path, job: Queued, plan: Plan) -> int:
    """The reserve the job's script was made for: its --signal lead plus Slurm's slack."""
    name = script_name(job.segment) if job.segment else None
    if name:
        try:
            match = _SIGNAL_RE.search((folder / name).read_text(encoding="utf-8"))
        except OSError:
            match = None
        if match:
            return int(match.group(1)) + SIGNAL_SLACK_S
    return plan.signal_lead_s + SIGNAL_SLACK_S


def changed(plan: TightenPlan) -> Sequence[LimitChange]:
    return [c for c in plan.changes if c.new_limit_minutes is not None]
