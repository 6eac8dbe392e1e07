"""plan-job resubmit: the rest of a run whose jobs have ended short of its last step.

From the run's own record (planner.followup.state): the steps left after the newest checkpoint,
at the step time the run showed (planner.followup.pace), cut into segments no longer than the
partition's MaxTime by planner.model.timemodel.split_segments, the planner's own rule. The new
scripts are rendered by planner.runs.emit with the run's plan (its #SBATCH lines, template
slots, working directory and Python), numbered after the folder's existing ones
(segment-03.sbatch, ...), so train.json and progress.jsonl stay shared and the training
resumes from the checkpoint. They are submitted as an afterany chain whose job ids are
appended to jobs.yaml, and resubmit-K.yaml records what was decided and why.

It refuses (BadInputError), with what to change: while a job of the run is queued or
running, or a trainer of it still runs after Slurm said its job ended (a live orphan: the
run's lock is fresh); when the run is done; after an out-of-memory failure (the same batch
fails again); after a failure of the launch itself (exit 2); when the last two failed
attempts failed the same way at the same step, or the chain stopped itself, unless
--force-retry (planner.runs.diagnosis says how each ended); with another node count (a
checkpoint resumes only with the world size that wrote it); past --max-retries
resubmissions.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from planner.errors import RefusedError
from planner.followup.preview import preview_partition
from planner.followup.state import RunState
from planner.model.plan import Plan, Segment
from planner.model.timemodel import split_segments
from planner.runs.chain import sbatch_argv, submit_scripts
from planner.runs.diagnosis import Diagnosis, same_failure_twice
from planner.runs.emit import EmitOptions, render
from planner.runs.inferred_outcome import OOM_RE, job_log_text
from planner.runs.run_folder import (
    LOGS_DIR,
    EmitSettings,
    SubmittedJob,
    load_emit_settings,
    read_jobs_text,
    restore_jobs_text,
    resubmissions,
    resubmit_record_path,
    resubmitted_segments,
    save_resubmit_record,
    script_index,
    script_name,
    segment_scripts,
    write_scripts,
)
from planner.shell import command_text
from planner.slurm.partition import PartitionLimits, read_partition
from planner.slurm.queue import Runner

DEFAULT_MAX_RETRIES = 3


@dataclass(frozen=True)
class Resubmission:
    number: int  # K of resubmit-K.yaml
    state: RunState
    from_step: int
    steps: int
    partition: PartitionLimits
    segments: tuple[Segment, ...]  # numbered after the folder's existing scripts
    p50_s: float
    p95_s: float
    plan: Plan  # the run's plan with the new segments and signal lead, for rendering
    settings: EmitSettings
    scripts: tuple[tuple[str, str], ...]  # (file name, text)
    notes: tuple[str, ...]
    unread: tuple[str, ...] = ()  # a preview without Slurm: what it could not read
    partition_source: str = "scontrol"  # or, previewing without Slurm: plan.yaml, none


def check_resubmittable(
    state: RunState, nodes: int | None, max_retries: int, force_retry: bool = False
) -> None:
    """Raise RefusedError with the reason and what to change; return when it may go on."""
    folder = state.run_dir
    if state.active:
        jobs = ", ".join(f"{job.job_id} {job.state}" for job in state.active)
        raise RefusedError(
            f"{folder}: still running (job {jobs}); see `{command_text('plan-job', 'eta', folder)}`"
            f". Resubmit once its jobs have ended; to shorten the pending segments' --time to the "
            f"measured pace use `{command_text('plan-job', 'tighten', folder)}`"
        )
    orphan = next((a.diagnosis.orphan for a in state.attempts if a.diagnosis.orphan), None)
    if orphan is not None:
        raise RefusedError(
            f"{folder}: {orphan}. A new job would find the run's lock held and refuse to "
            f"start; let that trainer finish, or stop it on its node, then resubmit"
        )
    last = state.last
    if state.done:
        what = "the run ended"
        if last is not None:
            how = last.source + (", inferred" if last.inferred else "")
            what = f"the last job {last.job_id} ended {last.state} ({how})"
        raise RefusedError(
            f"{folder}: nothing to do: {what} and the checkpoint of step {state.checkpoint.step:,}"
            f" is the run's last (total_steps {state.total_steps:,})"
        )
    if last is not None and _out_of_memory(state):
        raise RefusedError(
            f"{folder}: job {last.job_id} ran out of memory ({last.state}, from {last.source}): "
            f"the same batch would fail again. Lower batch.micro_batch and raise "
            f"batch.grad_accum (the global batch stays), calibrate and plan again "
            f"(`plan-job calibrate`, `plan-job emit`)"
        )
    attempt = state.last_attempt
    if last is not None and last.state == "FAILED" and last.exit_code == 2:
        why = f" ({attempt.diagnosis.why})" if attempt is not None else ""
        raise RefusedError(
            f"{folder}: job {last.job_id} FAILED with exit code 2{why}: the training refused "
            f"to start (its train.json, arguments or launch environment, the run's lock, a "
            f"checkpoint that does not load, no room), or the batch script did not parse (bash "
            f"exits 2 too), and would again; see its log in {folder / LOGS_DIR}"
        )
    if not force_retry:
        _refuse_a_repeat(state)
    if nodes is not None and nodes != state.plan.nodes:
        ranks = state.plan.nodes * max(state.plan.gpus_per_node, 1)
        raise RefusedError(
            f"--nodes {nodes}: the run's checkpoints were written by {ranks} ranks on "
            f"{state.plan.nodes} node(s), and jobs.train resumes a checkpoint only with the "
            f"world size that wrote it (the global batch and the ranks' data streams would "
            f"change mid-run). Resubmit with --nodes {state.plan.nodes}, or start a new run "
            f"with `{command_text('plan-job', 'emit', '--nodes', nodes)}`"
        )
    done = resubmissions(folder)
    if len(done) >= max_retries:
        names = ", ".join(p.name for p in done)
        raise RefusedError(
            f"{folder}: already resubmitted {len(done)} times ({names}), the limit of "
            f"--max-retries {max_retries}: a run that keeps stopping short needs a look at its "
            f"logs ({folder / LOGS_DIR}); pass --max-retries {len(done) + 1} to go on"
        )


def prepare(
    state: RunState,
    nodes: int | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    runner: Runner | None = None,
    preview: bool = False,
    force_retry: bool = False,
) -> Resubmission:
    """The new segments and their scripts; refuses as check_resubmittable does. ``preview``
    (a dry run) goes on without Slurm, from plan.yaml's partition if it has one."""
    check_resubmittable(state, nodes, max_retries, force_retry)
    pace, plan, folder = state.pace, state.plan, state.run_dir
    notes = list(state.notes) + list(pace.notes)
    if preview:
        partition, source, unread = preview_partition(plan, runner)
    else:
        partition = read_partition(plan.spec.cluster.partition, runner)
        source, unread = "scontrol", ()
    from_step = state.checkpoint.step
    steps = state.total_steps - from_step
    segments = split_segments(
        pace.work,
        steps,
        pace.resume_s,
        pace.resume_s,
        pace.lead_s,
        partition.max_time_s,
        f"partition {partition.name}",
    )
    existing = segment_scripts(folder)
    first = 1 + max((script_index(p) for p in existing), default=0)
    segments = tuple(dataclasses.replace(s, index=first + i) for i, s in enumerate(segments))
    count = len(segments)
    p50 = count * pace.resume_s + pace.work.p50(steps) + (count - 1) * pace.save_s
    p95 = count * pace.resume_s + pace.work.p95(steps) + (count - 1) * pace.save_s
    earlier, _ = resubmitted_segments(folder)
    full = dataclasses.replace(
        plan, segments=(*plan.segments, *earlier, *segments), signal_lead_s=pace.signal_lead_s
    )
    settings = load_emit_settings(folder, existing)
    options = EmitOptions(folder, settings.workdir, settings.python, settings.template)
    scripts = tuple((script_name(s.index), render(full, s, options, folder)) for s in segments)
    if settings.source != "emit.yaml":
        notes.append(f"working directory and Python read from {settings.source}")
    return Resubmission(
        number=len(resubmissions(folder)) + 1,
        state=state,
        from_step=from_step,
        steps=steps,
        partition=partition,
        segments=segments,
        p50_s=p50,
        p95_s=p95,
        plan=full,
        settings=settings,
        scripts=scripts,
        notes=tuple(notes),
        unread=state.unread + unread,
        partition_source=source,
    )


