"""A run's progress as one line, in the calibration status line's style:

    [####......] 1,234/12,500 steps 9.9% · 3.2 steps/s · ETA 14:05 UTC (in 58 min 40 s)

`eta --watch` shows it under each refresh and `submit --watch` follows a freshly submitted
chain with it (planner.cli.status_line: live on a terminal, a line per change in a log). The
numbers are planner.eta.estimate's (steady step time, P50 finish); before the first progress line
the run's queue state stands in. Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from planner.clock import short_moment_text
from planner.errors import SlurmUnavailableError
from planner.eta.estimate import Eta, eta_for
from planner.runs.progress_reader import ProgressReader
from planner.runs.run_folder import LOGS_DIR, load_jobs, progress_candidates, read_train_json
from planner.slurm.queue import Runner, queued

CELLS = 10
DOT = "·"


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    step_s: float | None  # the steady step time; None before two timed steps
    finish: float | None  # the P50 finish (Unix seconds)
    now: float
    state: str  # running, done, stopped, or the queue's word before the first step
    over: bool  # nothing more will happen: done, or no job left to run
    note: str = ""  # why a follow ended short of the last step


def from_eta(eta: Eta) -> Progress:
    step = eta.step_time.mean_s if eta.step_time is not None else None
    finish = eta.finish_p50
    note = ""
    if eta.watch_over and eta.status != "done":
        note = next((n for n in eta.notes if "plan-job resubmit" in n), "")
    return Progress(
        eta.done_step, eta.total_steps, step, finish, eta.now, eta.status, eta.watch_over, note
    )


def bar_text(progress: Progress) -> str:
    """The line itself; ``[##...]`` fills with the fraction of steps done."""
    total = max(progress.total, 1)
    fraction = min(max(progress.done / total, 0.0), 1.0)
    filled = int(fraction * CELLS)
    bar = "[" + "#" * filled + "." * (CELLS - filled) + "]"
    parts = [f"{bar} {progress.done:,}/{progress.total:,} steps {fraction:.0%}"]
    if progress.state == "done":
        if progress.finish is not None:
            parts.append(f"done at {short_moment_text(progress.finish, progress.now)}")
        else:
            parts.append("done")
        return f" {DOT} ".join(parts)
    if progress.step_s:
        parts.append(_rate(progress.step_s))
    if progress.finish is not None:
        parts.append(f"ETA {short_moment_text(progress.finish, progress.now)}")
    elif progress.state == "running":
        parts.append("ETA after the first timed steps" if not progress.step_s else "ETA unknown")
    if progress.state != "running":
        parts.append(progress.state)
    return f" {DOT} ".join(parts)


def bar_key(progress: Progress) -> str:
    """A log file gets a new line when this changes (or every 30 s): state or step."""
    return f"{progress.state}|{progress.done}"


def waiting(run_dir: Path, runner: Runner | None = None, now: float | None = None) -> Progress:
    """A run folder whose jobs have written no progress yet: their queue state."""
    now = time.time() if now is None else now
    total = _total_steps(run_dir)
    ids = [job.job_id for job in load_jobs(run_dir)]
    try:
        queue = queued(ids, runner)
    except SlurmUnavailableError as exc:
        return Progress(0, total, None, None, now, f"queue not read ({exc})", False)
    active = [queue[i] for i in ids if i in queue and queue[i].active]
    if not active:
        note = (
            f"no job of the run is queued or running and none wrote progress: see the logs in "
            f"{run_dir / LOGS_DIR}"
        )
        return Progress(0, total, None, None, now, "no job left", True, note)
    job = active[0]
    reason = "" if job.reason in ("", "None") else f" ({job.reason})"  # squeue's "None"
    state = f"job {job.job_id} {job.state}{reason}"
    return Progress(0, total, None, None, now, state, False)


def started(run_dir: Path) -> bool:
    """Whether the run's progress file has a line yet."""
    for path in progress_candidates(run_dir, read_train_json(run_dir)):
        try:
            if path.stat().st_size > 0:
                return True
        except OSError:
            continue
    return False


def run_progress(run_dir: Path, readers: dict[Path, ProgressReader] | None = None) -> Progress:
    """Where a submitted run stands: planner.eta.estimate's estimate once it has progress lines
    (``readers``: kept between calls, each reads only the lines added since)."""
    if not started(run_dir):
        return waiting(run_dir)
    return from_eta(eta_for(str(run_dir), readers=readers))


def follow(
    snapshot: Callable[[], Progress],
    show: Callable[[Progress], None],
    interval_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Progress:
    """Show the run's progress every ``interval_s`` until it is over; Ctrl-C propagates."""
    while True:
        progress = snapshot()
        show(progress)
        if progress.over:
            return progress
        sleep(interval_s)


def _rate(step_s: float) -> str:
    """Steps per second, or seconds per step for slow steps (0.05 steps/s reads badly)."""
    if step_s <= 1.0:
        return f"{1 / step_s:.3g} steps/s"
    return f"{step_s:.3g} s/step"


def _total_steps(run_dir: Path) -> int:
    total = read_train_json(run_dir).get("total_steps")
    return total if isinstance(total, int) else 0
