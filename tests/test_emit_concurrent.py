"""Two `plan-job emit`s into the same new folder at once: the second fails (exit 2) naming
the first, and the folder is the first's, whole.

The race is made certain, not hoped for: the first is the real CLI in its own process, held
inside its write (after its checks, before the folder is in place) until the test lets it go;
the second is the real CLI too."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from planner.runs.folder_lock import lock_path
from planner.runs.run_folder import MARKER
from tests.builders import reference_files
from tests.paths import REPO
from tests.processes import cli_env, run_cli

# Every test here starts processes or trains: the slow tier.
pytestmark = pytest.mark.slow

# The real CLI, its write of the run files held until GATE exists (READY says it got there).
HELD_EMIT = """
import sys, time
from pathlib import Path
import planner.runs.emit as emit

ready, gate = Path(sys.argv[1]), Path(sys.argv[2])
real = emit.write_run_files

def held(*args, **kwargs):
    ready.touch()
    while not gate.exists():
        time.sleep(0.05)
    return real(*args, **kwargs)

emit.write_run_files = held
from planner.cli import cli
cli(sys.argv[3:], prog_name="plan-job")
"""


def wait_for(path: Path, proc: subprocess.Popen[str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the first emit ended early: {proc.communicate()}")
        assert time.monotonic() < deadline, "the first emit never reached its write"
        time.sleep(0.05)


def test_the_second_of_two_concurrent_emits_fails_naming_the_first(tmp_path: Path) -> None:
    spec, record = reference_files(tmp_path)
    out = tmp_path / "runs" / "big"
    env = cli_env({"PATH": str(tmp_path)})  # no Slurm: plan without a partition
    args = ["emit", str(spec), "--calibration", str(record), "-o", str(out)]
    ready, gate = tmp_path / "ready", tmp_path / "gate"
    first = subprocess.Popen(
        [sys.executable, "-c", HELD_EMIT, str(ready), str(gate), *args],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(ready, first)
        second = run_cli(args, cwd=tmp_path, env=env)
        gate.touch()
        out_first, err_first = first.communicate(timeout=120)
    finally:
        first.kill()
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"(pid {first.pid} on {socket.gethostname()}" in second.stderr
    assert "a plan-job emit process" in second.stderr and "nothing was written" in second.stderr
    assert "wrote" not in second.stdout
    assert first.returncode == 0, err_first
    assert f"wrote {out}" in out_first
    marker = json.loads((out / MARKER).read_text()) if (out / MARKER).exists() else None
    assert marker is not None and (out / "segment-01.sbatch").exists()
    assert not lock_path(out).exists()  # released
    assert sorted(p.name for p in out.parent.iterdir()) == ["big"]  # no staging left
    # And once the first is done, a third sees its run and leaves it alone.
    third = run_cli(args, cwd=tmp_path, env=env)
    assert third.returncode == 2 and "already holds a run" in third.stderr


def test_a_claim_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    spec, record = reference_files(tmp_path)
    out = tmp_path / "run"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    lock_path(out).write_text(
        json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "command": "emit"})
    )
    env = cli_env({"PATH": str(tmp_path)})
    proc = run_cli(
        ["emit", str(spec), "--calibration", str(record), "-o", str(out)], cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert not lock_path(out).exists()


def test_a_claim_held_elsewhere_is_reported_with_its_file(tmp_path: Path) -> None:
    spec, record = reference_files(tmp_path)
    out = tmp_path / "run"
    lock_path(out).write_text(json.dumps({"pid": os.getpid(), "host": "login2", "command": "emit"}))
    env = cli_env({"PATH": str(tmp_path)})
    proc = run_cli(
        ["emit", str(spec), "--calibration", str(record), "-o", str(out)], cwd=tmp_path, env=env
    )
    assert proc.returncode == 2, proc.stderr
    assert f"pid {os.getpid()} on login2" in proc.stderr
    assert f"if no such process runs, delete {lock_path(out)}" in proc.stderr
    assert not out.exists()
