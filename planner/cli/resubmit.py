"""plan-job resubmit: the rest of a run whose jobs ended short of its last step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from planner.cli.common import (
    HISTORY,
    BadInputExit,
    InterruptedExit,
    fail,
    record_history,
)
from planner.errors import PlanJobError, SlurmUnavailableError
from planner.stop_signals import interrupted_by


@click.command()
@click.argument("target", metavar="TARGET")
@click.option(
    "--nodes",
    type=click.IntRange(min=1),
    help="Node count of the new jobs; only the run's own (its checkpoints' world size).",
)
@click.option("--dry-run", is_flag=True, help="Print the scripts and sbatch commands only.")
@click.option(
    "--max-retries",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Refuse when the run folder records this many resubmissions already.",
)
@click.option(
    "--force-retry",
    is_flag=True,
    help="Resubmit even though the last two attempts failed the same way at the same step, "
    "or the chain stopped itself (once the cause is fixed).",
)
@HISTORY
def resubmit(
    target: str,
    nodes: int | None,
    dry_run: bool,
    max_retries: int,
    force_retry: bool,
    history_file: Path | None,
) -> None:
    """Submit the rest of a run whose jobs ended short of its last step.

    \b
    TARGET is the run folder or a Slurm job id of the run. Reads how the last job ended
    (sacct; without accounting scontrol, its log and the progress file), the newest
    checkpoint and the pace the run showed, then writes segment-NN.sbatch scripts numbered
    after the existing ones, sized from that pace and the partition's MaxTime, and submits
    them as an afterany chain (job ids appended to jobs.yaml, resubmit-K.yaml records why).
    """
    from planner.followup import resubmit as resubmission
    from planner.followup.report import jobs_table, resubmission_text
    from planner.followup.state import inspect_run
    from planner.history import database as history
    from planner.runs.run_folder import JOBS_FILE
    from planner.shell import command_text
    from planner.slurm.client import client_status, offline_runner, require_controller

    runner = None
    try:
        if not dry_run:
            # Before anything is read or written: a real resubmission needs the controller.
            require_controller("resubmit")
        else:
            status = client_status()
            if status.kind == "unreachable":
                # Each Slurm call would retry a dead controller for ~10 s: answer them at once
                # with the ping's reason, and preview from the folder as without Slurm.
                click.echo(
                    f"note: Slurm's controller does not answer (scontrol ping: {status.reason}); "
                    "previewing from the run folder alone",
                    err=True,
                )
                runner = offline_runner(status)
        state = inspect_run(target, runner, preview=dry_run)
        record_history(lambda: history.record_outcomes(state, history_file))
        plan = resubmission.prepare(
            state, nodes, max_retries, preview=dry_run, force_retry=force_retry, runner=runner
        )
        click.echo(resubmission_text(plan))
        if dry_run:
            for name, text in plan.scripts:
                click.echo(f"\n# ===== {name} (not written) =====\n{text}")
            click.echo("\n# dry run: would submit")
            for argv in resubmission.planned_commands(plan):
                click.echo(command_text(*argv))
            if plan.unread:
                click.echo(
                    "\n# a preview without Slurm (see 'not read' above): resubmit on the login "
                    "node, where those are checked"
                )
            return

        def on_submitted(job: Any) -> None:
            click.echo(f"submitted segment {job.segment}: job {job.job_id}", err=True)

        jobs = resubmission.submit(plan, on_submitted)
    except KeyboardInterrupt as exc:
        raise InterruptedExit(
            f"interrupted{interrupted_by(exc)}: cancelled the segments already submitted"
        ) from None
    except SlurmUnavailableError as exc:
        raise BadInputExit(
            f"{exc}; `{command_text('plan-job', 'resubmit', target, '--dry-run')}` previews from "
            "the run folder alone"
        ) from exc
    except PlanJobError as exc:
        fail(exc)
    click.echo("\n" + jobs_table(jobs))
    click.echo(f"recorded in {resubmission.record_path(plan)} and {state.run_dir / JOBS_FILE}")
