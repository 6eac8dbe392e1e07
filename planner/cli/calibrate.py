"""plan-job calibrate: a short job of the spec's real training step, and its record."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

import click

from planner.cli.common import HISTORY, fail, record_history, show_spec_notes
from planner.cli.status_line import StatusLine
from planner.errors import PlanJobError, SpecError


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--executor",
    type=click.Choice(["local", "slurm"]),
    help="Where the calibration job runs [spec: calibration.executor, default local].",
)
@click.option("--partition", help="Slurm partition [spec: cluster.partition].")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    help="Device to measure on [spec: calibration.device].",
)
@click.option("--max-steps", type=int, help="Step cap [spec: calibration.max_steps].")
@click.option("--max-seconds", type=float, help="Time cap [spec: calibration.max_seconds].")
@click.option(
    "--target-ci",
    type=float,
    help="Stop when the 95% CI half-width / mean reaches this [calibration.target_ci].",
)
@click.option(
    "--time-limit",
    type=int,
    help="The job's --time in minutes [spec: calibration.time_limit_minutes].",
)
@click.option(
    "--nodes",
    "node_counts",
    metavar="N[,N...]",
    help="Calibrate at these node counts, one job each, e.g. 1,2: fits the all-reduce the "
    "plan scales with (Slurm only) [spec: calibration.nodes, default 1].",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override any spec field, e.g. --set batch.micro_batch=32 (repeatable).",
)
@click.option(
    "--command",
    "command_run",
    metavar="COMMAND",
    help='Calibrate your own training command, e.g. "python train.py --steps '
    '{total_steps}" [spec: command.run].',
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the record [default: calibrations/<name>.yaml].",
)
@click.option(
    "--jobs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".plan-job/jobs"),
    show_default=True,
    help="Folder for the job's logs and submitit files.",
)
@HISTORY
def calibrate(
    spec_path: Path,
    executor: str | None,
    partition: str | None,
    device: str | None,
    max_steps: int | None,
    max_seconds: float | None,
    target_ci: float | None,
    time_limit: int | None,
    node_counts: str | None,
    sets: tuple[str, ...],
    command_run: str | None,
    output: Path | None,
    jobs_dir: Path,
    history_file: Path | None,
) -> None:
    """Run a short calibration job of SPEC's real training step and record what it measured."""
    from planner.calibration import calibrate as calibration
    from planner.calibration.record import check_record_path, default_record_path, save_record
    from planner.calibration.report import calibration_table, scaling_table
    from planner.history import database as history
    from planner.spec.load import load_spec

    flags = {
        "calibration.executor": executor,
        "cluster.partition": partition,
        "calibration.device": device,
        "calibration.max_steps": max_steps,
        "calibration.max_seconds": max_seconds,
        "calibration.target_ci": target_ci,
        "calibration.time_limit_minutes": time_limit,
    }
    overrides = [*sets, *(f"{k}={v}" for k, v in flags.items() if v is not None)]
    line = StatusLine()
    try:
        if node_counts is not None:
            overrides.append(f"calibration.nodes={_node_list(node_counts)}")
        spec = load_spec(spec_path, overrides, command=command_run)
        show_spec_notes(spec)
        folder = calibration.job_folder(jobs_dir, spec)
        out_path = output or default_record_path(spec)
        check_record_path(out_path)  # before the job: a record it cannot save wastes it
        # The job running now: its progress file, and which of several it is.
        current: dict[str, Any] = {"folder": folder, "label": ""}

        def on_status(status: Any) -> None:
            progress = calibration.last_calibration_progress(current["folder"])
            text, key = _status_text(status, spec.calibration.target_ci, progress)
            line.show(current["label"] + text, current["label"] + key)

        def on_run(run: Any, index: int, count: int, run_folder: Path) -> None:
            current["folder"] = run_folder
            if count == 1:
                return
            current["label"] = f"[{index}/{count}: {run.nodes} node(s)] "
            line.close()
            line.last_text = ""
            click.echo(
                f"calibration job {index} of {count}: {run.nodes} node(s) x "
                f"{run.tasks_per_node} task(s), grad_accum {run.grad_accum}; logs in {run_folder}",
                err=True,
            )

        what = (
            f"{spec.workload.name} {spec.workload.preset}"
            if spec.command is None
            else f"`{shlex.join(spec.command.argv)}` (reports: {spec.command.report})"
        )
        click.echo(
            f"calibrating {spec.name}: {what}, "
            f"micro-batch {spec.batch.micro_batch}, {spec.precision}, "
            f"executor {spec.calibration.executor}"
            + (
                f", nodes {', '.join(map(str, spec.calibration.nodes))}"
                if spec.calibration.nodes != (1,)
                else ""
            )
            + f"; logs in {folder}",
            err=True,
        )
        try:
            record = calibration.calibrate(spec, folder, on_status, on_run)
        finally:
            line.close()
        save_record(record, out_path)
    except PlanJobError as exc:
        fail(exc)
    record_history(lambda: history.record_calibration(record, out_path, history_file))
    click.echo(calibration_table(record, str(out_path)))
    if record.scaling is not None:
        click.echo("\n" + scaling_table(record.scaling))


def _node_list(text: str) -> str:
    """--nodes 1,2 as the YAML list calibration.nodes reads (the spec validates the counts)."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise SpecError(
            "--nodes", text, "expected node counts separated by commas, e.g. 1,2"
        ) from None
    return "[" + ", ".join(str(c) for c in counts) + "]"


def _status_text(status: Any, target: float, progress: dict[str, Any] | None) -> tuple[str, str]:
    elapsed = time.strftime("%M:%S", time.gmtime(status.elapsed_s))
    text = f"job {status.job_id} {status.state}"
    if status.reason:
        text += f" ({status.reason})"
    if status.node:
        text += f" on {status.node}"
    text += f", {elapsed} since submission"
    if progress and status.state == "RUNNING":
        ci = progress.get("ci_rel")
        ci_text = f"CI ±{ci * 100:.1f}% (target {target * 100:g}%)" if ci else "CI pending"
        text += f"; step {progress.get('step')}, {ci_text}"
    # The key decides when a log file gets a new line: on a change of state, not of seconds.
    return text, f"{status.state}|{status.reason}"
