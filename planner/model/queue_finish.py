"""Time to result: when each weighed node count would finish, queue included.

finish P50 = first segment's start + P50 run time + (segments - 1) x median wait between
             segments;
finish P95 = first segment's start + P95 run time + (segments - 1) x P90 wait.

The first start is Slurm's own estimate (`sbatch --test-only` with the first segment's real
options, planner.slurm.start_estimate); a chained segment becomes eligible when the one
before it ends and then waits like any job of its size: the history's recorded waits of
jobs of this kind and node count when it has MIN_RECORDED (planner.history.recorded_waits,
passed down by the CLI), else the partition's recent accounting (planner.slurm.queue_waits):
prefer_recorded. The start has no band: Slurm gives one moment, and a busy
queue moves it; the P95 widens only by the waits' P90.

A QueueProbe is what make_plan asks; the CLI builds one over the real Slurm commands, a test
or a caller may pass its own. Its answers are kept, so the plan with and without the
history's correction ask the controller once. Torch-free.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from planner.slurm.queue_waits import QueueWaits, quantile
from planner.slurm.start_estimate import StartEstimate, StartRequest

StartsAsker = Callable[[Sequence[StartRequest]], Sequence[StartEstimate]]
WaitsAsker = Callable[[int], QueueWaits]


@dataclass
class QueueProbe:
    """Asks Slurm once per distinct request; ``now`` is when the plan was made."""

    starts: StartsAsker
    waits: WaitsAsker
    now: float = field(default_factory=time.time)
    took_s: float = 0.0  # the --test-only round trips, wall clock, all asked together
    asked: int = 0  # how many --test-only asks (node counts, and shorter lengths)
    _starts: dict[StartRequest, StartEstimate] = field(default_factory=dict)
    _waits: dict[int, QueueWaits] = field(default_factory=dict)

    def ask(self, requests: Sequence[StartRequest]) -> dict[int, StartEstimate]:
        """One request per node count: each count's estimate."""
        return {r.nodes: a for r, a in zip(requests, self.ask_each(requests), strict=True)}

    def ask_each(self, requests: Sequence[StartRequest]) -> list[StartEstimate]:
        """Each request's estimate in order (several may share a node count: another
        segment length, planner.model.segment_length), all new ones asked at once."""
        new = [r for r in dict.fromkeys(requests) if r not in self._starts]
        if new:
            began = time.monotonic()
            for request, answer in zip(new, self.starts(new), strict=True):
                self._starts[request] = answer
            self.took_s += time.monotonic() - began
            self.asked += len(new)
        return [self._starts[r] for r in requests]

    def wait(self, nodes: int) -> QueueWaits:
        if nodes not in self._waits:
            self._waits[nodes] = self.waits(nodes)
        return self._waits[nodes]


@dataclass(frozen=True)
class Finish:
    """One node count's time to result."""

    nodes: int
    status: str  # the start estimate's: "ok", "unknown", "never"
    start: float | None
    p50: float | None  # Unix seconds; None: unknown
    p95: float | None
    waits: QueueWaits
    between: int  # segments after the first, each waiting once
    note: str  # why unknown or never, in Slurm's words

    @property
    def known(self) -> bool:
        return self.p50 is not None


def finish_of(
    estimate: StartEstimate, waits: QueueWaits, run_p50_s: float, run_p95_s: float, segments: int
) -> Finish:
    between = max(segments - 1, 0)
    if estimate.status != "ok" or estimate.start is None:
        return Finish(
            estimate.nodes, estimate.status, None, None, None, waits, between, estimate.reason
        )
    median = (waits.median_s or 0.0) if waits.known else 0.0
    p90 = (waits.p90_s or 0.0) if waits.known else 0.0
    return Finish(
        estimate.nodes,
        "ok",
        estimate.start,
        estimate.start + run_p50_s + between * median,
        estimate.start + run_p95_s + between * p90,
        waits,
        between,
        "" if waits.known or not between else f"waits between segments {waits.source}",
    )


def by_nodes(finishes: Sequence[Finish]) -> Mapping[int, Finish]:
    return {f.nodes: f for f in finishes}


# The plan's own recorded waits come first from this many jobs on: fewer are too few to
# stand for a queue (one lucky backfill would set the median), and the partition's
# accounting, all users' jobs of that size, says more.
MIN_RECORDED = 5


def prefer_recorded(
    recorded: Sequence[float], accounting: Callable[[], QueueWaits], where: str, days: int
) -> QueueWaits:
    """The waits between segments at one node count: the history's recorded waits of jobs
    of this kind (``where`` names them) when there are at least MIN_RECORDED, else the
    partition's accounting (asked only then), its source saying how many the history had."""
    if len(recorded) >= MIN_RECORDED:
        return QueueWaits(
            quantile(recorded, 0.5),
            quantile(recorded, 0.9),
            len(recorded),
            f"history: {len(recorded)} recorded job(s) of {where}, last {days} days",
            quantile(recorded, 0.95),
        )
    waits = accounting()
    if not recorded:
        return waits
    return dataclasses.replace(
        waits,
        source=f"{waits.source} (the history has {len(recorded)} recorded job(s) of {where}, "
        f"fewer than {MIN_RECORDED})",
    )
