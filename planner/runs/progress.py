"""A run's progress as read back: the training's progress file (jobs.progress, what plan-job's
jobs write) or a Hugging Face Trainer's trainer_state.json, as a History: the run's jobs in
order, each with the step times it logged.

A Hugging Face Trainer's trainer_state.json holds no times at all (its log_history has
step, epoch, loss, learning_rate, grad_norm, eval metrics; train_runtime only once train()
has returned). Its pace is read from the modification times of the checkpoint-*/
trainer_state.json files next to it, which the Trainer rewrites at every save: one wall-clock
rate per save interval, checkpoint saves and evaluations included. Torch-free.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import BadInputError, NoProgressError
from planner.runs.job_log import JobLog, job_from_times
from planner.runs.progress_reader import ProgressReader

TRAINER_STATE = "trainer_state.json"
_CHECKPOINT_DIR_RE = re.compile(r"^checkpoint-(\d+)$")
WHAT_TO_PASS = (
    "pass a progress.jsonl (jobs.progress), a Hugging Face trainer_state.json, a run folder "
    "(`plan-job emit -o FOLDER`) or a Slurm job id"
)


@dataclass(frozen=True)
class History:
    kind: str  # "progress" or "trainer_state"
    path: Path
    total_steps: int
    jobs: tuple[JobLog, ...]
    timing: str  # where step times come from: step_s, checkpoint_mtimes, train_runtime, none
    includes_saves: bool  # step times already hold the checkpoint saves (wall-clock rates)
    checkpoint_interval: int | None  # from the source itself, if it tells
    notes: tuple[str, ...] = ()
    evals: tuple[float, ...] = ()  # the newest evaluations' eval_s (progress_reader.EVALS_KEPT)
    # The newest checkpoint lines that name a path, (step, path): a command's checkpoints.
    checkpoint_lines: tuple[tuple[int | None, str], ...] = ()

    @property
    def current(self) -> JobLog:
        return self.jobs[-1]

    @property
    def done_step(self) -> int:
        return self.current.last_step

    @property
    def last_time(self) -> float | None:
        return self.current.last_time

    @property
    def resumable_step(self) -> int:
        """Where the next job would resume: the newest checkpoint (0 if none)."""
        if self.kind == "trainer_state":
            return self.done_step  # the Trainer writes the file with each checkpoint
        saves = [step for job in self.jobs for step, _ in job.saves]
        starts = [job.start_step for job in self.jobs]
        return max([*saves[-1:], *starts[-1:], 0])

    @property
    def saves(self) -> list[tuple[int, float]]:
        """(step, save_s) of the newest saves of every job, in order."""
        return [save for job in self.jobs for save in job.saves]

    @property
    def stopped(self) -> bool:
        return self.current.stop_reason is not None


def load_progress(
    path: Path,
    total_steps: int | None = None,
    fallback_total: int | None = None,
    readers: dict[Path, ProgressReader] | None = None,
) -> History:
    """A progress file (jobs.progress format) as a History; BadInputError if it says nothing.

    ``total_steps`` (the user's) beats the file's start lines, which beat ``fallback_total``
    (a run folder's train.json or plan). ``readers``: kept between calls (`eta --watch`), so
    that a file is read on from where the last call stopped (planner.runs.progress_reader)."""
    if not path.is_file():
        raise NoProgressError(
            f"{path}: no progress file here (has the run started?); {WHAT_TO_PASS}"
        )
    reader = readers.get(path) if readers is not None else None
    if reader is None:
        reader = ProgressReader(path)
        if readers is not None:
            readers[path] = reader
    reader.refresh()
    summary = reader.snapshot()
    if not summary.events:
        raise NoProgressError(
            f"{path}: no progress lines (empty, or not the JSON Lines of jobs.progress); if "
            f"its job is still queued or starting, try again once it has run some steps; "
            f"else {WHAT_TO_PASS}"
        )
    total = total_steps or summary.total_steps or fallback_total
    if not total:
        raise BadInputError(
            f"{path}: no `start` line gives total_steps; pass --total-steps N (the run's last "
            f"optimizer step)"
        )
    return History(
        "progress",
        path,
        total,
        summary.jobs,
        "step_s",
        False,
        None,
        evals=summary.evals,
        checkpoint_lines=summary.checkpoint_lines,
    )


def load_trainer_state(path: Path, total_steps: int | None = None) -> History:
    state = trainer_state(path)
    if state is None:
        raise BadInputError(f"{path}: not a trainer_state.json (no log_history); {WHAT_TO_PASS}")
    total = total_steps or _int(state.get("max_steps")) or 0
    if total <= 0:
        raise BadInputError(f"{path}: max_steps is not set; pass --total-steps N")
    global_step = max(_int(state.get("global_step")) or 0, 0)
    mtime = path.stat().st_mtime
    runtime = next(
        (e for e in reversed(state["log_history"]) if isinstance(e, dict) and "train_runtime" in e),
        None,
    )
    points = _checkpoint_times(path, global_step, mtime)
    rates = [
        ((t1 - t0) / (s1 - s0), s1)
        for (s0, t0), (s1, t1) in itertools.pairwise(points)
        if s1 > s0 and t1 > t0
    ]
    notes = [
        "trainer_state.json has no per-step times; the pace comes from "
        + (
            f"the modification times of {len(points)} checkpoint trainer_state.json files "
            f"({len(rates)} save intervals): wall time per step with saves and evaluations "
            f"included; copied or touched files make it wrong"
            if rates
            else "nowhere"
        )
    ]
    timing = "checkpoint_mtimes" if rates else "none"
    if not rates and runtime is not None and global_step > 0:
        # Only once train() has returned; an average with start-up and evaluations, and too
        # low if that train() call resumed from a checkpoint (it ran fewer steps).
        rates = [(float(runtime["train_runtime"]) / global_step, global_step)]
        timing = "train_runtime"
        notes.append("step time = train_runtime / global_step (the whole train() call)")
    if timing == "none":
        notes.append(
            "the ETA needs timing: pass the Trainer's output folder with two or more "
            "checkpoint-*/ folders, or write progress lines with jobs.progress.ProgressWriter "
            "from a TrainerCallback (on_step_end) and pass that file"
        )
    job = job_from_times(
        [rate for rate, _ in rates],
        last_step=global_step,
        last_time=mtime,
        # train() writes train_runtime when it returns: early stopping ends short of total.
        stop_reason="done" if global_step >= total else ("stopped" if runtime else None),
    )
    interval = state.get("save_steps")
    return History(
        "trainer_state",
        path,
        total,
        (job,),
        timing,
        True,
        int(interval) if isinstance(interval, int) and interval > 0 else None,
        tuple(notes),
    )


def trainer_state(path: Path) -> dict[str, Any] | None:
    data = _read_json(path)
    return data if isinstance(data.get("log_history"), list) else None


def _checkpoint_times(path: Path, global_step: int, mtime: float) -> list[tuple[int, float]]:
    """(global_step, mtime) of this trainer_state.json and its sibling checkpoints', by step."""
    output_dir = path.parent.parent if _CHECKPOINT_DIR_RE.match(path.parent.name) else path.parent
    points = {global_step: mtime}
    for state_path in output_dir.glob(f"checkpoint-*/{TRAINER_STATE}"):
        match = _CHECKPOINT_DIR_RE.match(state_path.parent.name)
        if match:
            step = int(match.group(1))
            points[step] = max(points.get(step, 0.0), state_path.stat().st_mtime)
    return sorted(points.items())


def newest_trainer_state(folder: Path) -> Path | None:
    if (folder / TRAINER_STATE).is_file():
        return folder / TRAINER_STATE
    checkpoints = [
        (int(match.group(1)), path)
        for path in folder.glob(f"checkpoint-*/{TRAINER_STATE}")
        if (match := _CHECKPOINT_DIR_RE.match(path.parent.name))
    ]
    return max(checkpoints)[1] if checkpoints else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _int(value: Any) -> int | None:
    # NaN, infinities and counts past 64 bits are damage, not steps: read as missing.
    if not _finite(value) or not -(2**63) <= value < 2**63:
        return None
    return int(value)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
