"""The plan-job command line: a thin layer over the planner library.

Only this module turns library errors into exit codes: bad input 2, a failed job 1,
Ctrl-C 130. Heavy modules are imported inside commands so `plan-job --help` stays fast.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from planner.cli.status_line import StatusLine
from planner.errors import (
    BadInputError,
    CancelledByUserError,
    JobError,
    PlanJobError,
    SlurmUnavailableError,
)

EXIT_JOB_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class PlanJobClickError(click.ClickException):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fail(exc: PlanJobError) -> NoReturn:
    if isinstance(exc, CancelledByUserError):
        raise PlanJobClickError(str(exc), EXIT_INTERRUPTED) from exc
    if isinstance(exc, JobError):
        parts = [str(exc)]
        if exc.stderr_tail:
            parts.append("--- last lines of the job's stderr ---\n" + exc.stderr_tail)
        if exc.log_path:
            parts.append(f"log: {exc.log_path}")
        raise PlanJobClickError("\n".join(parts), EXIT_JOB_FAILED) from exc
    code = EXIT_BAD_INPUT if isinstance(exc, BadInputError) else EXIT_JOB_FAILED
    raise PlanJobClickError(str(exc), code) from exc


_HISTORY = click.option(
    "--history",
    "history_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The history database [env PLANJOB_HISTORY; ~/.local/share/plan-job/history.sqlite].",
)


def _record_history(action: Any) -> None:
    """The history is a by-product: failing to write it must not fail the command."""
    from planner.errors import HistoryError

    try:
        action()
    except HistoryError as exc:
        click.echo(f"warning: {exc}; nothing recorded in the history", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="plan-job")
def cli() -> None:
    """Plan deep-learning training runs on Slurm from a measurement, not a guess.

    \b
    plan-job calibrate run.yaml                      measure the real training step
    plan-job plan run.yaml --calibration cal.yaml    wall time, nodes, segments, checkpoints
    plan-job emit run.yaml --calibration cal.yaml -o runs/x   write the sbatch scripts
    plan-job submit runs/x                           submit them as a chain
    plan-job eta runs/x                              when it finishes, from its own steps
    plan-job resubmit runs/x                         the rest of a run that stopped short
    plan-job tighten runs/x                          lower pending segments' --time
    plan-job history                                 predicted vs actual, the correction
    """


@cli.command()
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
@_HISTORY
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
    from planner.calibration.record import save_record
    from planner.calibration.report import calibration_table
    from planner.history import database as history
    from planner.spec.run_spec import load_spec

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
        folder = calibration.job_folder(jobs_dir, spec)
        out_path = output or Path("calibrations") / f"{spec.name}.yaml"
        # The job running now: its progress file, and which of several it is.
        current: dict[str, Any] = {"folder": folder, "label": ""}

        def on_status(status: Any) -> None:
            progress = calibration.read_progress(current["folder"])
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
    _record_history(lambda: history.record_calibration(record, out_path, history_file))
    click.echo(calibration_table(record, str(out_path)))
    if record.scaling is not None:
        from planner.calibration.report import scaling_table

        click.echo("\n" + scaling_table(record.scaling))


def _node_list(text: str) -> str:
    """--nodes 1,2 as the YAML list calibration.nodes reads (the spec validates the counts)."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        from planner.errors import SpecError

        raise SpecError(
            "--nodes", text, "expected node counts separated by commas, e.g. 1,2"
        ) from None
    return "[" + ", ".join(str(c) for c in counts) + "]"


_SETS = click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override any spec field, e.g. --set plan.deadline_hours=48 (repeatable).",
)
_CALIBRATION = click.option(
    "--calibration",
    "calibration_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The record `plan-job calibrate` wrote for this spec.",
)
_DEADLINE = click.option(
    "--deadline",
    type=float,
    metavar="HOURS",
    help="Finish within this many hours at P95 [spec: plan.deadline_hours].",
)
_NODES = click.option("--nodes", type=int, help="Force a node count instead of choosing one.")


_JSON = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (README: JSON output)."
)
_NO_CORRECTION = click.option(
    "--no-correction",
    is_flag=True,
    help="Plan from the calibration alone, without the history's correction.",
)


