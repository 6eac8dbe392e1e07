"""The plan-job command line: a thin layer over the planner library, one module per command
that parses its flags, calls the library and prints what it returns.

Only this package turns library errors into exit codes (planner.cli.common): bad input 2, a
failed job 1, Ctrl-C 130. Each command imports the library inside its function, so
`plan-job --help` loads click and these modules only.
"""

from __future__ import annotations

import click

from planner.cli import calibrate, emit, eta, history, plan, report, resubmit, submit, tighten


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
    plan-job report cal.yaml|runs/x|--history -o x.html   the same as figures, one HTML file
    """


for _command in (
    calibrate.calibrate,
    plan.plan,
    emit.emit,
    submit.submit,
    eta.eta,
    resubmit.resubmit,
    tighten.tighten,
    history.history_command,
    report.report,
):
    cli.add_command(_command)


def main() -> None:
    from planner import stop_signals

    stop_signals.install()
    cli(prog_name="plan-job")
