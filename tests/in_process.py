"""plan-job's commands run in this process with click's CliRunner, for the tests that check
what a command prints and writes: the same code from argument parsing to the exit code,
without the second of start-up a process costs. Tests about the process itself (Ctrl-C and
signals, start-up time, torch never imported, a PATH without Slurm, jobs on the cluster) start
the real command instead (tests/processes.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from click.testing import CliRunner

from planner.cli import cli


@contextmanager
def _working_directory(folder: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def invoke(
    args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``plan-job ARGS`` run in ``cwd``, answered as tests/processes.py's run_cli answers:
    exit status, stdout and stderr apart. ``env`` replaces the variables it names while the
    command runs (tests/processes.py builds the same mappings for a process). An exception the
    CLI does not turn into an exit code propagates, so a crash fails the test with its
    traceback instead of passing as exit status 1."""
    runner = CliRunner()
    changes = {k: v for k, v in (env or {}).items() if os.environ.get(k) != v}
    with _working_directory(cwd):
        result = runner.invoke(
            cli, list(args), env=changes, prog_name="plan-job", catch_exceptions=False
        )
    return subprocess.CompletedProcess(
        ["plan-job", *args], result.exit_code, result.stdout, result.stderr
    )