def planned_commands(resub: Resubmission) -> list[list[str]]:
    """What submit() runs, the dependency on the previous new job shown symbolically."""
    commands, previous = [], None
    for name, _ in resub.scripts:
        commands.append(sbatch_argv(resub.state.run_dir / name, previous))
        previous = f"<job id of {name}>"
    return commands


def submit(
    resub: Resubmission, on_submitted: Callable[[SubmittedJob], None] = lambda _job: None
) -> list[SubmittedJob]:
    """Write the scripts, submit them as a chain, record resubmit-K.yaml; all or nothing."""
    folder = resub.state.run_dir
    paths = [folder / name for name, _ in resub.scripts]
    clash = [p.name for p in paths if p.exists()]
    if clash:
        raise RefusedError(f"{folder}: {', '.join(clash)} already exist; nothing was submitted")
    before = read_jobs_text(folder)
    try:
        write_scripts(folder, dict(resub.scripts))
        jobs = submit_scripts(folder, paths, resub.segments[0].index, None, on_submitted)
    except BaseException:
        # The folder stays as it was (submit_scripts cancelled what it had submitted), so a
        # second try numbers its scripts the same.
        for path in paths:
            path.unlink(missing_ok=True)
        restore_jobs_text(folder, before)
        raise
    save_resubmit_record(folder, resub.number, record(resub, jobs))
    return jobs