@dataclass(frozen=True)
class _Planned:
    plan: Any  # the plan to use: corrected where the history had a correction
    model: Any  # the uncorrected plan
    corrected: bool  # the history changed the plan


def _make_plan(
    spec_path: Path,
    calibration_path: Path,
    sets: tuple[str, ...],
    deadline: float | None,
    nodes: int | None,
    history_file: Path | None = None,
    correct: bool = True,
) -> _Planned:
    """Spec + calibration record + the partition's limits -> Plan (raises PlanJobError),
    with the history's step corrections for the workload and partition, if it has any."""
    from planner.calibration.record import load_record
    from planner.errors import HistoryError
    from planner.history.correction import corrections_for
    from planner.model.planning import make_plan
    from planner.slurm.partition import read_partition
    from planner.slurm.submission import slurm_available
    from planner.spec.run_spec import load_spec

    spec = load_spec(spec_path, sets)
    record = load_record(calibration_path)
    partition = None
    if slurm_available():
        partition = read_partition(spec.cluster.partition)
    else:
        click.echo(
            "note: no Slurm client here, so the partition's MaxTime and node limits are not "
            "checked; run plan-job on the login node for a plan that fits the partition",
            err=True,
        )
    path = str(calibration_path)
    model = make_plan(spec, record, partition, path, deadline_hours=deadline, nodes=nodes)
    corrections = {}
    if correct:
        try:
            corrections = corrections_for(spec, partition, history_file)
        except HistoryError as exc:
            click.echo(f"warning: {exc}; planned without the history's correction", err=True)
    if not corrections:
        return _Planned(model, model, False)
    plan = make_plan(
        spec,
        record,
        partition,
        path,
        deadline_hours=deadline,
        nodes=nodes,
        corrections=corrections,
    )
    return _Planned(plan, model, plan.wall != model.wall)


@cli.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@_CALIBRATION
@_DEADLINE
@_NODES
@_SETS
@_HISTORY
@_NO_CORRECTION
@_JSON
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

    try:
        planned = _make_plan(
            spec_path, calibration_path, sets, deadline, nodes, history_file, not no_correction
        )
    except PlanJobError as exc:
        fail(exc)
    if as_json:
        click.echo(plan_json(planned.plan, planned.model))
        return
    click.echo(plan_table(planned.plan))
    if planned.corrected:
        click.echo("\n" + correction_text(planned.model, planned.plan))


@cli.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@_CALIBRATION
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The run folder to write: scripts, plan.yaml, train.json, logs/.",
)
@_DEADLINE
@_NODES
@_SETS
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
@_HISTORY
@_NO_CORRECTION
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
    from planner.model.report import summary_table
    from planner.runs.emit import EmitOptions
    from planner.runs.emit import emit as write_run

    try:
        planned = _make_plan(
            spec_path, calibration_path, sets, deadline, nodes, history_file, not no_correction
        )
        result = planned.plan
        factor = result.step_correction if result.step_correction != 1.0 else None
        options = EmitOptions(out_dir, Path.cwd(), python, template, force, factor)
        run = write_run(result, options)
    except PlanJobError as exc:
        fail(exc)
    _record_history(lambda: history.record_plan(result, run.folder, planned.model, history_file))
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
    click.echo(f"submit with: plan-job submit {run.folder}")


