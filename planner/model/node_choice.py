"""How the node count is chosen, among the counts planner.model.node_range allows.

1. weigh: each count n's step time, checkpoint interval, segments and P50/P95 run time (a
   Candidate), or why n is not possible (the batch does not split, a step does not fit).
2. ask_queue (where Slurm answers): when n's first segment would start (`sbatch --test-only`
   with its real options, all counts at once) and the partition's waits between segments;
   the finish arithmetic is planner.model.queue_finish.
3. choose, by plan.choose_by: "finish" (the default where Slurm answers) counts the queue:
   with a deadline, the fewest GPU-hours whose P95 finish meets it; without one, the earliest
   P50 finish among the counts whose scaling efficiency is at least plan.efficiency_floor.
   "run" (the default without Slurm): the same rules on the run time alone. A count Slurm
   says could never start is not chosen; --nodes N is taken as given. Both rules' winners
   are worked out; when they differ, the plan says which the other would pick and why.
4. node_option: each count's row in the plan's node table, with why it was not chosen.

Stop margin: every segment's --time reserves lead_s = P95 step + one checkpoint save +
SIGNAL_MARGIN_S + 60 s after its planned work. The signal is asked for 60 s later than that
(--signal=B:USR2@(lead_s - 60)) because Slurm may deliver it up to 60 s early: its earliest
arrival is then the end of the planned work, and its latest still leaves a step and a save.
Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from jobs.contract.measurement import Measurement
from planner.calibration.record import CalibrationRecord
from planner.errors import BatchSplitError, DeadlineError, PartitionLimitError, SpecError
from planner.model.correction import Correction
from planner.model.interval import choose_interval
from planner.model.plan import (
    SIGNAL_MARGIN_S,
    SIGNAL_SLACK_S,
    CheckpointChoice,
    NodeOption,
    TimeEstimate,
)
from planner.model.plan_limits import corrected_step
from planner.model.queue_finish import Finish, QueueProbe, finish_of
from planner.model.timemodel import (
    StepStats,
    StretchTime,
    Totals,
    estimate_time,
    first_overhead_s,
    resume_s,
    segment_count,
    split_segments,
    step_stats,
)
from planner.scaling.ring import ScalingModel, StepTime, efficiency, step_at
from planner.slurm.partition import PartitionLimits
from planner.slurm.queue_waits import QueueWaits
from planner.slurm.start_estimate import StartRequest
from planner.spec.run_spec import RunSpec
from planner.units import fmt_duration, fmt_percent


@dataclass(frozen=True)
class Candidate:
    nodes: int
    grad_accum: int
    step: StepTime
    stats: StepStats
    work: StretchTime
    checkpoint: CheckpointChoice
    lead_s: int
    segments: int
    wall: TimeEstimate
    efficiency: float
    gpu_hours: float
    correction: Correction | None = None  # the history's, at this node count
    spread: float = 0.0  # the run-to-run spread its P95 used


def evaluate(
    spec: RunSpec,
    record: CalibrationRecord,
    totals: Totals,
    model: ScalingModel,
    partition: PartitionLimits | None,
    n: int,
    one_node_s: float,
    eval_s: float,
    spread: float,
    correction: Correction | None,
) -> Candidate:
    m = record.measurement
    accum, step = step_at(spec, model, n)
    step = corrected_step(step, correction)
    if correction is not None:
        spread = max(spread, correction.spread)
    stats = step_stats(spec, m, step.total_s, spread)
    gpus = n * gpus_per_node(spec)
    resume = resume_s(m)
    checkpoint = choose_interval(spec, m.checkpoint_save_s, resume, stats.mean_s, gpus)
    plan = spec.plan
    work = StretchTime(
        stats, m.checkpoint_save_s, checkpoint.interval_steps, eval_s, plan.eval_interval_steps
    )
    lead = math.ceil(stats.p95_s + m.checkpoint_save_s + SIGNAL_MARGIN_S + SIGNAL_SLACK_S)
    first = first_overhead_s(m)
    max_time = partition.max_time_s if partition else None
    count = segment_count(
        work, totals.steps, first, resume, lead, max_time, partition_name(partition)
    )
    wall = estimate_time(spec, m, totals, stats, checkpoint, count, resume, eval_s)
    failures = (wall.p50_s - wall.failures_s) / checkpoint.mtbf_s
    checkpoint = dataclasses.replace(checkpoint, expected_failures=failures)
    return Candidate(
        nodes=n,
        grad_accum=accum,
        step=step,
        stats=stats,
        work=work,
        checkpoint=checkpoint,
        lead_s=lead,
        segments=count,
        wall=wall,
        efficiency=efficiency(one_node_s, n, step.total_s),
        gpu_hours=wall.p50_s * gpus / 3600,
        correction=correction,
        spread=spread,
    )


@dataclass(frozen=True)
class Choice:
    chosen: Candidate
    why: str
    rule: str  # "finish", "run" or "forced": the rule that chose
    other: str = ""  # the other rule's different winner and why, "" when the same
    finish: Finish | None = None  # the chosen node count's, when the queue was asked


def weigh(
    spec: RunSpec,
    record: CalibrationRecord,
    totals: Totals,
    model: ScalingModel,
    partition: PartitionLimits | None,
    n: int,
    eval_s: float,
    spread: float,
    corrections: Mapping[int, Correction] | None,
) -> Candidate | SpecError:
    """Node count n's figures, or why it is not possible (the batch does not split, a step
    does not fit MaxTime)."""
    one_node = step_at(spec, model, 1)[1].total_s
    correction = (corrections or {}).get(n)
    if correction is not None and not correction.applied:
        correction = None  # its jobs disagree: shown in a note, not applied
    try:
        return evaluate(
            spec, record, totals, model, partition, n, one_node, eval_s, spread, correction
        )
    except (BatchSplitError, PartitionLimitError) as exc:
        return exc


# A one-segment run waits once, before it starts: no wait between segments to count.
NO_WAITS = QueueWaits(0.0, 0.0, 0, "one segment: no wait between segments")


def first_request(
    spec: RunSpec, m: Measurement, partition: PartitionLimits | None, c: Candidate, steps: int
) -> StartRequest:
    """The first segment's options as its script will ask them (planner.runs.emit)."""
    first = split_segments(
        c.work,
        steps,
        first_overhead_s(m),
        resume_s(m),
        c.lead_s,
        partition.max_time_s if partition else None,
        partition_name(partition),
    )[0]
    cluster = spec.cluster
    return StartRequest(
        nodes=c.nodes,
        time_minutes=first.time_limit_minutes,
        time_min_minutes=first.time_min_minutes,
        tasks_per_node=max(cluster.gpus_per_node, 1),
        cpus_per_task=cluster.cpus_per_task,
        gpus_per_node=cluster.gpus_per_node,
        partition=cluster.partition,
        account=cluster.account,
        qos=cluster.qos,
        mem=cluster.mem,
    )