def record_path(resub: Resubmission) -> Path:
    return resubmit_record_path(resub.state.run_dir, resub.number)


def record(resub: Resubmission, jobs: list[SubmittedJob]) -> dict[str, object]:
    state, pace, last = resub.state, resub.state.pace, resub.state.last
    return {
        "number": resub.number,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "last_job": dataclasses.asdict(last) if last else None,
        "last_job_diagnosis": (
            state.last_attempt.diagnosis.to_dict() if state.last_attempt is not None else None
        ),
        "checkpoint_step": state.checkpoint.step,
        "checkpoint_note": state.checkpoint.note,
        "total_steps": state.total_steps,
        "remaining_steps": resub.steps,
        "step_s": pace.stats.mean_s,
        "step_p95_s": pace.step_p95_s,
        "step_source": pace.step_source,
        "steps_timed": pace.steps_timed,
        "resume_s": pace.resume_s,
        "resume_source": pace.resume_source,
        "save_s": pace.save_s,
        "save_source": pace.save_source,
        "lead_s": pace.lead_s,
        "signal_lead_s": pace.signal_lead_s,
        "max_time_s": resub.partition.max_time_s,
        "p50_s": resub.p50_s,
        "p95_s": resub.p95_s,
        "segments": [dataclasses.asdict(s) for s in resub.segments],
        "jobs": [dataclasses.asdict(j) for j in jobs],
        "notes": list(resub.notes),
    }


def _refuse_a_repeat(state: RunState) -> None:
    """The same failure twice in a row at the same step, or a chain that stopped itself: a
    resubmission would repeat it."""
    folder, attempts = state.run_dir, state.attempts
    repeated = same_failure_twice([a.diagnosis for a in attempts])
    if repeated is not None:
        older, newer = repeated
        where = f" at step {newer.step:,}" if newer.step is not None else ""
        raise RefusedError(
            f"{folder}: {_attempt_name(older)} and {_attempt_name(newer)} failed the same "
            f"way{where}: {newer.why}. A third try would too: fix the cause (their log: "
            f"{newer.log_path or folder / LOGS_DIR}), then resubmit with --force-retry"
        )
    last = state.last_attempt
    newest = last.diagnosis if last is not None else None
    if newest is not None and newest.cause == "chain_stopped":
        raise RefusedError(
            f"{folder}: {newest.why}. Its segments made no progress, and resubmitted ones "
            f"would not either: fix the cause its log shows ({newest.log_path or folder / LOGS_DIR}"
            f"), then resubmit with --force-retry"
        )


def _attempt_name(diagnosis: Diagnosis) -> str:
    name = f"job {diagnosis.job_id}"
    return name + (f" (restart {diagnosis.restarts})" if diagnosis.restarts else "")


def _out_of_memory(state: RunState) -> bool:
    last = state.last
    if last is None:
        return False
    if last.state == "OUT_OF_MEMORY":
        return True
    attempt = state.last_attempt
    if attempt is not None and attempt.diagnosis.cause in ("out_of_memory", "host_out_of_memory"):
        return True
    if last.state not in ("FAILED", "UNKNOWN"):
        return False
    text = job_log_text(state.run_dir, last.job_id)
    return bool(text and OOM_RE.search(text))
