"""Segment length against the backfill window: when the chosen node count waits in the queue,
would a shorter --time start sooner (a backfill window before the big job's turn), and is it
worth the extra segments a shorter length costs?

Where the chosen count's first segment would not start now, Slurm is asked once more (both at
once, planner.model.queue_finish.QueueProbe.ask_each) with at most two shorter lengths: half
the first segment's --time, and the smallest that still holds one checkpoint interval and its
save (a shorter job would stop before it saved anything). A shorter length caps every
segment, so the run is re-weighed at it (more segments: each later one pays start-up,
checkpoint load and warm-up again, in its P50 run, and waits between segments once more):

    gain = (start at full length - start at the shorter one)
           - (its P50 run - the full length's P50 run)
           - (its extra segments) x median wait between segments

and it is taken when its P50 finish is at least MIN_GAIN_S earlier. Later segments are
assumed to wait the median like any job: only the first start is Slurm's word. The plan says
which length was chosen and why (Plan.segment_length). Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from jobs.contract.measurement import Measurement
from planner.errors import SpecError
from planner.model.node_choice import NO_WAITS, Candidate, first_request
from planner.model.queue_finish import Finish, QueueProbe, finish_of
from planner.model.timemodel import first_overhead_s
from planner.slurm.partition import PartitionLimits
from planner.spec.run_spec import RunSpec
from planner.units import fmt_duration

# Below a minute the gain is inside Slurm's own scheduling resolution; an extra job for it is
# not worth its risk (one more start that can fail).
MIN_GAIN_S = 60.0
NOW_S = 60.0  # a start within this of the plan is "now": no window can start sooner


@dataclass(frozen=True)
class Length:
    """One segment length's time to result at the chosen node count."""

    limit_minutes: int  # the first segment's --time
    candidate: Candidate
    finish: Finish
    partition: PartitionLimits  # the partition as the run is split: MaxTime = this length


def shorter_limits(first_limit: int, first_overhead: float, c: Candidate) -> list[int]:
    """At most two --time values (minutes) below ``first_limit``: its half, and the smallest
    holding one checkpoint interval at P95 and the stop reserve (what a job must do to save)."""
    saves = first_overhead + c.work.p95(c.checkpoint.interval_steps) + c.lead_s
    smallest = max(1, math.ceil(saves / 60 - 1e-9))
    return sorted({t for t in (first_limit // 2, smallest) if 1 <= t < first_limit}, reverse=True)


def gain_s(full: Length, short: Length) -> float:
    """How much earlier the shorter length finishes at P50 (negative: later)."""
    return (full.finish.p50 or 0.0) - (short.finish.p50 or 0.0)


def pick(full: Length, shorter: Sequence[Length]) -> tuple[Length, str]:
    """The length to run and one line on why: the earliest P50 finish, a shorter one only when
    it wins by MIN_GAIN_S."""
    if not shorter:
        return full, (
            f"{full.limit_minutes} min kept: no shorter --time holds the start-up, a "
            "checkpoint save and the stop reserve"
        )
    known = [s for s in shorter if s.finish.known]
    if not known:
        asked = ", ".join(f"{s.limit_minutes} min" for s in shorter)
        return full, f"{full.limit_minutes} min kept: Slurm gave no start at {asked}"
    best = max(known, key=lambda s: gain_s(full, s))
    words = _weighed(full, best)
    if gain_s(full, best) >= MIN_GAIN_S:
        return best, (
            f"{best.limit_minutes} min instead of {full.limit_minutes}: {words}; it finishes "
            f"{fmt_duration(gain_s(full, best))} earlier at P50"
        )
    return full, (
        f"{full.limit_minutes} min kept: at {best.limit_minutes} min {words}; it would finish "
        f"{_later(gain_s(full, best))} at P50"
    )


def _weighed(full: Length, short: Length) -> str:
    saved = (full.finish.start or 0.0) - (short.finish.start or 0.0)
    extra = short.candidate.segments - full.candidate.segments
    run = short.candidate.wall.p50_s - full.candidate.wall.p50_s
    waits = extra * (short.finish.waits.median_s or 0.0) if short.finish.waits.known else 0.0
    start = f"it starts {fmt_duration(saved)} sooner" if saved > 0 else "it starts no sooner"
    return (
        f"{start}; its {extra} extra segment(s) cost {fmt_duration(max(run, 0.0))} of "
        f"start-up, a save, checkpoint load and warm-up and {fmt_duration(waits)} of waits "
        "between segments"
    )


def _later(gain: float) -> str:
    return f"{fmt_duration(-gain)} later" if gain < 0 else f"only {fmt_duration(gain)} earlier"


def weigh_length(
    spec: RunSpec,
    m: Measurement,
    partition: PartitionLimits,
    chosen: Candidate,
    finish: Finish,
    queue: QueueProbe,
    steps: int,
    reweigh: Callable[[PartitionLimits], Candidate | SpecError],
) -> tuple[Length, str] | None:
    """The chosen count's segment length and why, or None when there is nothing to weigh
    (its start is unknown, or now). ``reweigh``: the count weighed at another partition."""
    if finish.start is None or not finish.known or finish.start - queue.now < NOW_S:
        return None
    request = first_request(spec, m, partition, chosen, steps)
    full = Length(request.time_minutes, chosen, finish, partition)
    weighed = []
    for limit in shorter_limits(request.time_minutes, first_overhead_s(m), chosen):
        capped = dataclasses.replace(partition, max_time_s=limit * 60)
        again = reweigh(capped)
        if isinstance(again, Candidate):
            weighed.append((limit, again, capped))
    requests = [first_request(spec, m, p, c, steps) for _, c, p in weighed]
    answers = queue.ask_each(requests)
    shorter = [
        Length(
            limit,
            c,
            finish_of(
                answer,
                queue.wait(c.nodes) if c.segments > 1 else NO_WAITS,
                c.wall.p50_s,
                c.wall.p95_s,
                c.segments,
            ),
            p,
        )
        for (limit, c, p), answer in zip(weighed, answers, strict=True)
    ]
    return pick(full, shorter)
