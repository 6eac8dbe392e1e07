"""Running things as processes in tests: the plan-job command as a user runs it (its environment, a
PATH without Slurm), finding processes by a marker, and waiting for jobs on the test cluster."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from jobs.progress import read_progress
from planner.slurm.partition import parse_slurm_duration
from tests.paths import REPO


def no_slurm_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The CLI's environment on a machine without Slurm: a PATH holding no command at all
    (plan-job is started by its absolute path and needs none), so sbatch, squeue, sacct,
    scontrol and sinfo are all missing, as on a laptop."""
    empty = tmp_path / "empty-path"
    empty.mkdir(exist_ok=True)
    return cli_env({"PATH": str(empty), **extra})


PLAN_JOB = Path(sys.executable).parent / "plan-job"


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # The node imports the test fixtures' user workloads from the repository.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def run_cli(
    args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PLAN_JOB), *args],
        cwd=cwd,
        env=dict(env or cli_env()),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def venv_only_env(db: Path) -> dict[str, str]:
    # Only the virtualenv on PATH: no Slurm client, so plan and emit plan without a partition.
    return cli_env({"PATH": str(Path(sys.executable).parent), "PLANJOB_HISTORY": str(db)})


def new_marker() -> str:
    """An argument no other process has: a test finds its processes by it."""
    return f"planjob-test-{uuid.uuid4().hex}"


def pids_with(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker`` (a zombie's is empty)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its (new) parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_until(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(0.05)


def squeue(*args: str) -> str:
    return subprocess.run(
        ["squeue", "-h", *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


def accounted_state(job_id: str, timeout: float = 30.0) -> str:
    # slurmctld hands records to slurmdbd asynchronously: poll until the job is there.
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
        state = out[0] if out else ""
        if state and state not in ("PENDING", "RUNNING"):
            return state
        time.sleep(0.5)
    return state


def time_limits(folder: Path) -> list[str]:
    return [
        match.group(1)
        for script in sorted(folder.glob("segment-*.sbatch"))
        for match in [re.search(r"^#SBATCH --time=(\S+)$", script.read_text(), re.M)]
        if match
    ]


def chain_bound_s(limits: list[str]) -> float:
    """How long a chain of jobs with these --time limits can take, generously: no job runs
    past its limit, so twice their sum and two minutes of scheduling per job."""
    total = sum(parse_slurm_duration(limit) or 0 for limit in limits)  # "1", "00:03:00"
    return 2.0 * total + 120.0 * len(limits)


def wait_for_chain(job_ids: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        out = subprocess.run(
            ["squeue", "-h", "-j", ",".join(job_ids), "-o", "%A %T"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        if not out:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the chain did not end within {timeout_s:.0f} s: {out}")
        time.sleep(2)


def killed_at_one_minute(script: Path) -> None:
    """No signal and no stop time: the job runs into its 1-minute limit and Slurm's SIGTERM,
    on which the training saves and exits."""
    text = script.read_text()
    text = re.sub(r"^#SBATCH --time=.*$", "#SBATCH --time=1", text, flags=re.M)
    text = re.sub(r"^#SBATCH --time-min=.*$", "#SBATCH --time-min=1", text, flags=re.M)
    text = re.sub(r"^#SBATCH --signal=.*\n", "", text, flags=re.M)
    text = re.sub(r"^( *)export PLANJOB_STOP_AT=.*$", r"\1:", text, flags=re.M)
    script.write_text(text)


def wait_for_steps(progress: Path, steps: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(e.get("step", 0) >= steps for e in read_progress(progress)):
        assert time.monotonic() < deadline, f"no step {steps} within {timeout_s:.0f} s"
        time.sleep(0.5)


LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def unlaunched_env(**extra: str) -> dict[str, str]:
    """This process's environment without any launcher's variables, one thread per process."""
    launch = ("SLURM_", "PLANJOB_", *LAUNCH_VARIABLES)
    base = {k: v for k, v in os.environ.items() if not k.startswith(launch)}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH")]))
    base["OMP_NUM_THREADS"] = "1"
    return {**base, **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Two ranks importing torch, building, stepping and saving on a 2-core machine under other
# work (load 5-12 seen) take a minute or more; a generous multiple of that, still far below
# the collective timeout (DEFAULT_TIMEOUT_S, 1800 s): a test that finishes within it was not
# ended by that timeout.
FINISH_S = 300.0


def finish(procs: dict[int, subprocess.Popen[str]], timeout: float = FINISH_S) -> dict[int, Any]:
    """Each rank's (exit status, stdout, stderr); kills the stragglers of a failed test."""
    results = {}
    try:
        for rank, proc in procs.items():
            out, err = proc.communicate(timeout=timeout)
            results[rank] = (proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results