def ask_queue(
    spec: RunSpec,
    m: Measurement,
    partition: PartitionLimits | None,
    results: list[Candidate | SpecError],
    queue: QueueProbe,
    steps: int,
) -> dict[int, Finish]:
    """Each feasible node count's time to result, Slurm asked once for all of them."""
    candidates = [r for r in results if isinstance(r, Candidate)]
    starts = queue.ask([first_request(spec, m, partition, c, steps) for c in candidates])
    return {
        c.nodes: finish_of(
            starts[c.nodes],
            queue.wait(c.nodes) if c.segments > 1 else NO_WAITS,
            c.wall.p50_s,
            c.wall.p95_s,
            c.segments,
        )
        for c in candidates
    }


def choose(
    spec: RunSpec,
    results: list[Candidate | SpecError],
    deadline_hours: float | None,
    forced: int | None,
    finishes: Mapping[int, Finish] | None = None,
    now: float | None = None,
) -> Choice:
    finishes = finishes or {}
    feasible = [r for r in results if isinstance(r, Candidate)]
    if not feasible:
        raise next(r for r in results if isinstance(r, SpecError))
    if forced is not None:
        picked = results[forced - 1]
        if isinstance(picked, SpecError):
            raise picked
        if deadline_hours is not None and picked.wall.p95_s > deadline_hours * 3600:
            raise DeadlineError(
                "plan.deadline_hours",
                deadline_hours,
                f"not met at P95 on {forced} node(s); it takes "
                f"{fmt_duration(picked.wall.p95_s)} ({picked.wall.p95_s / 3600:.3g} h) at P95 "
                f"there: raise the deadline or plan another --nodes",
                spec.source,
            )
        return Choice(picked, f"--nodes {forced}", "forced", finish=finishes.get(forced))
    # Slurm's word that a node count could never start as asked outranks any model.
    startable = [c for c in feasible if _status(finishes, c) != "never"] or feasible
    by_run = _by_run(spec, startable, feasible, len(results), deadline_hours)
    # Default: by finish where Slurm was asked (the CLI asks where its controller answers).
    rule = spec.plan.choose_by or ("finish" if finishes else "run")
    if rule == "run":
        return Choice(*by_run, "run", finish=finishes.get(by_run[0].nodes))
    by_finish = _by_finish(spec, startable, finishes, deadline_hours, now)
    if isinstance(by_finish, str):
        why = f"{by_run[1]}; {by_finish}, so by run time"
        return Choice(by_run[0], why, "run", finish=finishes.get(by_run[0].nodes))
    chosen, why = by_finish
    other = ""
    if by_run[0] is not chosen:
        other = _other_winner(by_run[0], chosen, finishes)
    return Choice(chosen, why, "finish", other, finishes.get(chosen.nodes))