@cli.command()
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Print the sbatch commands; submit nothing.")
@click.option("--after", metavar="JOBID", help="Start the chain after this job ends.")
@click.option(
    "--resume-foreign",
    is_flag=True,
    help="Submit even though checkpoint.dir holds another run's checkpoints: the first job "
    "resumes from the newest of them.",
)
@click.option(
    "--watch",
    type=click.FloatRange(min=1.0),
    is_flag=False,
    flag_value=30.0,
    default=None,
    metavar="[SECONDS]",
    help="Then follow the run with a progress bar (steps, rate, ETA), refreshed every SECONDS "
    "(30 if none is given), until it is done or no job is left. Off by default: a chain may "
    "wait in the queue for hours, and scripts expect submit to return. Ctrl-C stops watching; "
    "the jobs keep running.",
)
def submit(
    run_dir: Path, dry_run: bool, after: str | None, resume_foreign: bool, watch: float | None
) -> None:
    """Submit RUN_DIR's segments as a chain (each afterany the previous) and print the job ids.

    Put --watch after RUN_DIR: `plan-job submit runs/x --watch 10`.
    """
    import shlex

    from planner.followup.report import jobs_table
    from planner.runs.chain import planned_commands, submit_chain

    if dry_run and watch is not None:
        raise PlanJobClickError(
            f"--watch: got {watch:g}; --dry-run submits nothing, so there is nothing to watch: "
            "drop one of them",
            EXIT_BAD_INPUT,
        )
    try:
        if dry_run:
            for argv in planned_commands(run_dir, after):
                click.echo(" ".join(shlex.quote(arg) for arg in argv))
            return

        def on_submitted(job: Any) -> None:
            click.echo(f"submitted segment {job.segment}: job {job.job_id}", err=True)

        jobs = submit_chain(run_dir, after, on_submitted, resume_foreign)
    except KeyboardInterrupt:
        raise PlanJobClickError(
            "interrupted: cancelled the segments already submitted", EXIT_INTERRUPTED
        ) from None
    except PlanJobError as exc:
        fail(exc)
    click.echo(jobs_table(jobs))
    click.echo(f"job ids recorded in {run_dir / 'jobs.yaml'}")
    if watch is not None:
        _follow_run(run_dir, watch, [job.job_id for job in jobs])


def _follow_run(run_dir: Path, interval_s: float, job_ids: list[str]) -> None:
    """submit --watch: the progress bar until the run is over; Ctrl-C leaves the jobs be."""
    from planner.eta.progress_bar import bar_key, bar_text, follow, run_progress

    click.echo(
        f"watching {run_dir} every {interval_s:g} s; Ctrl-C stops watching, not the jobs",
        err=True,
    )
    line = StatusLine()
    try:
        try:
            final = follow(
                lambda: run_progress(run_dir),
                lambda p: line.show(bar_text(p), bar_key(p)),
                interval_s,
            )
        finally:
            line.close()
    except KeyboardInterrupt:
        # Not an error: the jobs are submitted and run on.
        click.echo(
            f"stopped watching; the submitted jobs keep running: `plan-job eta {run_dir} "
            f"--watch` watches again, `scancel {' '.join(job_ids)}` cancels them",
            err=True,
        )
        click.get_current_context().exit(EXIT_INTERRUPTED)
    except PlanJobError as exc:
        fail(exc)
    if final.note:
        click.echo(final.note, err=True)


@cli.command()
@click.argument("target", metavar="TARGET")
@click.option(
    "--watch",
    type=click.FloatRange(min=1.0),
    is_flag=False,
    flag_value=30.0,
    default=None,
    metavar="[SECONDS]",
    help="Refresh every SECONDS (30 if none is given) until the run is done or no job is left.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON object.")
