"""What every plan-job command shares: the exit codes and the one place a planner error
becomes one, the options several commands take, and writing the history without letting it
fail a command."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from planner.errors import (
    BadInputError,
    CancelledByUserError,
    HistoryError,
    JobError,
    PlanJobError,
)

if TYPE_CHECKING:  # imported by the commands that plan: --help needs none of it
    from planner.calibration.record import CalibrationRecord
    from planner.history.corrected_plan import CorrectedPlan
    from planner.model.queue_finish import QueueProbe
    from planner.slurm.partition import PartitionLimits
    from planner.slurm.queue_waits import QueueWaits
    from planner.spec.run_spec import RunSpec

EXIT_JOB_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class PlanJobClickError(click.ClickException):
    """A planner error as click shows it: its message on stderr, and the exit code of its
    kind, which click reads from the class."""


class BadInputExit(PlanJobClickError):
    exit_code = EXIT_BAD_INPUT


class JobFailedExit(PlanJobClickError):
    exit_code = EXIT_JOB_FAILED


class InterruptedExit(PlanJobClickError):
    exit_code = EXIT_INTERRUPTED


def fail(exc: PlanJobError) -> NoReturn:
    if isinstance(exc, CancelledByUserError):
        raise InterruptedExit(str(exc)) from exc
    if isinstance(exc, JobError):
        parts = [str(exc)]
        if exc.stderr_tail:
            parts.append("--- last lines of the job's stderr ---\n" + exc.stderr_tail)
        if exc.log_path:
            parts.append(f"log: {exc.log_path}")
        raise JobFailedExit("\n".join(parts)) from exc
    if isinstance(exc, BadInputError):
        raise BadInputExit(str(exc)) from exc
    raise JobFailedExit(str(exc)) from exc


HISTORY = click.option(
    "--history",
    "history_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The history database [env PLANJOB_HISTORY; ~/.local/share/plan-job/history.sqlite].",
)


def record_history(action: Callable[[], object]) -> None:
    """The history is a by-product: failing to write it must not fail the command."""
    try:
        action()
    except HistoryError as exc:
        click.echo(f"warning: {exc}; nothing recorded in the history", err=True)


SETS = click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override any spec field, e.g. --set plan.deadline_hours=48 (repeatable).",
)
CALIBRATION = click.option(
    "--calibration",
    "calibration_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The record `plan-job calibrate` wrote for this spec.",
)


def finite(_ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """click reads "nan" and "inf" as floats: a flag's number must be finite."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"got {value}; must be a finite number", param=param)
    return value


DEADLINE = click.option(
    "--deadline",
    type=float,
    callback=finite,
    metavar="HOURS",
    help="Finish within this many hours at P95 [spec: plan.deadline_hours].",
)
NODES = click.option("--nodes", type=int, help="Force a node count instead of choosing one.")


def watch_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--watch [SECONDS], a refresh period with 30 s when given bare (eta, submit)."""
    return click.option(
        "--watch",
        type=click.FloatRange(min=1.0),
        is_flag=False,
        flag_value=30.0,
        default=None,
        callback=finite,
        metavar="[SECONDS]",
        help=help,
    )


JSON = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (README: JSON output)."
)
NO_CORRECTION = click.option(
    "--no-correction",
    is_flag=True,
    help="Plan from the calibration alone, without the history's correction.",
)


def plan_from_files(
    spec_path: Path,
    calibration_path: Path,
    sets: tuple[str, ...],
    deadline: float | None,
    nodes: int | None,
    history_file: Path | None = None,
    correct: bool = True,
) -> tuple[CorrectedPlan, CalibrationRecord]:
    """plan and emit: the spec and record named on the command line, the partition's limits
    where Slurm is here, and the plan with the history's correction (raises PlanJobError);
    with the record, whose measurements emit checks checkpoint.dir's room against."""
    from planner.calibration.record import load_record
    from planner.history.corrected_plan import corrected_plan
    from planner.runs.emit import record_mismatch
    from planner.spec.load import load_spec

    spec = load_spec(spec_path, sets)
    show_spec_notes(spec)
    record = load_record(calibration_path)
    mismatch = record_mismatch(spec, record.spec, str(calibration_path))
    if mismatch is not None:
        click.echo(f"warning: {mismatch}", err=True)
    partition, why = partition_or_note(spec.cluster.partition)
    queue = queue_probe(
        spec.plan.queue_history_days,
        partition,
        _recorded_waits(spec, partition, history_file, record) if partition else {},
    )
    planned = corrected_plan(
        spec,
        record,
        partition,
        str(calibration_path),
        deadline_hours=deadline,
        nodes=nodes,
        history=history_file,
        correct=correct,
        queue=queue,
        queue_note=f"unknown: {why}" if why else "",
    )
    if planned.warning:
        click.echo(f"warning: {planned.warning}", err=True)
    return planned, record


