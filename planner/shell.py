"""The one place plan-job runs a command: every call reports argv, exit code, stdout, stderr.
And the one way it prints a command for a person to run (command_text): quoted, so that a path
with spaces, quotes or `$(...)` in it pastes as one argument and runs nothing.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from planner.errors import CommandError

log = logging.getLogger(__name__)


def command_text(*argv: object) -> str:
    """A command as a user types it: every word shlex.quote'd (``plan-job submit 'my run'``)."""
    return shlex.join(str(word) for word in argv)


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_command(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
) -> CommandResult:
    """Run ``argv`` (never through a shell); raise CommandError on failure when ``check``."""
    argv = [str(a) for a in argv]
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandError(argv, 127, "", f"{argv[0]}: command not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(argv, 124, "", f"timed out after {timeout:g} s") from exc
    result = CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
    log.debug("%s -> %d\nstdout: %s\nstderr: %s", argv, proc.returncode, proc.stdout, proc.stderr)
    if check and not result.ok:
        raise CommandError(argv, proc.returncode, proc.stdout, proc.stderr)
    return result