@click.option(
    "--total-steps",
    type=click.IntRange(min=1),
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
    from planner.eta import estimate as estimator
    from planner.eta import report as eta_report
    from planner.eta.progress_bar import bar_key, bar_text, from_eta
    from planner.eta.source import load_source

    def compute() -> Any:
        source = load_source(target, total_steps)
        return estimator.estimate(source, estimator.observe_slurm(source))

    render = eta_report.eta_table
    if as_json:
        render = eta_report.eta_json if watch is None else eta_report.eta_json_line
    line = StatusLine()

    def show_bar(result: Any) -> None:
        progress = from_eta(result)
        line.show(bar_text(progress), bar_key(progress))

    try:
        if watch is None:
            click.echo(render(compute()))
        else:
            stream = click.get_text_stream("stdout")
            # JSON Lines are for a script: no bar beside them.
            bar = None if as_json else show_bar
            try:
                eta_report.watch(compute, render, watch, stream, on_refresh=bar)
            finally:
                line.close()
    except KeyboardInterrupt:
        click.echo("", err=True)
        click.get_current_context().exit(EXIT_INTERRUPTED)
    except PlanJobError as exc:
        fail(exc)


@cli.command()
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
@_HISTORY
def resubmit(
    target: str, nodes: int | None, dry_run: bool, max_retries: int, history_file: Path | None
) -> None:
    """Submit the rest of a run whose jobs ended short of its last step.

    \b
    TARGET is the run folder or a Slurm job id of the run. Reads how the last job ended
    (sacct; without accounting scontrol, its log and the progress file), the newest
    checkpoint and the pace the run showed, then writes segment-NN.sbatch scripts numbered
    after the existing ones, sized from that pace and the partition's MaxTime, and submits
    them as an afterany chain (job ids appended to jobs.yaml, resubmit-K.yaml records why).
    """
    import shlex

    from planner.followup import resubmit as resubmission
    from planner.followup.report import jobs_table, resubmission_text
    from planner.followup.state import inspect_run
    from planner.history import database as history

    try:
        state = inspect_run(target, preview=dry_run)
        if not state.unread:  # jobs taken as ended without Slurm's word are not outcomes
            _record_history(lambda: history.record_outcomes(state, history_file))
        plan = resubmission.prepare(state, nodes, max_retries, preview=dry_run)
        click.echo(resubmission_text(plan))
        if dry_run:
            for name, text in plan.scripts:
                click.echo(f"\n# ===== {name} (not written) =====\n{text}")
            click.echo("\n# dry run: would submit")
            for argv in resubmission.planned_commands(plan):
                click.echo(" ".join(shlex.quote(arg) for arg in argv))
            if plan.unread:
                click.echo(
                    "\n# a preview without Slurm (see 'not read' above): resubmit on the login "
                    "node, where those are checked"
                )
            return

        def on_submitted(job: Any) -> None:
            click.echo(f"submitted segment {job.segment}: job {job.job_id}", err=True)

        jobs = resubmission.submit(plan, on_submitted)
    except KeyboardInterrupt:
        raise PlanJobClickError(
            "interrupted: cancelled the segments already submitted", EXIT_INTERRUPTED
        ) from None
    except SlurmUnavailableError as exc:
        raise PlanJobClickError(
            f"{exc}; `plan-job resubmit {target} --dry-run` previews from the run folder alone",
            EXIT_BAD_INPUT,
        ) from exc
    except PlanJobError as exc:
        fail(exc)
    click.echo("\n" + jobs_table(jobs))
    click.echo(f"recorded in {resubmission.record_path(plan)} and {state.run_dir / 'jobs.yaml'}")


@cli.command()
@click.argument("target", metavar="TARGET")
@click.option("--dry-run", is_flag=True, help="Print the scontrol commands only.")
def tighten(target: str, dry_run: bool) -> None:
    """Lower the --time of a run's pending segments to what its measured pace needs.

    TARGET is the run folder or a Slurm job id of the run. Slurm lets users lower a pending
    job's limit, not raise it: a chain that falls short needs `plan-job resubmit` once it ends.
    """
    import shlex

    from planner.followup.report import tighten_text
    from planner.followup.tighten import apply_tightening, changed, plan_tightening

    try:
        plan = plan_tightening(target)
        click.echo(tighten_text(plan))
        commands = [c.argv for c in changed(plan) if c.argv]
        if dry_run or not commands:
            if commands:
                click.echo("\n# dry run: would run")
            for argv in commands:
                click.echo(" ".join(shlex.quote(arg) for arg in argv))
            return
        apply_tightening(plan)
    except PlanJobError as exc:
        fail(exc)
    for argv in commands:
        click.echo(f"done: {' '.join(shlex.quote(arg) for arg in argv)}")


@cli.command("history")
@click.option(
    "--update",
    "updates",
    multiple=True,
    metavar="RUN",
    help="First record how the jobs of this run folder (or job id) ended (repeatable).",
)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@_HISTORY
@_JSON
def history_command(
    updates: tuple[str, ...], limit: int, history_file: Path | None, as_json: bool
) -> None:
    """Predicted vs actual per run, and the bias per workload and partition that corrects
    new plans."""
    from planner.followup.state import inspect_run
    from planner.history import database as history
    from planner.history.report import history_json, history_text

    try:
        for target in updates:
            count = history.record_outcomes(inspect_run(target), history_file)
            click.echo(f"recorded {count} ended job(s) of {target}", err=True)
        show = history_json if as_json else history_text
        click.echo(show(history_file, limit))
    except PlanJobError as exc:
        fail(exc)


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


def main() -> None:
    cli(prog_name="plan-job")


if __name__ == "__main__":
    main()