def _status(finishes: Mapping[int, Finish], c: Candidate) -> str:
    found = finishes.get(c.nodes)
    return found.status if found is not None else "unknown"


def _by_run(
    spec: RunSpec,
    candidates: list[Candidate],
    feasible: list[Candidate],
    weighed: int,
    deadline_hours: float | None,
) -> tuple[Candidate, str]:
    if deadline_hours is not None:
        meeting = [c for c in candidates if c.wall.p95_s <= deadline_hours * 3600]
        if not meeting:
            best = min(feasible, key=lambda c: c.wall.p95_s)
            tried = f"any of 1..{weighed} node(s)"
            if len(feasible) < weighed:
                tried += f" (possible: {_counts(feasible)})"
            raise DeadlineError(
                "plan.deadline_hours",
                deadline_hours,
                f"not met at P95 on {tried}; the best achievable is "
                f"{fmt_duration(best.wall.p95_s)} ({best.wall.p95_s / 3600:.3g} h) at P95 on "
                f"{best.nodes} node(s): raise the deadline, plan.max_nodes or use a larger "
                "partition",
                spec.source,
            )
        chosen = min(meeting, key=lambda c: (c.gpu_hours, c.wall.p95_s))
        return chosen, f"fewest GPU-hours with P95 within the {deadline_hours:g} h deadline"
    floor = spec.plan.efficiency_floor
    efficient = [c for c in candidates if c.efficiency >= floor - 1e-12] or candidates
    chosen = min(efficient, key=lambda c: (c.wall.p50_s, c.nodes))
    return chosen, f"fastest (P50) with scaling efficiency >= {fmt_percent(floor)}, no deadline"


def _by_finish(
    spec: RunSpec,
    candidates: list[Candidate],
    finishes: Mapping[int, Finish],
    deadline_hours: float | None,
    now: float | None,
) -> tuple[Candidate, str] | str:
    """The choice, or why the finish cannot choose."""
    known = [c for c in candidates if c.nodes in finishes and finishes[c.nodes].known]
    if not known:
        return "no start is known (the queue is unknown)"
    if deadline_hours is not None and now is not None:
        due = now + deadline_hours * 3600
        meeting = [c for c in known if (finishes[c.nodes].p95 or math.inf) <= due]
        if not meeting:
            return "no P95 finish meets the deadline counting the queue"
        chosen = min(meeting, key=lambda c: (c.gpu_hours, finishes[c.nodes].p95 or math.inf))
        return chosen, (
            f"fewest GPU-hours whose P95 finish (queue + run + waits) is within the "
            f"{deadline_hours:g} h deadline"
        )
    floor = spec.plan.efficiency_floor
    efficient = [c for c in known if c.efficiency >= floor - 1e-12] or known
    chosen = min(efficient, key=lambda c: (finishes[c.nodes].p50 or math.inf, c.nodes))
    return chosen, (
        f"earliest P50 finish (queue + run + waits) with scaling efficiency >= "
        f"{fmt_percent(floor)}, no deadline"
    )


