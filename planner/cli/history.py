"""plan-job history: predicted vs actual per run, the correction and P95 widening new plans
get."""

from __future__ import annotations

from pathlib import Path

import click

from planner.cli.common import HISTORY, JSON, fail
from planner.errors import PlanJobError


@click.command("history")
@click.option(
    "--update",
    "updates",
    multiple=True,
    metavar="RUN",
    help="First record how the jobs of this run folder (or job id) ended (repeatable).",
)
@click.option("--limit", type=click.IntRange(min=1, max=10**6), default=20, show_default=True)
@HISTORY
@JSON
def history_command(
    updates: tuple[str, ...], limit: int, history_file: Path | None, as_json: bool
) -> None:
    """Predicted vs actual per run (run time, start and finish), the bias per kind of run,
    partition and node count that corrects new plans, how often jobs stayed within their P50
    and P95 (run time and queue wait; a P95 that covered too few widens the next plan's), and
    the attempts not learned from (failed, hung, killed)."""
    from planner.followup.state import inspect_run
    from planner.history import database as history
    from planner.history.report import history_json, history_text

    try:
        for target in updates:
            count = history.record_outcomes(inspect_run(target), history_file)
            click.echo(f"recorded {count} attempt(s) of ended jobs of {target}", err=True)
        show = history_json if as_json else history_text
        click.echo(show(history_file, limit))
    except PlanJobError as exc:
        fail(exc)
