"""plan-job eta: when a run will finish, from its own recent steps."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from planner.cli.common import EXIT_INTERRUPTED, fail, watch_option
from planner.cli.status_line import StatusLine
from planner.errors import PlanJobError

if TYPE_CHECKING:  # the command imports it when it runs: --help needs none of it
    from planner.eta.estimate import Eta
    from planner.runs.progress_reader import ProgressReader


@click.command()
@click.argument("target", metavar="TARGET")
@watch_option(
    "Refresh every SECONDS (30 if none is given) until the run is done or no job is left."
)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON object.")
@click.option(
    "--total-steps",
    type=click.IntRange(min=1, max=2**63 - 1),
    help="The run's last step, for progress files without a `start` line.",
)
def eta(target: str, watch: float | None, as_json: bool, total_steps: int | None) -> None:
    """When a run will finish, from its own recent step times.

    \b
    TARGET is a progress.jsonl, a Hugging Face trainer_state.json, a run folder
    (`plan-job emit -o FOLDER`) or a Slurm job id of the run. On the cluster it also reads
    the running job's end from squeue and checks that the queued segments reach the last step.
    Put --watch after TARGET: `plan-job eta runs/x --watch 60`.
    """
    from planner.eta import report as eta_report
    from planner.eta.estimate import eta_for
    from planner.eta.progress_bar import bar_key, bar_text, from_eta

    readers: dict[Path, ProgressReader] = {}  # --watch reads on from where it stopped

    def compute() -> Eta:
        return eta_for(target, total_steps, readers=readers)

    render: Callable[[Eta], str] = eta_report.eta_table
    if as_json:
        render = eta_report.eta_json if watch is None else eta_report.eta_json_line
    line = StatusLine()

    def show_bar(result: Eta) -> None:
        progress = from_eta(result)
        line.show(bar_text(progress), bar_key(progress))

    try:
        if watch is None:
            click.echo(render(compute()))
        else:
            # sys.stdout, which click.echo writes to as well (click 8.5 deprecates
            # click.get_text_stream, and its typing no longer says it returns a stream).
            stream = sys.stdout
            # JSON Lines are for a script: no bar beside them.
            bar: Callable[[Eta], None] | None = None if as_json else show_bar
            try:
                eta_report.watch(compute, render, watch, stream, on_refresh=bar)
            finally:
                line.close()
    except KeyboardInterrupt:
        click.echo("", err=True)
        click.get_current_context().exit(EXIT_INTERRUPTED)
    except PlanJobError as exc:
        fail(exc)
