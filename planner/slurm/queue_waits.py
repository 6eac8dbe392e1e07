"""How long jobs of a partition waited between becoming eligible and starting.

A chained segment becomes eligible when the one before it ends, and then waits in the queue
like any job. Its wait is estimated from the partition's own accounting: sacct's Eligible and
Start of the jobs at the same node count over the last ``days`` days (all users), their
median and P90. Jobs still pending have no start and are left out, which leans the figures
short on a partition that is filling up; the source says how many jobs they rest on.
Without accounting (no slurmdbd, no client, a dead controller) the waits are "unknown" and
rest on no job. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from planner.errors import CommandError
from planner.shell import CommandResult, run_command
from planner.slurm.client import reason_of
from planner.slurm.queue import parse_slurm_time

Runner = Callable[[Sequence[str]], CommandResult]

SACCT_WAIT_FIELDS = "JobID,NNodes,Eligible,Start,State"
SACCT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class QueueWaits:
    median_s: float | None  # None: unknown
    p90_s: float | None
    jobs: int  # how many jobs the figures rest on (0: unknown)
    source: str  # where the figures come from, or why they are unknown
    # The same jobs' P95 (the history's coverage checks a P95 against a P95, never a P90).
    p95_s: float | None = None

    @property
    def known(self) -> bool:
        return self.jobs > 0 and self.median_s is not None


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile by linear interpolation between order statistics (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def parse_waits(text: str) -> dict[int, list[float]]:
    """Eligible-to-start seconds by node count from `sacct -X -n -P -o SACCT_WAIT_FIELDS`.

    A line with the wrong number of fields is an error (ValueError): the format is ours.
    Jobs without both times (pending, never eligible) are left out."""
    waits: dict[int, list[float]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.strip().split("|")
        if len(parts) != 5:
            raise ValueError(f"expected 5 fields ({SACCT_WAIT_FIELDS}), got {line!r}")
        _, nodes, eligible, start, _state = parts
        begin, began = parse_slurm_time(eligible), parse_slurm_time(start)
        if begin is None or began is None or not nodes.strip().isdigit():
            continue
        waits.setdefault(int(nodes), []).append(max(began - begin, 0.0))
    return waits


def summarize(waits: Sequence[float], partition: str, nodes: int, days: int) -> QueueWaits:
    if not waits:
        return QueueWaits(
            None,
            None,
            0,
            f"unknown: no job of {nodes} node(s) started in partition {partition} in the "
            f"last {days} days (sacct)",
        )
    return QueueWaits(
        quantile(waits, 0.5),
        quantile(waits, 0.9),
        len(waits),
        f"sacct: {len(waits)} job(s) of {nodes} node(s) in partition {partition}, last {days} days",
        quantile(waits, 0.95),
    )


def waits_by_nodes(
    partition: str, days: int, runner: Runner | None = None
) -> dict[int, list[float]] | str:
    """Every started job's wait by node count, or why accounting could not be read."""
    run = runner or (lambda argv: run_command(argv, timeout=SACCT_TIMEOUT_S))
    argv = [
        "sacct",
        "--allusers",
        "-X",
        "-n",
        "-P",
        f"--partition={partition}",
        f"--starttime=now-{days}days",
        "--endtime=now",
        "-o",
        SACCT_WAIT_FIELDS,
    ]
    try:
        text = run(argv).stdout
    except CommandError as exc:
        return f"unknown: no accounting (sacct: {reason_of(exc)})"
    try:
        return parse_waits(text)
    except ValueError as exc:
        return f"unknown: sacct's answer could not be read ({exc})"


def partition_waits(
    partition: str, nodes: int, days: int, runner: Runner | None = None
) -> QueueWaits:
    """Median and P90 wait from eligible to start of the partition's jobs at ``nodes`` nodes
    over the last ``days`` days; "unknown" with jobs=0 when sacct cannot say."""
    found = waits_by_nodes(partition, days, runner)
    if isinstance(found, str):
        return QueueWaits(None, None, 0, found)
    return summarize(found.get(nodes, []), partition, nodes, days)
