"""Where an ETA's numbers come from: a progress file, a trainer_state.json, a run folder or a
Slurm job id, resolved into a Source: the run's History (planner.runs.progress) and, for a run
folder, what was planned (plan.yaml), the checkpoint interval (train.json) and the chain's job
ids (jobs.yaml), all read through planner.runs.run_folder. A Slurm job id is followed to its
batch script's folder. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import BadInputError, NoProgressError, RunFailedError
from planner.model.plan import PlanFacts
from planner.runs.no_progress import no_progress_error
from planner.runs.progress import (
    TRAINER_STATE,
    WHAT_TO_PASS,
    History,
    load_progress,
    load_trainer_state,
    newest_trainer_state,
    trainer_state,
)
from planner.runs.progress_reader import ProgressReader
from planner.runs.run_folder import (
    JOBS_FILE,
    LOGS_DIR,
    PLAN_FILE,
    PROGRESS_FILE,
    SEGMENT_GLOB,
    TRAIN_FILE,
    SubmittedJob,
    checkpoint_interval,
    load_chain,
    plan_facts,
    progress_path,
    read_train_json,
)
from planner.slurm.queue import Runner, SlurmJob, find_job, looks_like_job_id


@dataclass(frozen=True)
class Source:
    target: str
    history: History
    run_dir: Path | None = None
    plan: PlanFacts | None = None
    chain: tuple[SubmittedJob, ...] = ()
    # The run folder's (planner.runs.run_folder.checkpoint_interval): train.json's, else
    # plan.yaml's.
    checkpoint_interval: int | None = None
    job: SlurmJob | None = None  # the job TARGET named
    checkpoint_dir: Path | None = None  # train.json's: where the run's trainer lock lives


def load_source(
    target: str,
    total_steps: int | None = None,
    runner: Runner | None = None,
    readers: dict[Path, ProgressReader] | None = None,
) -> Source:
    """Resolve TARGET: a file, a folder or a Slurm job id, in that order. ``readers``: the
    progress files' readers kept between calls (planner.runs.progress.load_progress)."""
    path = Path(target).expanduser()
    if path.is_dir():
        return _from_folder(target, path, total_steps, runner=runner, readers=readers)
    if path.is_file():
        if path.name == TRAIN_FILE or path.name == PLAN_FILE or path.name == JOBS_FILE:
            return _from_folder(target, path.parent, total_steps, runner=runner, readers=readers)
        if path.suffix == ".json" and trainer_state(path) is not None:
            return Source(target, load_trainer_state(path, total_steps))
        return Source(target, load_progress(path, total_steps, readers=readers))
    if looks_like_job_id(target):
        job = find_job(target.strip(), runner)
        folder = _folder_of_job(job)
        return _from_folder(target, folder, total_steps, job=job, runner=runner, readers=readers)
    raise BadInputError(f"{target}: no such file or folder, and not a Slurm job id; {WHAT_TO_PASS}")


def _from_folder(
    target: str,
    folder: Path,
    total_steps: int | None,
    job: SlurmJob | None = None,
    runner: Runner | None = None,
    readers: dict[Path, ProgressReader] | None = None,
) -> Source:
    train = read_train_json(folder)
    plan = plan_facts(folder)
    progress = progress_path(folder, train)
    state = newest_trainer_state(folder)
    if progress is None and state is not None:
        return Source(target, load_trainer_state(state, total_steps), job=job)
    if progress is None:
        markers = ", ".join((PROGRESS_FILE, TRAIN_FILE, PLAN_FILE, SEGMENT_GLOB))
        raise BadInputError(
            f"{folder}: not a run folder (none of {markers}) and no {TRAINER_STATE}; {WHAT_TO_PASS}"
        )
    fallback = _int(train.get("total_steps")) or (plan.total_steps if plan else None)
    chain = load_chain(folder)
    try:
        history = load_progress(progress, total_steps, fallback, readers)
    except NoProgressError:
        # Submitted jobs and no line yet: still queued, or ended without training.
        error = no_progress_error(folder, chain, runner) if chain else None
        if error is None:
            raise
        raise error from None
    stopped = any(e.get("event") == "chain_stopped" for j in history.jobs for e in j.notable)
    if chain and not stopped and not any(job.timed for job in history.jobs):
        # Start and failure lines only (a checkpoint that does not fit, a crash before the
        # first step): once every job has ended, that is the run's final state, not an ETA.
        # A chain that stopped itself says so in the table, with what it cancelled.
        error = no_progress_error(folder, chain, runner)
        if isinstance(error, RunFailedError):
            raise error
    return Source(
        target=target,
        history=history,
        run_dir=folder,
        plan=plan,
        chain=chain,
        checkpoint_interval=checkpoint_interval(train, plan),
        job=job,
        checkpoint_dir=Path(train["checkpoint_dir"]) if train.get("checkpoint_dir") else None,
    )


def _folder_of_job(job: SlurmJob) -> Path:
    """The run folder of a job: its batch script's folder (plan-job's segment-NN.sbatch live
    in the run folder), else its output file's (logs/ in a run folder), else its working dir."""
    candidates = []
    if job.script:
        candidates.append(Path(job.script).parent)
    if job.stdout:
        logs = Path(job.stdout).parent
        candidates += [logs.parent, logs] if logs.name == LOGS_DIR else [logs]
    if job.workdir:
        candidates.append(Path(job.workdir))
    for folder in candidates:
        if (folder / TRAIN_FILE).is_file() or (folder / PROGRESS_FILE).is_file():
            return folder
    seen = ", ".join(str(c) for c in candidates) or "none (Slurm gave no paths)"
    raise BadInputError(
        f"job {job.job_id} ({job.state or 'state unknown'}): no {TRAIN_FILE} or {PROGRESS_FILE} "
        f"in its script's, output's or working folder ({seen}); pass its progress file instead"
    )


def _int(value: Any) -> int | None:
    # NaN, infinities and counts past 64 bits are damage, not steps: read as missing.
    if not _finite(value) or not -(2**63) <= value < 2**63:
        return None
    return int(value)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
