"""Submit a run folder's segments as one Slurm chain (afterany) and remember the job ids.

afterany, not afterok: a segment that stops at its time limit, or on the signal before it,
has done its share and saved a checkpoint; the next one resumes from it whatever the state.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path

from planner.errors import CommandError, PlanJobError, SpecError, SubmissionError
from planner.runs.run_folder import (
    SubmittedJob,
    load_emit_settings,
    load_jobs,
    load_plan,
    load_train_config,
    read_train_json,
    save_jobs,
    segment_scripts,
)
from planner.shell import run_command
from planner.slurm.client import require_controller
from planner.slurm.queue import looks_like_job_id
from planner.spec.checkpoint_dir import prepare_for_submission


def sbatch_argv(script: Path, after: str | None) -> list[str]:
    argv = ["sbatch", "--parsable"]
    if after is not None:
        argv.append(f"--dependency=afterany:{after}")
    return [*argv, str(script)]


def check_after(after: str | None) -> None:
    if after is not None and not looks_like_job_id(after):
        raise SpecError("--after", after, "expected a Slurm job id, such as 12345 or 12345_7")


def planned_commands(folder: Path, after: str | None = None) -> list[list[str]]:
    """What `submit` would run, with the dependency on the previous job shown symbolically."""
    check_after(after)
    commands = []
    previous = after
    for index, script in enumerate(segment_scripts(folder), start=1):
        commands.append(sbatch_argv(script, previous))
        previous = f"<job id of segment {index}>"
    return commands


def submit_chain(
    folder: Path,
    after: str | None = None,
    on_submitted: Callable[[SubmittedJob], None] = lambda _job: None,
    resume_foreign: bool = False,
) -> list[SubmittedJob]:
    """Submit every segment, each after the previous; all or none stay queued.

    ``after`` chains the first segment behind an existing job. The run's checkpoint.dir must
    be writable and hold no other run's checkpoints (unless ``resume_foreign``): the first job
    would resume from them. Ctrl-C or a refused sbatch cancels what was already submitted.
    """
    scripts = segment_scripts(folder)
    check_after(after)
    load_train_config(folder, "; emit the run again")  # the folder's own damage first
    # Before the checkpoint folder is claimed: a dead controller must leave nothing changed.
    require_controller("submit")
    check_checkpoint_dir(folder, resume_foreign)
    return _submit(folder, scripts, 1, after, on_submitted, [])


def check_checkpoint_dir(folder: Path, resume_foreign: bool) -> None:
    """checkpoint_dir of the run's train.json
    (planner.spec.checkpoint_dir.prepare_for_submission)."""
    config = load_train_config(folder, "; emit the run again")
    checkpoints = Path(config.checkpoint_dir)
    run_dir = folder.resolve()
    command = bool(config.work.command)
    space = (config.keep_checkpoints, checkpoint_size(folder))
    prepare_for_submission(run_dir, checkpoints, config.run_id, command, resume_foreign, space)


def checkpoint_size(folder: Path) -> int | None:
    """The calibration's checkpoint size for a run folder: train.json's checkpoint_bytes, else
    the calibration record plan.yaml names (a folder emitted before train.json kept it)."""
    size = read_train_json(folder).get("checkpoint_bytes")
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    from planner.calibration.record import load_record  # only for older run folders

    try:
        plan = load_plan(folder)
        path = Path(plan.calibration_path)
        if not path.is_absolute():
            path = load_emit_settings(folder, segment_scripts(folder)).workdir / path
        return load_record(path).measurement.checkpoint_bytes or None
    except PlanJobError:
        return None  # not readable: the space is not checked, as before


def submit_scripts(
    folder: Path,
    scripts: Sequence[Path],
    first_segment: int,
    after: str | None = None,
    on_submitted: Callable[[SubmittedJob], None] = lambda _job: None,
) -> list[SubmittedJob]:
    """Submit more segments of a run (a resubmission) as a chain of their own, numbered from
    ``first_segment``; their job ids are appended to jobs.yaml after the earlier ones."""
    require_controller("resubmit")
    return _submit(folder, scripts, first_segment, after, on_submitted, load_jobs(folder))


def _submit(
    folder: Path,
    scripts: Sequence[Path],
    first_segment: int,
    after: str | None,
    on_submitted: Callable[[SubmittedJob], None],
    earlier: list[SubmittedJob],
) -> list[SubmittedJob]:
    submitted: list[SubmittedJob] = []
    previous = after
    try:
        for index, script in enumerate(scripts, start=first_segment):
            out = run_command(sbatch_argv(script, previous), timeout=60).stdout
            job_id = out.strip().split(";")[0]
            job = SubmittedJob(index, script.name, job_id, previous, _now())
            submitted.append(job)
            save_jobs(folder, [*earlier, *submitted])
            on_submitted(job)
            previous = job_id
    except CommandError as exc:
        _cancel(submitted)
        cancelled = ", ".join(job.job_id for job in submitted) or "none"
        raise SubmissionError(
            f"sbatch refused {exc.argv[-1]}: {exc.stderr.strip() or exc.stdout.strip()} "
            f"(exit {exc.returncode}); cancelled the segments already submitted: {cancelled}"
        ) from exc
    except KeyboardInterrupt:
        _cancel(submitted)
        raise
    return submitted


def _cancel(jobs: Sequence[SubmittedJob]) -> None:
    if jobs:
        # Best effort on a failure path: the error being raised matters more.
        with contextlib.suppress(CommandError):
            run_command(["scancel", *(job.job_id for job in jobs)], timeout=60)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
