"""plan-job submit: a run folder's segments as an afterany chain, and --watch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from planner.cli.common import EXIT_INTERRUPTED, BadInputExit, InterruptedExit, fail, watch_option
from planner.cli.status_line import StatusLine
from planner.errors import PlanJobError
from planner.stop_signals import interrupted_by

if TYPE_CHECKING:  # imported when --watch runs: --help needs none of it
    from planner.runs.progress_reader import ProgressReader


@click.command()
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Print the sbatch commands; submit nothing.")
@click.option("--after", metavar="JOBID", help="Start the chain after this job ends.")
@click.option(
    "--resume-foreign",
    is_flag=True,
    help="Submit even though checkpoint.dir holds another run's checkpoints: the first job "
    "resumes from the newest of them.",
)
@watch_option(
    "Then follow the run with a progress bar (steps, rate, ETA), refreshed every SECONDS "
    "(30 if none is given), until it is done or no job is left. Off by default: a chain may "
    "wait in the queue for hours, and scripts expect submit to return. Ctrl-C stops watching; "
    "the jobs keep running."
)
def submit(
    run_dir: Path, dry_run: bool, after: str | None, resume_foreign: bool, watch: float | None
) -> None:
    """Submit RUN_DIR's segments as a chain (each afterany the previous) and print the job ids.

    Put --watch after RUN_DIR: `plan-job submit runs/x --watch 10`.
    """
    from planner.followup.report import jobs_table
    from planner.runs.chain import planned_commands, submit_chain
    from planner.runs.run_folder import JOBS_FILE
    from planner.shell import command_text

    if dry_run and watch is not None:
        raise BadInputExit(
            f"--watch: got {watch:g}; --dry-run submits nothing, so there is nothing to watch: "
            "drop one of them"
        )
    try:
        if dry_run:
            for argv in planned_commands(run_dir, after):
                click.echo(command_text(*argv))
            return

        def on_submitted(job: Any) -> None:
            click.echo(f"submitted segment {job.segment}: job {job.job_id}", err=True)

        jobs = submit_chain(run_dir, after, on_submitted, resume_foreign)
    except KeyboardInterrupt as exc:
        raise InterruptedExit(
            f"interrupted{interrupted_by(exc)}: cancelled the segments already submitted"
        ) from None
    except PlanJobError as exc:
        fail(exc)
    click.echo(jobs_table(jobs))
    click.echo(f"job ids recorded in {run_dir / JOBS_FILE}")
    if watch is not None:
        _follow_run(run_dir, watch, [job.job_id for job in jobs])


def _follow_run(run_dir: Path, interval_s: float, job_ids: list[str]) -> None:
    """submit --watch: the progress bar until the run is over; Ctrl-C leaves the jobs be."""
    from planner.eta.progress_bar import bar_key, bar_text, follow, run_progress
    from planner.shell import command_text

    click.echo(
        f"watching {run_dir} every {interval_s:g} s; Ctrl-C stops watching, not the jobs",
        err=True,
    )
    line = StatusLine()
    readers: dict[Path, ProgressReader] = {}  # each refresh reads only the new lines
    try:
        try:
            final = follow(
                lambda: run_progress(run_dir, readers),
                lambda p: line.show(bar_text(p), bar_key(p)),
                interval_s,
            )
        finally:
            line.close()
    except KeyboardInterrupt:
        # Not an error: the jobs are submitted and run on.
        click.echo(
            f"stopped watching; the submitted jobs keep running: "
            f"`{command_text('plan-job', 'eta', run_dir, '--watch')}` watches again, "
            f"`{command_text('scancel', *job_ids)}` cancels them",
            err=True,
        )
        click.get_current_context().exit(EXIT_INTERRUPTED)
    except PlanJobError as exc:
        fail(exc)
    if final.note:
        click.echo(final.note, err=True)
