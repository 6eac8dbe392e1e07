"""When Slurm would start a job now: `sbatch --test-only` with the job's real options.

`sbatch --test-only` asks the controller's scheduler where and when it would place the job,
submits nothing, and answers on stderr (Slurm 22.05, recorded in tests/fixtures):

    sbatch: Job 6 to start at 2026-12-03T20:30:52 using 1 processors on nodes n1 in partition gpu

or exits 1 with why it could never start ("allocation failure: Requested node configuration
is not available", "invalid partition specified"). Anything else is not guessed at: the
estimate is "unknown" with the answer quoted. Each ask is a controller round trip, so the
node counts of a plan are asked concurrently, a bounded number at a time, each with a timeout.
The estimate is rough (Brown et al. 2022, arXiv 2204.13543: Slurm's own start estimate is
often far off on a busy machine); plan-job shows it as Slurm's word, not as a promise.
Torch-free.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from planner.errors import CommandError
from planner.shell import CommandResult, run_command
from planner.slurm.client import classify, reason_of
from planner.slurm.queue import parse_slurm_time

Runner = Callable[[Sequence[str]], CommandResult]

# At most this many --test-only asks at once: a plan weighs up to ~8-16 node counts, and a
# login node's controller serves everyone.
MAX_CONCURRENT = 8
# One ask: a healthy controller answers in milliseconds; Slurm's own retries of a dead one
# end after MessageTimeout (10 s by default).
TEST_ONLY_TIMEOUT_S = 12.0
STATUSES = ("ok", "unknown", "never")

_ANSWER_RE = re.compile(
    r"^sbatch: Job (?P<job>\d+) to start at (?P<start>\S+) using (?P<cpus>\d+) processors? "
    r"on nodes (?P<nodes>\S+) in partition (?P<partition>\S+)$"
)
# What --test-only prints (exit 1) for a job the scheduler could never place.
_NEVER_MARKERS = (
    "allocation failure",
    "requested node configuration is not available",
    "invalid partition",
    "invalid account",
    "invalid qos",
    "job violates accounting/qos policy",
    "requested time limit is invalid",
    "node count specification invalid",
    "memory specification can not be satisfied",
)


@dataclass(frozen=True)
class StartRequest:
    """A job's options as its script would ask them (planner.runs.emit writes the same)."""

    nodes: int
    time_minutes: int
    time_min_minutes: int
    tasks_per_node: int
    cpus_per_task: int
    gpus_per_node: int  # 0: no --gres
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    mem: str | None = None

    def argv(self) -> list[str]:
        out = ["sbatch", "--test-only"]
        for key, value in (
            ("partition", self.partition),
            ("account", self.account),
            ("qos", self.qos),
        ):
            if value is not None:
                out.append(f"--{key}={value}")
        out += [
            f"--nodes={self.nodes}",
            f"--ntasks-per-node={self.tasks_per_node}",
            f"--cpus-per-task={self.cpus_per_task}",
        ]
        if self.gpus_per_node > 0:
            out.append(f"--gres=gpu:{self.gpus_per_node}")
        if self.mem is not None:
            out.append(f"--mem={self.mem}")
        out += [
            f"--time={self.time_minutes}",
            f"--time-min={min(self.time_min_minutes, self.time_minutes)}",
            # The script is never run: --test-only submits nothing.
            "--wrap=true",
        ]
        return out


@dataclass(frozen=True)
class StartEstimate:
    nodes: int
    start: float | None  # Unix seconds; None unless status is "ok"
    status: str  # one of STATUSES: "never" = the job could never start as asked
    reason: str  # Slurm's words when not "ok"; where and which nodes when "ok"
    took_s: float  # this ask's round trip


def parse_test_only(text: str) -> tuple[float, str]:
    """(start, "on nodes X") from --test-only's answer; ValueError for any other text."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    matches = [m for m in (_ANSWER_RE.match(line) for line in lines) if m]
    if len(matches) != 1:
        raise ValueError(f"not one start estimate in {text.strip()!r}")
    match = matches[0]
    start = parse_slurm_time(match["start"])
    if start is None:
        raise ValueError(f"start time {match['start']!r} is not a date")
    return start, f"on nodes {match['nodes']} in partition {match['partition']}"


def estimate_start(request: StartRequest, runner: Runner | None = None) -> StartEstimate:
    """One --test-only ask; never raises for Slurm's answer, only says what it was."""
    run = runner or _run
    began = time.monotonic()
    try:
        result = run(request.argv())
        text = f"{result.stderr}\n{result.stdout}"
        status, start, reason = "ok", None, ""
        try:
            start, reason = parse_test_only(text)
        except ValueError as exc:
            status, reason = "unknown", f"sbatch --test-only: unrecognised answer ({exc})"
    except CommandError as exc:
        start = None
        status, reason = _failure(exc)
    return StartEstimate(request.nodes, start, status, reason, time.monotonic() - began)


def estimate_starts(
    requests: Sequence[StartRequest],
    runner: Runner | None = None,
    workers: int = MAX_CONCURRENT,
) -> list[StartEstimate]:
    """Every request's estimate, in order, asked ``workers`` at a time."""
    if not requests:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(requests)))) as pool:
        return list(pool.map(lambda r: estimate_start(r, runner), requests))


def _run(argv: Sequence[str]) -> CommandResult:
    return run_command(argv, timeout=TEST_ONLY_TIMEOUT_S)


def _failure(exc: CommandError) -> tuple[str, str]:
    if classify(exc, "") is not None:  # no client, a dead controller, a timeout
        return "unknown", f"Slurm did not answer (sbatch --test-only: {reason_of(exc)})"
    text = f"{exc.stderr}\n{exc.stdout}".lower()
    if any(marker in text for marker in _NEVER_MARKERS):
        return "never", f"Slurm would never start it: {reason_of(exc)}"
    return "unknown", f"sbatch --test-only failed: {reason_of(exc)}"
