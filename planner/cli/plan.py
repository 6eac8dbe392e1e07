"""plan-job plan: how long the full run takes, on how many nodes, in which segments, why."""

from __future__ import annotations

from pathlib import Path

import click

from planner.cli.common import (
    CALIBRATION,
    DEADLINE,
    HISTORY,
    JSON,
    NO_CORRECTION,
    NODES,
    SETS,
    fail,
    plan_from_files,
)
from planner.errors import PlanJobError


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@CALIBRATION
@DEADLINE
@NODES
@SETS
@HISTORY
@NO_CORRECTION
@JSON
def plan(
    spec_path: Path,
    calibration_path: Path,
    deadline: float | None,
    nodes: int | None,
    sets: tuple[str, ...],
    history_file: Path | None,
    no_correction: bool,
    as_json: bool,
) -> None:
    """How long SPEC's full run takes, on how many nodes, in which Slurm segments, and why."""
    from planner.history.report import correction_text
    from planner.model.plan_json import plan_json
    from planner.model.report import plan_table
    from planner.spec.checkpoint_dir import node_local_warning, resolve

    try:
        planned, _ = plan_from_files(
            spec_path, calibration_path, sets, deadline, nodes, history_file, not no_correction
        )
    except PlanJobError as exc:
        fail(exc)
    result = planned.plan
    folder = resolve(result.spec.checkpoint.dir, Path.cwd())
    local = node_local_warning(folder, len(result.segments), result.nodes)
    if local is not None:
        click.echo(f"warning: {local}", err=True)
    if as_json:
        click.echo(plan_json(planned.plan, planned.model))
        return
    click.echo(plan_table(planned.plan))
    if planned.corrected:
        click.echo("\n" + correction_text(planned.model, planned.plan))
