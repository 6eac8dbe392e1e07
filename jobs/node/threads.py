"""How many CPU threads torch uses on the node: one rule for the calibration and the run, so
that the step the plan rests on is the step the run takes.

torch sizes its intra-op pool from the machine's cores, not from what the job was given:
a Slurm task with 2 of a node's 64 CPUs, a container with a CPU quota, a process pinned by
taskset all got every core's worth of threads, which then fight over the few they have. And
on the cores the job does have, the training loop itself (the Python that produces the
batch, steps the optimizer, writes progress) and, for a calibration, submitit's controller
need one: on the 2-core VM the tiny JiT calibrated to ±5-12% in 29 s with 2 threads and to
±1.7% in 12 s with 1 (issue 19).

The rule: the cores this process may use (the smallest of its CPU affinity,
$SLURM_CPUS_PER_TASK and the cgroup's CPU quota, rounded up) less one for the loop, at least
one. A user's $OMP_NUM_THREADS, where set, is kept as it is: it is what torch reads.
Standard library only; torch is told by the caller.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

THREADS_ENV = "OMP_NUM_THREADS"
_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1 = (
    Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
    Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
)


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    cores: int  # the cores this process may use (0: the user chose the threads)
    why: str  # for the calibration table: where the count came from


def available_cores(
    environ: Mapping[str, str] | None = None, cgroup_root: Path | None = None
) -> tuple[int, str]:
    """The CPUs this process may run on, and which limit decided it."""
    env = os.environ if environ is None else environ
    limits: list[tuple[int, str]] = []
    try:
        limits.append((len(os.sched_getaffinity(0)), "CPU affinity"))
    except (AttributeError, OSError):
        limits.append((os.cpu_count() or 1, "cores"))
    slurm = env.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        limits.append((int(slurm), "SLURM_CPUS_PER_TASK"))
    quota = cgroup_cpus(cgroup_root)
    if quota is not None:
        limits.append((quota, "cgroup CPU quota"))
    return min(limits)


def cgroup_cpus(root: Path | None = None) -> int | None:
    """The cgroup's CPU quota in whole CPUs (rounded up), None when there is none."""
    v2 = _CGROUP_V2 if root is None else root / "cpu.max"
    v1 = _CGROUP_V1 if root is None else (root / "cpu.cfs_quota_us", root / "cpu.cfs_period_us")
    try:
        quota, period = v2.read_text().split()[:2]
        if quota == "max":
            return None
        return max(math.ceil(int(quota) / int(period)), 1)
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:
        quota_us, period_us = (int(path.read_text().strip()) for path in v1)
    except (OSError, ValueError):
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return max(math.ceil(quota_us / period_us), 1)


def choose_threads(
    environ: Mapping[str, str] | None = None, cgroup_root: Path | None = None
) -> ThreadChoice:
    env = os.environ if environ is None else environ
    given = env.get(THREADS_ENV, "").strip()
    if given.isdigit() and int(given) > 0:
        return ThreadChoice(int(given), 0, f"${THREADS_ENV}={given}, as set")
    cores, limit = available_cores(env, cgroup_root)
    threads = max(cores - 1, 1)
    spare = "one left for the training loop" if cores > 1 else "the only one"
    return ThreadChoice(threads, cores, f"{cores} core(s) by {limit}, {spare}")


def apply(
    torch: object | None = None, environ: MutableMapping[str, str] | None = None
) -> ThreadChoice:
    """Choose, and make it so: $OMP_NUM_THREADS for torch not yet imported here and for the
    processes this one starts (the fresh training entry, a user's command), and
    torch.set_num_threads where torch is already in."""
    env = os.environ if environ is None else environ
    choice = choose_threads(env)
    env[THREADS_ENV] = str(choice.threads)
    if torch is not None:
        torch.set_num_threads(choice.threads)  # type: ignore[attr-defined]
    return choice
