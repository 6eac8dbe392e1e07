"""The one place the training entry runs a command of its own (scancel): every call reports
its argv, exit code, stdout and stderr, to the caller and to the job's log. Standard library
only (the login node's planner.shell is not importable on the node's side of the contract).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int  # 127: not found; 124: timed out
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        out = f"`{shlex.join(self.argv)}` exited {self.returncode}"
        for name, text in (("stdout", self.stdout), ("stderr", self.stderr)):
            if text.strip():
                out += f"; {name}: {' '.join(text.split())}"
        return out


def run_command(argv: Sequence[str], timeout: float = 60.0) -> CommandResult:
    """Run ``argv`` (never through a shell) and say in the job's log what it did."""
    args = tuple(str(arg) for arg in argv)
    try:
        proc = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, check=False
        )
        result = CommandResult(args, proc.returncode, proc.stdout, proc.stderr)
    except FileNotFoundError:
        result = CommandResult(args, 127, "", f"{args[0]}: command not found")
    except subprocess.TimeoutExpired:
        result = CommandResult(args, 124, "", f"timed out after {timeout:g} s")
    print(f"plan-job train: {result.describe()}", file=sys.stderr, flush=True)
    return result
