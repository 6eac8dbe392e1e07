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

# Exit codes a shell gives the same failures: a command it cannot find, one it cannot run
# (not executable, not a program), one killed by timeout(1).
EXIT_NOT_FOUND = 127
EXIT_NOT_RUNNABLE = 126
EXIT_TIMED_OUT = 124


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
        raise CommandError(argv, EXIT_NOT_FOUND, "", f"{argv[0]}: command not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(argv, EXIT_TIMED_OUT, "", f"timed out after {timeout:g} s") from exc
    except OSError as exc:
        # A file on PATH that is not executable (PermissionError), not a program (ENOEXEC),
        # a folder: the command is there but cannot run, which is not a traceback's matter.
        found = exc.filename or argv[0]
        why = exc.strerror or type(exc).__name__
        raise CommandError(argv, EXIT_NOT_RUNNABLE, "", f"{found}: cannot run it: {why}") from exc
    result = CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
    log.debug("%s -> %d\nstdout: %s\nstderr: %s", argv, proc.returncode, proc.stdout, proc.stderr)
    if check and not result.ok:
        raise CommandError(argv, proc.returncode, proc.stdout, proc.stderr)
    return result
