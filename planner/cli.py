"""The plan-job command line: a thin layer over the planner library.

Only this module turns library errors into exit codes: bad input 2, a failed job 1,
Ctrl-C 130. Heavy modules are imported inside commands so `plan-job --help` stays fast.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from planner.errors import BadInputError, CancelledByUserError, JobError, PlanJobError

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


class StatusLine:
    """One live line on a terminal; a line per change (or per 30 s) in a log file."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last_text = ""
        self.last_time = 0.0

    def show(self, text: str, key: str) -> None:
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
        elif key != self.last_text or now - self.last_time > 30:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last_time = now
        self.last_text = key

    def close(self) -> None:
        if self.tty and self.last_text:
            self.stream.write("\n")
            self.stream.flush()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="plan-job")
def cli() -> None:
    """Plan deep-learning training runs on Slurm from a measurement, not a guess.

    \b
    plan-job calibrate run.yaml     measure the real training step (local or on a partition)
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
    help="Stop when the 95%% CI half-width / mean reaches this [calibration.target_ci].",
)
@click.option(
    "--time-limit",
    type=int,
    help="The job's --time in minutes [spec: calibration.time_limit_minutes].",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override any spec field, e.g. --set batch.micro_batch=32 (repeatable).",
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
def calibrate(
    spec_path: Path,
    executor: str | None,
    partition: str | None,
    device: str | None,
    max_steps: int | None,
    max_seconds: float | None,
    target_ci: float | None,
    time_limit: int | None,
    sets: tuple[str, ...],
    output: Path | None,
    jobs_dir: Path,
) -> None:
    """Run a short calibration job of SPEC's real training step and record what it measured."""
    from planner import calibrate as calibration
    from planner.record import save_record
    from planner.report import calibration_table
    from planner.spec import load_spec

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
        spec = load_spec(spec_path, overrides)
        folder = calibration.job_folder(jobs_dir, spec)
        out_path = output or Path("calibrations") / f"{spec.name}.yaml"

        def on_status(status: Any) -> None:
            line.show(
                *_status_text(status, spec.calibration.target_ci, calibration.read_progress(folder))
            )

        click.echo(
            f"calibrating {spec.name}: {spec.workload.name} {spec.workload.preset}, "
            f"micro-batch {spec.batch.micro_batch}, {spec.precision}, "
            f"executor {spec.calibration.executor}; logs in {folder}",
            err=True,
        )
        try:
            record = calibration.calibrate(spec, folder, on_status)
        finally:
            line.close()
        save_record(record, out_path)
    except PlanJobError as exc:
        fail(exc)
    click.echo(calibration_table(record, str(out_path)))


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