def show_spec_notes(spec: Any) -> None:
    """What reading the spec changed (a `~` expanded), one line each on stderr."""
    for note in spec.notes:
        click.echo(f"note: {note}", err=True)


def partition_or_note(name: str | None) -> tuple[PartitionLimits | None, str]:
    """The partition's limits where Slurm answers; else None, why not (no client, or a
    controller that does not answer, in Slurm's own words), and one line on stderr."""
    from planner.errors import SlurmUnavailableError
    from planner.slurm.client import client_status
    from planner.slurm.partition import read_partition

    status = client_status(("scontrol", "sinfo"))
    why = ""
    if status.kind == "missing":
        why = f"no Slurm client here ({status.reason})"
    elif status.kind == "unreachable":
        why = f"Slurm's controller does not answer (scontrol ping: {status.reason})"
    else:
        try:
            return read_partition(name), ""
        except SlurmUnavailableError as exc:  # it went down between the ping and now
            why = str(exc).split(": run plan-job")[0]
    click.echo(
        f"note: {why}, so the partition's MaxTime and node limits are not checked; run "
        "plan-job on the login node for a plan that fits the partition",
        err=True,
    )
    return None, why


def queue_probe(
    days: int, partition: PartitionLimits | None, recorded: dict[int, list[float]] | None = None
) -> QueueProbe | None:
    """Slurm's start estimates (sbatch --test-only, concurrently) and the waits between
    segments, where the controller answered the partition's read: the history's recorded
    waits of this kind and node count first (``recorded``), else the partition's (sacct)."""
    if partition is None:
        return None
    from planner.model.queue_finish import QueueProbe, prefer_recorded
    from planner.slurm.queue_waits import summarize, waits_by_nodes
    from planner.slurm.start_estimate import estimate_starts

    found: list[dict[int, list[float]] | str] = []

    def accounting(nodes: int) -> QueueWaits:
        if not found:  # one sacct for every node count
            found.append(waits_by_nodes(partition.name, days))
        by_nodes = found[0]
        if isinstance(by_nodes, str):
            return QueueWaits(None, None, 0, by_nodes)
        return summarize(by_nodes.get(nodes, []), partition.name, nodes, days)

    def waits(nodes: int) -> QueueWaits:
        where = f"{nodes} node(s) of this kind in partition {partition.name}"
        mine = (recorded or {}).get(nodes, [])
        return prefer_recorded(mine, lambda: accounting(nodes), where, days)

    return QueueProbe(estimate_starts, waits)


def _recorded_waits(
    spec: RunSpec, partition: PartitionLimits, history_file: Path | None, record: CalibrationRecord
) -> dict[int, list[float]]:
    """The history's recorded waits of the spec's kind (planner.history.recorded_waits); none
    when it cannot be read (the plan's own warning says why, from the correction's read)."""
    from planner.errors import HistoryError
    from planner.history.recorded_waits import recorded_waits

    try:
        return recorded_waits(
            spec, partition, spec.plan.queue_history_days, history_file, record=record
        )
    except HistoryError:
        return {}
