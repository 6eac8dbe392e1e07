"""Whether the P50 and P95 a plan gives mean what they say, and the P95 widening when they
do not.

A job is covered by its P50 when its actual time (run time, or queue wait) was at most the
P50 predicted for it, and by its P95 likewise. A P95 should cover 95% of jobs; when at least
MIN_JOBS of the newest RECENT_JOBS jobs of a kind and partition show it covering fewer than
WIDEN_BELOW (90%), the next plan's P95 is multiplied by the factor that would have covered
95% of them: the empirical 95% quantile of actual / P95, nearest rank (the ceil(0.95 n)-th
smallest ratio, so that at least 95% of the n ratios are at or below it; with 12 jobs the
12th, the largest). The ratio is against each job's P95 before any widening of its own plan:
the next plan's P95 is widened from the model's, not twice.

This is the arithmetic and the Plan change; the jobs are read from the history by
planner.history.coverage, and the plan is widened by planner.history.corrected_plan, after
the step corrections. Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from planner.model.plan import Plan, Segment
from planner.units import fmt_duration

MIN_JOBS = 10
RECENT_JOBS = 20
WIDEN_BELOW = 0.90
TARGET = 0.95


@dataclass(frozen=True)
class Check:
    """One job's actual time against what its plan predicted (None: it predicted none)."""

    actual_s: float
    p50_s: float | None
    p95_s: float | None


@dataclass(frozen=True)
class Coverage:
    jobs_p50: int  # jobs with a P50
    within_p50: int
    jobs_p95: int  # jobs with a P95
    within_p95: int

    @property
    def p50_share(self) -> float | None:
        return self.within_p50 / self.jobs_p50 if self.jobs_p50 else None

    @property
    def p95_share(self) -> float | None:
        return self.within_p95 / self.jobs_p95 if self.jobs_p95 else None


def coverage(checks: Sequence[Check]) -> Coverage:
    with_p50 = [c for c in checks if c.p50_s is not None]
    with_p95 = [c for c in checks if c.p95_s is not None]
    return Coverage(
        jobs_p50=len(with_p50),
        within_p50=sum(c.actual_s <= c.p50_s for c in with_p50 if c.p50_s is not None),
        jobs_p95=len(with_p95),
        within_p95=sum(c.actual_s <= c.p95_s for c in with_p95 if c.p95_s is not None),
    )


def nearest_rank(values: Sequence[float], q: float) -> tuple[float, int]:
    """The empirical q-quantile by nearest rank and its rank (1-based): the ceil(q n)-th
    smallest value, the least one with at least a share q of ``values`` at or below it."""
    if not values or not 0 < q <= 1:
        raise ValueError(f"nearest_rank: {len(values)} value(s), q={q}")
    ordered = sorted(values)
    # round(): 0.95 x 20 is 19.000000000000004 in floating point, rank 19, not 20.
    rank = max(1, math.ceil(round(q * len(ordered), 9)))
    return ordered[rank - 1], rank


@dataclass(frozen=True)
class Widening:
    """The next plan's P95 x ``factor``: the P95 covered ``covered`` of ``jobs`` jobs."""

    factor: float
    jobs: int
    covered: int
    rank: int  # the factor is the rank-th smallest of the jobs' actual / P95
    partition: str = ""

    def line(self, before_s: float, after_s: float) -> str:
        """What the plan says, in one line."""
        where = f" on partition {self.partition}" if self.partition else ""
        return (
            f"P95 widened x{self.factor:.2f} ({fmt_duration(before_s)} -> "
            f"{fmt_duration(after_s)}): it covered {self.covered} of the newest {self.jobs} "
            f"job(s) of this kind{where} ({self.covered / self.jobs:.0%}, under "
            f"{WIDEN_BELOW:.0%}); x{self.factor:.2f} is the {TARGET:.0%} quantile of their "
            f"actual / P95 (the {_ordinal(self.rank)} smallest of {self.jobs})"
        )


def widening_from(ratios: Sequence[float], partition: str = "") -> Widening | None:
    """The widening ``ratios`` (each job's actual / P95, oldest first) call for, or None:
    fewer than MIN_JOBS of them, or the P95 covered at least WIDEN_BELOW of the newest."""
    newest = list(ratios[-RECENT_JOBS:])
    if len(newest) < MIN_JOBS:
        return None
    covered = sum(r <= 1.0 for r in newest)
    if covered / len(newest) >= WIDEN_BELOW:
        return None
    factor, rank = nearest_rank(newest, TARGET)
    # Fewer than 90% covered puts more than 10% above 1: the 95% quantile is above 1.
    return Widening(factor, len(newest), covered, rank, partition)


def widen(plan: Plan, widening: Widening) -> Plan:
    """The plan with its P95 (and each node count's) x the factor, and the line saying so.
    The last segment's --time grows by as much as the run's P95 (up to the partition's
    MaxTime): the steps that a slower run leaves undone in the segments before it, filled to
    MaxTime, fall to it. The P50 and the other segments stay as planned."""
    factor = widening.factor
    wall = dataclasses.replace(plan.wall, p95_s=plan.wall.p95_s * factor)
    segments = _last_longer(plan, wall.p95_s - plan.wall.p95_s)
    options = tuple(
        dataclasses.replace(o, wall_p95_s=o.wall_p95_s * factor) if o.wall_p95_s is not None else o
        for o in plan.options
    )
    return dataclasses.replace(
        plan,
        wall=wall,
        options=options,
        segments=segments,
        p95_widening=plan.p95_widening * factor,
        notes=(*plan.notes, widening.line(plan.wall.p95_s, wall.p95_s)),
    )


def _last_longer(plan: Plan, extra_s: float) -> tuple[Segment, ...]:
    if not plan.segments or not extra_s > 0:
        return plan.segments
    last = plan.segments[-1]
    minutes = last.time_limit_minutes + math.ceil(extra_s / 60)
    max_time_s = plan.partition.max_time_s if plan.partition else None
    if max_time_s:
        minutes = min(minutes, max(max_time_s // 60, last.time_limit_minutes))
    return (*plan.segments[:-1], dataclasses.replace(last, time_limit_minutes=minutes))


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
