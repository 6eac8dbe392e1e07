"""Every command plan-job prints for a user to paste is quoted: with a run folder named with
spaces, quotes and `$(...)`, the pasted line passes the folder as one argument and runs
nothing else."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from planner.calibration.record import save_record
from tests.builders import SPEC, record_for, spec_with, write_spec
from tests.in_process import invoke
from tests.paths import REPO
from tests.processes import cli_env

FOLDER = "run $(touch pwned) it's `touch pwned2`"
# A backticked command in plan-job's output, to the line's last backtick (the folder's name
# has backticks of its own, inside the quotes).
_BACKTICKED = re.compile(r"`((?:plan-job|scancel) .*)`")


def pasted(line: str, tmp_path: Path) -> list[str]:
    """What bash runs for ``line`` pasted, with a plan-job that prints its arguments."""
    stub = tmp_path / "stub-bin"
    stub.mkdir(exist_ok=True)
    for name in ("plan-job", "scancel"):
        (stub / name).write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
        (stub / name).chmod(0o755)
    done = subprocess.run(
        ["bash", "-c", line],
        cwd=tmp_path,
        env={"PATH": f"{stub}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    return done.stdout.splitlines()


def emitted(tmp_path: Path) -> tuple[Path, str]:
    write_spec(tmp_path, SPEC, "spec.yaml")
    save_record(record_for(spec_with()), tmp_path / "cal.yaml")
    env = cli_env({"PATH": str(Path(sys.executable).parent)})
    args = ["emit", "spec.yaml", "--calibration", "cal.yaml", "-o", FOLDER]
    proc = invoke(args, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    return tmp_path / FOLDER, proc.stdout + proc.stderr


@pytest.mark.slow
def test_emits_submit_hint_pastes_as_one_argument(tmp_path: Path) -> None:
    run, output = emitted(tmp_path)
    (hint,) = [line for line in output.splitlines() if line.startswith("submit with: ")]
    command = hint.removeprefix("submit with: ")
    assert shlex.split(command)[:2] == ["plan-job", "submit"]
    assert pasted(command, tmp_path) == ["submit", str(run)]


@pytest.mark.slow
def test_etas_resubmit_hint_pastes_as_one_argument(tmp_path: Path) -> None:
    run, _ = emitted(tmp_path)
    lines = [
        {"event": "start", "time": 1.0, "step": 0, "total_steps": 10**6, "restart": 0},
        *(
            {"event": "step", "time": 1.0 + s, "step": s, "step_s": 1.0, "loss": 1.0}
            for s in range(1, 40)
        ),
        {"event": "stop", "time": 50.0, "step": 39, "reason": "time_limit", "signal": None},
    ]
    (run / "progress.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    env = cli_env({"PATH": str(Path(sys.executable).parent), "COLUMNS": "400"})
    proc = invoke(["eta", FOLDER], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    commands = _BACKTICKED.findall(proc.stdout)
    assert commands, proc.stdout
    for command in commands:
        assert pasted(command, tmp_path) == ["resubmit", FOLDER]


def test_no_printed_command_is_formatted_unquoted() -> None:
    """A hint built as f"`plan-job ... {value}`" pastes a value as shell code: every one goes
    through planner.shell.command_text (shlex.join) instead."""
    unquoted = []
    for path in sorted((REPO / "planner").rglob("*.py")):
        for number, text in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"`(plan-job|scancel|scontrol|sbatch) [^`]*\{(?!command_text)", text):
                unquoted.append(f"{path.relative_to(REPO)}:{number}: {text.strip()}")
    assert not unquoted, "\n".join(unquoted)
