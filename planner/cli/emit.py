"""plan-job emit: the run folder with the sbatch scripts that run the plan to its last step."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from planner.cli.common import (
    CALIBRATION,
    DEADLINE,
    HISTORY,
    NO_CORRECTION,
    NODES,
    SETS,
    fail,
    plan_from_files,
    record_history,
)
from planner.errors import PlanJobError


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@CALIBRATION
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The run folder to write: scripts, plan.yaml, train.json, logs/.",
)
@DEADLINE
@NODES
@SETS
@click.option(
    "--python",
    default=sys.executable,
    show_default="this interpreter",
    help="The Python the nodes run (it must have plan-job installed).",
)
@click.option(
    "--template",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Your template extending segment.sbatch.j2 (blocks: header, prologue, command, epilogue).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace an existing run folder that plan-job emit wrote (nothing else is replaced).",
)
@click.option("--print", "print_scripts", is_flag=True, help="Also print the scripts.")
@HISTORY
@NO_CORRECTION
def emit(
    spec_path: Path,
    calibration_path: Path,
    out_dir: Path,
    deadline: float | None,
    nodes: int | None,
    sets: tuple[str, ...],
    python: str,
    template: Path | None,
    force: bool,
    print_scripts: bool,
    history_file: Path | None,
    no_correction: bool,
) -> None:
    """Write the sbatch scripts that run SPEC's plan to its last step into a run folder."""
    from planner.history import database as history
    from planner.history.report import correction_text
    from planner.model.queue_forecast import forecast_of
    from planner.model.report import summary_table
    from planner.runs.emit import EmitOptions
    from planner.runs.emit import emit as write_run
    from planner.shell import command_text

    try:
        planned, record = plan_from_files(
            spec_path, calibration_path, sets, deadline, nodes, history_file, not no_correction
        )
        result = planned.plan
        size = record.measurement.checkpoint_bytes
        options = EmitOptions(out_dir, Path.cwd(), python, template, force, size)
        run = write_run(result, options)
    except PlanJobError as exc:
        fail(exc)
    # What the plan predicted about the queue goes beside its jobs' actual waits: `plan-job
    # history` judges the start and queue-wait predictions of runs emitted from now on.
    forecast = forecast_of(result)
    record_history(
        lambda: history.record_plan(
            result, run.folder, planned.model, history_file, record=record, queue=forecast
        )
    )
    for warning in run.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(summary_table(result))
    if planned.corrected:
        click.echo("\n" + correction_text(planned.model, result))
    if print_scripts:
        for script in run.scripts:
            click.echo(f"\n# ===== {script} =====\n{script.read_text()}")
    click.echo(f"\nwrote {run.folder}:")
    for path in (run.plan_path, run.train_config_path, *run.scripts):
        click.echo(f"  {path}")
    click.echo(f"submit with: {command_text('plan-job', 'submit', run.folder)}")
