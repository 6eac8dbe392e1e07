"""How good is the start estimate? Predicted vs actual start and finish on a real (small) cluster.

On the test cluster (tests/slurm_cluster.py: two nodes, MaxTime 3 min; or the one SLURM_CONF
names, with --use-env), a stream of background jobs of random size (1-2 nodes) and length
(sleep 20-170 s under a --time of 1-3 min) keeps the queue busy; then N planned jobs are
submitted one after another, each first asked with `sbatch --test-only` (what `plan` asks),
each running a known P50 time x a random factor 0.85-1.15 (the run-to-run spread a plan's
band covers). Once all ended, sacct's Start and End are compared with:

- Slurm alone: start = its --test-only estimate, finish = that start + the job's --time (all
  Slurm knows of a job's length);
- plan-job: start = the same estimate (plan-job's first-segment start is Slurm's), finish =
  that start + the plan's P50 run time.

Printed: median and P90 absolute error, and the share within 1 and 10 minutes, of each.
Also the wall time of 8 --test-only asks at once (what `plan` does for 8 node counts)
against one by one. A small, quiet cluster: the figures say how the arithmetic behaves, not
how Slurm's estimate fares on a busy production machine.

    .venv/bin/python bench/queue_wait.py [--planned 8] [--background 10] [--seed 1]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.slurm.queue import parse_slurm_time
from planner.slurm.queue_waits import quantile
from planner.slurm.start_estimate import (
    StartRequest,
    estimate_start,
    estimate_starts,
)
from tests.slurm_cluster import SlurmCluster


@dataclass(frozen=True)
class Planned:
    job_id: str
    predicted_start: float
    limit_s: int
    p50_s: float


def sbatch(nodes: int, minutes: int, sleep_s: float) -> str:
    argv = [
        "sbatch", "--parsable", "--partition=gpu", f"--nodes={nodes}", "--ntasks-per-node=1",
        "--cpus-per-task=1", f"--time={minutes}", "--output=/dev/null",
        f"--wrap=sleep {sleep_s:.0f}",
    ]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip().split(";")[0]


def request(nodes: int, minutes: int) -> StartRequest:
    return StartRequest(nodes, minutes, minutes, 1, 1, 0, "gpu")


def latency(runs: int) -> tuple[float, float]:
    """Median wall of 8 asks at once, and of 8 one by one."""
    requests = [request(1 + i % 2, 1 + i % 3) for i in range(8)]
    together, alone = [], []
    for _ in range(runs):
        began = time.monotonic()
        estimate_starts(requests)
        together.append(time.monotonic() - began)
        began = time.monotonic()
        for r in requests:
            estimate_start(r)
        alone.append(time.monotonic() - began)
    return statistics.median(together), statistics.median(alone)


def wait_all_ended(job_ids: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        if not out:
            return
        time.sleep(5)
    raise SystemExit(f"jobs still queued after {timeout_s:.0f} s")


def actual(job_ids: list[str]) -> dict[str, tuple[float, float]]:
    """Start and End by job id (sacct; its records may lag the jobs' end by a few seconds)."""
    for _ in range(30):
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", "JobID,Start,End"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        found = {}
        for line in out.splitlines():
            job, start, end = line.split("|")
            s, e = parse_slurm_time(start), parse_slurm_time(end)
            if s is not None and e is not None:
                found[job] = (s, e)
        if len(found) == len(job_ids):
            return found
        time.sleep(2)
    return found


def summary(signed: list[float]) -> str:
    """|actual - predicted| figures, and the signed median (+: later than predicted)."""
    errors = [abs(e) for e in signed]
    return (
        f"signed median {statistics.median(signed):+7.1f} s  "
        f"median {statistics.median(errors):7.1f} s  P90 {quantile(errors, 0.9):7.1f} s  "
        f"within 1 min {sum(e <= 60 for e in errors) / len(errors):5.0%}  "
        f"within 10 min {sum(e <= 600 for e in errors) / len(errors):5.0%}"
    )


def run(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    together, alone = latency(args.latency_runs)
    print(f"8 sbatch --test-only asks: {together:.3f} s at once, {alone:.3f} s one by one")
    background = []
    for _ in range(args.background):
        minutes = rng.randint(1, 3)
        background.append(sbatch(rng.randint(1, 2), minutes, rng.uniform(20, minutes * 60 - 10)))
        time.sleep(rng.uniform(0, 3))
    planned: list[Planned] = []
    for _ in range(args.planned):
        nodes, minutes = rng.randint(1, 2), rng.randint(1, 3)
        p50 = minutes * 60 * 0.7  # the plan's P50 run; --time covers its P95 with a reserve
        found = estimate_start(request(nodes, minutes))
        if found.start is None:
            print(f"no estimate ({found.status}: {found.reason}); skipped")
            continue
        sleep = p50 * rng.uniform(0.85, 1.15)
        planned.append(Planned(sbatch(nodes, minutes, sleep), found.start, minutes * 60, p50))
        time.sleep(rng.uniform(5, 20))
    ids = [p.job_id for p in planned]
    wait_all_ended(ids + background, timeout_s=3600)
    ran = actual(ids)
    start_err, slurm_finish, plan_finish = [], [], []
    for p in planned:
        if p.job_id not in ran:
            continue
        start, end = ran[p.job_id]
        start_err.append(start - p.predicted_start)
        slurm_finish.append(end - (p.predicted_start + p.limit_s))
        plan_finish.append(end - (p.predicted_start + p.p50_s))
    n = len(start_err)
    print(f"{n} planned jobs among {len(background)} background jobs on 2 nodes (seed {args.seed})")
    print(f"start, Slurm's estimate (plan-job's is the same): {summary(start_err)}")
    print(f"finish, Slurm alone (start + --time):              {summary(slurm_finish)}")
    print(f"finish, plan-job (start + P50 run):                {summary(plan_finish)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--planned", type=int, default=8)
    parser.add_argument("--background", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--latency-runs", type=int, default=5)
    parser.add_argument("--use-env", action="store_true", help="the cluster SLURM_CONF names")
    args = parser.parse_args()
    if args.use_env:
        run(args)
        return
    with (
        tempfile.TemporaryDirectory(prefix="queue-wait-") as folder,
        SlurmCluster(Path(folder)) as cluster,
    ):
        os.environ.update(cluster.env)
        run(args)


if __name__ == "__main__":
    main()