def _other_winner(by_run: Candidate, chosen: Candidate, finishes: Mapping[int, Finish]) -> str:
    """One line: what run time alone would have picked and why the finish did not."""
    theirs, ours = finishes.get(by_run.nodes), finishes.get(chosen.nodes)
    text = (
        f"by run time alone {by_run.nodes} node(s) would be chosen (P50 run "
        f"{fmt_duration(by_run.wall.p50_s)}, {chosen.nodes} node(s): "
        f"{fmt_duration(chosen.wall.p50_s)})"
    )
    if theirs is None or not theirs.known or ours is None or not ours.p50:
        return text + f", but Slurm could not say when it would start ({_why(theirs)})"
    gain = (theirs.p50 or 0.0) - ours.p50
    return (
        text + f", but it waits in the queue: it finishes {fmt_duration(gain)} later at P50"
        if gain > 0
        else text
    )


def _why(finish: Finish | None) -> str:
    return finish.note if finish is not None and finish.note else "unknown"


def node_option(
    spec: RunSpec,
    result: Candidate | SpecError,
    n: int,
    choice: Choice,
    deadline_hours: float | None,
    finish: Finish | None = None,
) -> NodeOption:
    gpus = n * gpus_per_node(spec)
    if isinstance(result, SpecError):
        return NodeOption(n, gpus, False, result.allowed)
    c, chosen = result, choice.chosen
    by_finish = choice.rule == "finish" and finish is not None
    if c is chosen:
        reason = f"chosen: {choice.why}"
    elif finish is not None and finish.status == "never":
        reason = finish.note
    elif by_finish and finish is not None and not finish.known:
        reason = f"start unknown: {finish.note}"
    elif (
        by_finish
        and deadline_hours is None
        and finish is not None
        and c.efficiency >= spec.plan.efficiency_floor - 1e-12
    ):
        mine, theirs = finish.p50, _finish_p50(choice)
        reason = (
            "finishes later"
            if mine is not None and theirs is not None and mine >= theirs
            else "not chosen"
        )
    elif deadline_hours is not None and c.wall.p95_s > deadline_hours * 3600:
        reason = f"P95 over the {deadline_hours:g} h deadline"
    elif deadline_hours is not None:
        reason = "more GPU-hours"
    elif c.efficiency < spec.plan.efficiency_floor - 1e-12:
        reason = f"efficiency below {fmt_percent(spec.plan.efficiency_floor)}"
    else:
        reason = "slower" if c.wall.p50_s >= chosen.wall.p50_s else "not chosen"
    cost = spec.plan.gpu_hour_cost
    return NodeOption(
        nodes=n,
        gpus=gpus,
        feasible=True,
        reason=reason,
        chosen=c is chosen,
        grad_accum=c.grad_accum,
        step_s=c.stats.mean_s,
        comm_s=c.step.comm_s,
        efficiency=c.efficiency,
        wall_p50_s=c.wall.p50_s,
        wall_p95_s=c.wall.p95_s,
        segments=c.segments,
        gpu_hours=c.gpu_hours,
        cost=None if cost is None else c.gpu_hours * cost,
        start_status=finish.status if finish is not None else None,
        start_time=finish.start if finish is not None else None,
        finish_p50=finish.p50 if finish is not None else None,
        finish_p95=finish.p95 if finish is not None else None,
        queue_note=finish.note if finish is not None else "",
    )


def _finish_p50(choice: Choice) -> float | None:
    return choice.finish.p50 if choice.finish is not None else None


def _counts(candidates: list[Candidate]) -> str:
    counts = [str(c.nodes) for c in candidates]
    return ", ".join(counts[:8]) + (", ..." if len(counts) > 8 else "")


def gpus_per_node(spec: RunSpec) -> int:
    return max(spec.cluster.gpus_per_node, 1)


def partition_name(partition: PartitionLimits | None) -> str:
    return f"partition {partition.name}" if partition else "the partition"
