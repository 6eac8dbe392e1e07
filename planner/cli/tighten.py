"""plan-job tighten: lower pending segments' --time to what the run's pace needs."""

from __future__ import annotations

import click

from planner.cli.common import fail
from planner.errors import PlanJobError


@click.command()
@click.argument("target", metavar="TARGET")
@click.option("--dry-run", is_flag=True, help="Print the scontrol commands only.")
def tighten(target: str, dry_run: bool) -> None:
    """Lower the --time of a run's pending segments to what its measured pace needs.

    TARGET is the run folder or a Slurm job id of the run. Slurm lets users lower a pending
    job's limit, not raise it: a chain that falls short needs `plan-job resubmit` once it ends.
    """
    from planner.followup.report import tighten_text
    from planner.followup.tighten import apply_tightening, changed, plan_tightening
    from planner.shell import command_text

    try:
        plan = plan_tightening(target)
        click.echo(tighten_text(plan))
        commands = [c.argv for c in changed(plan) if c.argv]
        if dry_run or not commands:
            if commands:
                click.echo("\n# dry run: would run")
            for argv in commands:
                click.echo(command_text(*argv))
            return
        apply_tightening(plan)
    except PlanJobError as exc:
        fail(exc)
    for argv in commands:
        click.echo(f"done: {command_text(*argv)}")
