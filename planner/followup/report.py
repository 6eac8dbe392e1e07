"""Tables for plan-job resubmit and tighten: what the run did, what it needs, why."""

from __future__ import annotations

from collections.abc import Sequence

from planner.followup.pace import RunPace
from planner.followup.resubmit import Resubmission
from planner.followup.state import RunState
from planner.followup.tighten import TightenPlan
from planner.runs.diagnosis import Diagnosis
from planner.runs.run_folder import SubmittedJob, script_name
from planner.slurm.accounting import JobOutcome
from planner.textwidth import fit_table
from planner.units import fmt_duration, slurm_minutes


def state_rows(state: RunState) -> list[tuple[str, str]]:
    rows = [("run", str(state.run_dir))]
    if state.last is not None:
        rows.append(("last job", _outcome(state.last)))
        attempt = state.last_attempt
        if attempt is not None:
            rows += diagnosis_rows(attempt.diagnosis)
    ended = [o for o in state.accounting.outcomes.values() if o is not state.last]
    if ended:
        rows.append(("earlier jobs", ", ".join(f"{o.job_id} {o.state}" for o in ended)))
    failed = [a for a in state.attempts if a.diagnosis.failed and a is not state.last_attempt]
    for attempt in failed[-3:]:
        rows.append(("failed before", attempt.diagnosis.headline()))
    for job in state.active:
        rows.append(("still queued", f"job {job.job_id} {job.state}"))
    history, ckpt = state.history, state.checkpoint
    lost = max(history.done_step - ckpt.step, 0)
    rows.append(
        (
            "progress",
            f"step {history.done_step:,} reached of {state.total_steps:,}; checkpoint "
            f"{ckpt.step:,}: {lost:,} steps to redo (interval {state.pace.interval_steps:,})",
        )
    )
    rows.append(("checkpoint", ckpt.note))
    return rows


def pace_rows(pace: RunPace) -> list[tuple[str, str]]:
    if pace.step_source == "run":
        where = f"measured in the run ({pace.steps_timed} steady steps)"
    else:
        where = "the plan's (too few steps in the run to measure)"
    return [
        (
            "step time",
            f"{fmt_duration(pace.stats.mean_s)} P50, {fmt_duration(pace.step_p95_s)} P95: {where}",
        ),
        (
            "resume",
            f"{fmt_duration(pace.resume_s)}: start-up, checkpoint load and warm-up "
            f"({pace.resume_source})",
        ),
        (
            "saves",
            f"{fmt_duration(pace.save_s)} each ({pace.save_source}), every "
            f"{pace.interval_steps:,} steps",
        ),
        (
            "reserve",
            f"{pace.lead_s} s after the work (one P95 step, one save, 10 s, 60 s): "
            f"--signal=B:USR2@{pace.signal_lead_s}",
        ),
    ]


def resubmission_text(resub: Resubmission, width: int | None = None) -> str:
    rows = state_rows(resub.state) + pace_rows(resub.state.pace)
    limit = resub.partition.max_time_s
    maximum = fmt_duration(limit) if limit is not None else "UNLIMITED"
    if resub.partition_source == "none":
        maximum = "unknown (not read)"
    elif resub.partition_source != "scontrol":
        maximum += f" (from {resub.partition_source}, not read now)"
    rows.append(("partition", f"{resub.partition.name}, MaxTime {maximum}"))
    rows.append(
        (
            "remaining",
            f"{resub.steps:,} steps from step {resub.from_step:,}: "
            f"{fmt_duration(resub.p50_s)} P50, {fmt_duration(resub.p95_s)} P95, in "
            f"{len(resub.segments)} job(s)",
        )
    )
    rows += _notes(resub.notes)
    rows += [("not read" if i == 0 else "", fact) for i, fact in enumerate(resub.unread)]
    table = fit_table(rows, ("resubmit", f"#{resub.number}"), width=width)
    segments = fit_table(
        [
            (
                script_name(s.index),
                slurm_minutes(s.time_limit_minutes),
                slurm_minutes(min(s.time_min_minutes, s.time_limit_minutes)),
                f"{s.steps_planned:,}",
            )
            for s in resub.segments
        ],
        ("new script", "--time", "--time-min", "steps (P95)"),
        width=width,
    )
    return f"{table}\n\n{segments}"


def tighten_text(plan: TightenPlan, width: int | None = None) -> str:
    rows = [("run", str(plan.run_dir)), *pace_rows(plan.pace)]
    rows.append(
        ("pending from", f"step {plan.from_step:,} of {plan.total_steps:,} ({plan.from_what})")
    )
    rows += _notes(plan.notes)
    table = fit_table(rows, ("tighten", ""), width=width)
    if not plan.changes:
        return table
    changes = fit_table(
        [
            (
                c.job_id,
                c.segment or "-",
                slurm_minutes(c.limit_s // 60) if c.limit_s else "-",
                slurm_minutes(c.new_limit_minutes) if c.new_limit_minutes else "unchanged",
                c.reason,
            )
            for c in plan.changes
        ],
        ("job", "segment", "--time now", "new --time", "why"),
        width=width,
    )
    return f"{table}\n\n{changes}"


def diagnosis_rows(found: Diagnosis, log_lines: int = 5) -> list[tuple[str, str]]:
    """How a job ended and why (planner.runs.diagnosis), for a two-column table."""
    rows = [("why", found.why)]
    rows += [("", note) for note in found.notes]
    if found.last_line:
        rows.append(("last line", found.last_line))
    if found.failed and found.log_tail:
        rows.append(("log", f"{found.log_path}, last lines:"))
        rows += [("", line) for line in found.log_tail[-log_lines:]]
    return rows


def _outcome(o: JobOutcome) -> str:
    text = f"job {o.job_id} {o.state}"
    if o.restarts:
        text += f" (restart {o.restarts})"
    if o.exit_text is not None:
        text += f" ({o.exit_text})"
    text += f", from {o.source}"
    if o.inferred:
        text += " (inferred)"
    if o.elapsed_s is not None:
        text += f", ran {fmt_duration(o.elapsed_s)}"
    if o.note:
        text += f": {o.note}"
    return text


def _notes(notes: tuple[str, ...]) -> list[tuple[str, str]]:
    return [("notes" if i == 0 else "", note) for i, note in enumerate(notes)]


def jobs_table(jobs: Sequence[SubmittedJob], width: int | None = None) -> str:
    """The jobs submit and resubmit submitted; a long script path wraps."""
    rows = [(j.segment, j.job_id, j.script, j.dependency or "-") for j in jobs]
    headers = ("segment", "job id", "script", "after (afterany)")
    return fit_table(rows, headers, wrap={2: 20}, width=width)
