"""make_plan: from a spec and its calibration to nodes, wall time, checkpoints and Slurm jobs.

For every node count n in 1..N (N = min(plan.max_nodes, the partition's MaxNodes and total
nodes); without partition information plan.max_nodes or else cluster.nodes):
step time (planner.model.scaling; the record's fitted
planner.model.scaling_fit.MeasuredScaling when a multi-node calibration made one), checkpoint
interval (planner.model.interval), segments under MaxTime and P50/P95 wall time
(planner.model.timemodel), GPU-hours = P50 wall x GPUs, cost.

Choice: with a deadline, the fewest GPU-hours whose P95 wall time meets it; without one, the
fastest (P50) node count whose scaling efficiency is at least plan.efficiency_floor.

Stop margin: every segment's --time reserves lead_s = P95 step + one checkpoint save +
SIGNAL_MARGIN_S + 60 s after its planned work. The signal is asked for 60 s later than that
(--signal=B:USR2@(lead_s - 60)) because Slurm may deliver it up to 60 s early: its earliest
arrival is then the end of the planned work, and its latest still leaves a step and a save.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from planner.calibration.record import CalibrationRecord
from planner.errors import (
    BatchSplitError,
    CalibrationMismatchError,
    DeadlineError,
    PartitionLimitError,
    SpecError,
)
from planner.history.correction import Correction
from planner.model.baselines import baselines
from planner.model.interval import choose_interval
from planner.model.node_cap import node_cap
from planner.model.plan import (
    SIGNAL,
    SIGNAL_MARGIN_S,
    SIGNAL_SLACK_S,
    CheckpointChoice,
    NodeOption,
    Plan,
    TimeEstimate,
)
from planner.model.plan_limits import (
    corrected_step,
    correction_for_nodes,
    correction_note,
    measured_cap,
    weak_calibration,
)
from planner.model.scaling import ScalingModel, StepTime, efficiency, ring_model, step_at
from planner.model.scaling_fit import (
    describe_fit,
    extrapolation,
    measured_efficiency,
    measured_scaling,
)
from planner.model.timemodel import (
    StepStats,
    Totals,
    Work,
    count_work,
    estimate_time,
    eval_seconds,
    job_overhead_s,
    segment_count,
    split_segments,
    step_stats,
)
from planner.slurm.partition import PartitionLimits, check_partition
from planner.spec.run_spec import RunSpec
from planner.units import fmt_duration, fmt_percent


@dataclass(frozen=True)
class _Candidate:
    nodes: int
    grad_accum: int
    step: StepTime
    stats: StepStats
    work: Work
    checkpoint: CheckpointChoice
    lead_s: int
    segments: int
    wall: TimeEstimate
    efficiency: float
    gpu_hours: float
    correction: Correction | None = None  # the history's, at this node count
    spread: float = 0.0  # the run-to-run spread its P95 used


def make_plan(
    spec: RunSpec,
    record: CalibrationRecord,
    partition: PartitionLimits | None,
    calibration_path: str,
    *,
    deadline_hours: float | None = None,
    nodes: int | None = None,
    scaling: ScalingModel | None = None,
    corrections: Mapping[int, Correction] | None = None,
) -> Plan:
    """The plan; deadline_hours replaces plan.deadline_hours, nodes forces a node count,
    corrections are the history's step corrections by node count
    (planner.history.correction.corrections_for): the CLI passes them, and so can a caller."""
    check_calibration(spec, record, calibration_path)
    check_partition(spec, partition)
    if deadline_hours is None:
        deadline_hours = spec.plan.deadline_hours
    elif not (deadline_hours > 0 and math.isfinite(deadline_hours)):
        raise SpecError("--deadline", deadline_hours, "must be a number of hours > 0")
    m = record.measurement
    totals = count_work(spec, m)
    eval_s = eval_seconds(spec, m, calibration_path)
    model = scaling or _scaling_model(spec, record)
    cap = node_cap(spec, partition, m.params)
    limit = cap.limit
    if nodes is not None and not 1 <= nodes <= limit:
        raise PartitionLimitError(
            "--nodes", nodes, f"must be between 1 and {limit}: {cap.reason}", spec.source
        )
    held = measured_cap(spec, record, limit, nodes)
    limit = held.limit
    spread, weak = weak_calibration(spec, record)
    one_node = step_at(spec, model, 1)[1].total_s
    results: list[_Candidate | SpecError] = []
    for n in range(1, limit + 1):
        try:
            correction = correction_for_nodes(corrections, n)
            results.append(
                _evaluate(
                    spec, record, totals, model, partition, n, one_node, eval_s, spread, correction
                )
            )
        except (BatchSplitError, PartitionLimitError) as exc:
            results.append(exc)
    chosen, why = _choose(spec, results, deadline_hours, nodes)
    options = tuple(
        _option(spec, r, n, chosen, why, deadline_hours) for n, r in enumerate(results, start=1)
    )
    options = _with_measured(spec, record, options)
    segments = split_segments(
        chosen.work,
        totals.steps,
        _first_overhead_s(record),
        _resume_s(record),
        chosen.lead_s,
        partition.max_time_s if partition else None,
        _partition_name(partition),
    )
    gpus = chosen.nodes * _gpus_per_node(spec)
    cost = spec.plan.gpu_hour_cost
    return Plan(
        spec=spec,
        calibration_path=calibration_path,
        fingerprint=record.fingerprint,
        total_steps=totals.steps,
        samples_total=totals.samples,
        tokens_total=totals.tokens,
        token_unit=totals.token_unit,
        nodes=chosen.nodes,
        gpus_per_node=spec.cluster.gpus_per_node,
        grad_accum=chosen.grad_accum,
        step_s=chosen.stats.mean_s,
        step_p95_s=chosen.stats.p95_s,
        efficiency=chosen.efficiency,
        wall=chosen.wall,
        checkpoint=chosen.checkpoint,
        checkpoint_interval_steps=chosen.checkpoint.interval_steps,
        checkpoint_interval_s=chosen.checkpoint.interval_s,
        signal=SIGNAL,
        signal_lead_s=chosen.lead_s - SIGNAL_SLACK_S,
        resume_s=_resume_s(record),
        partition=partition,
        segments=segments,
        options=options,
        baselines=baselines(record, totals, chosen.grad_accum, gpus),
        deadline_hours=deadline_hours,
        choice_reason=why,
        gpu_hours=chosen.gpu_hours,
        cost=None if cost is None else chosen.gpu_hours * cost,
        eval_s=eval_s,
        scaling_model=describe_fit(record.scaling) if record.scaling else "",
        extrapolation=(
            extrapolation(record.scaling.node_counts, chosen.nodes) if record.scaling else ""
        ),
        step_correction=chosen.correction.factor if chosen.correction else 1.0,
        notes=tuple(
            note
            for note in (
                held.note,
                weak,
                correction_note(chosen.correction) if chosen.correction else "",
                _spread_note(spec, chosen),
            )
            if note
        ),
        compile_s=m.compile_s,
        eager_steps_s=_eager_steps_s(record, totals, chosen),
    )


def check_calibration(spec: RunSpec, record: CalibrationRecord, path: str) -> None:
    """The record must have timed the same per-device micro-batch work as the spec asks.

    The step fingerprint also covers grad_accum, which follows the node count; a record
    differing only there is still valid (its micro-batch time is used).
    """
    if record.fingerprint == spec.step_fingerprint():
        return
    ours, theirs = spec.to_dict(), record.spec.to_dict()
    pairs = [
        (f"workload.{k}", v, theirs["workload"][k])
        for k, v in ours["workload"].items()
        if k != "compile"
    ]
    pairs += [
        ("workload.compile", spec.workload.compile, record.spec.workload.compile),
        ("batch.micro_batch", spec.batch.micro_batch, record.spec.batch.micro_batch),
        ("precision", spec.precision, record.spec.precision),
    ]
    differ = [f"{name}: spec {a!r}, calibration {b!r}" for name, a, b in pairs if a != b]
    if differ:
        raise CalibrationMismatchError(
            "--calibration",
            path,
            "the calibration timed a different step (" + "; ".join(differ) + "): calibrate "
            "this spec, or plan with the spec the calibration ran",
            spec.source,
        )


def _evaluate(
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
) -> _Candidate:
    m = record.measurement
    accum, step = step_at(spec, model, n)
    step = corrected_step(step, correction)
    if correction is not None:
        spread = max(spread, correction.spread)
    stats = step_stats(spec, m, step.total_s, spread)
    gpus = n * _gpus_per_node(spec)
    resume = _resume_s(record)
    checkpoint = choose_interval(spec, m.checkpoint_save_s, resume, stats.mean_s, gpus)
    plan = spec.plan
    work = Work(
        stats, m.checkpoint_save_s, checkpoint.interval_steps, eval_s, plan.eval_interval_steps
    )
    lead = math.ceil(stats.p95_s + m.checkpoint_save_s + SIGNAL_MARGIN_S + SIGNAL_SLACK_S)
    first = _first_overhead_s(record)
    max_time = partition.max_time_s if partition else None
    count = segment_count(
        work, totals.steps, first, resume, lead, max_time, _partition_name(partition)
    )
    wall = estimate_time(spec, m, totals, stats, checkpoint, count, resume, eval_s)
    failures = (wall.p50_s - wall.failures_s) / checkpoint.mtbf_s
    checkpoint = dataclasses.replace(checkpoint, expected_failures=failures)
    return _Candidate(
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


def _spread_note(spec: RunSpec, chosen: _Candidate) -> str:
    """The history's spread, when it is what widened the P95."""
    c = chosen.correction
    if c is None or c.spread <= spec.plan.run_to_run_spread or chosen.spread != c.spread:
        return ""
    return (
        f"the newest jobs strayed {fmt_percent(c.spread)} (standard deviation) from the "
        f"corrected pace, more than plan.run_to_run_spread "
        f"({fmt_percent(spec.plan.run_to_run_spread)}): the P95 uses {fmt_percent(c.spread)}"
    )


def _choose(
    spec: RunSpec,
    results: list[_Candidate | SpecError],
    deadline_hours: float | None,
    forced: int | None,
) -> tuple[_Candidate, str]:
    feasible = [r for r in results if isinstance(r, _Candidate)]
    if not feasible:
        raise next(r for r in results if isinstance(r, SpecError))
    candidates = feasible
    if forced is not None:
        picked = results[forced - 1]
        if isinstance(picked, SpecError):
            raise picked
        candidates = [picked]
    if deadline_hours is not None:
        meeting = [c for c in candidates if c.wall.p95_s <= deadline_hours * 3600]
        if not meeting:
            best = min(feasible, key=lambda c: c.wall.p95_s)
            tried = f"{forced} node(s)" if forced else f"any of 1..{len(results)} node(s)"
            if len(feasible) < len(results) and not forced:
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
        why = f"fewest GPU-hours with P95 within the {deadline_hours:g} h deadline"
    else:
        floor = spec.plan.efficiency_floor
        efficient = [c for c in candidates if c.efficiency >= floor - 1e-12] or candidates
        chosen = min(efficient, key=lambda c: (c.wall.p50_s, c.nodes))
        why = f"fastest (P50) with scaling efficiency >= {fmt_percent(floor)}, no deadline"
    return chosen, (f"--nodes {forced}" if forced is not None else why)


def _option(
    spec: RunSpec,
    result: _Candidate | SpecError,
    n: int,
    chosen: _Candidate,
    why: str,
    deadline_hours: float | None,
) -> NodeOption:
    gpus = n * _gpus_per_node(spec)
    if isinstance(result, SpecError):
        return NodeOption(n, gpus, False, result.allowed)
    c = result
    if c is chosen:
        reason = f"chosen: {why}"
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
    )


def _counts(candidates: list[_Candidate]) -> str:
    counts = [str(c.nodes) for c in candidates]
    return ", ".join(counts[:8]) + (", ..." if len(counts) > 8 else "")


def _first_overhead_s(record: CalibrationRecord) -> float:
    """The first job's time beyond its steps and saves: its script, srun and start-up, its
    compile (workload.compile) and warm-up, the probe save that times a save before it can
    decide when to stop, its exit."""
    m = record.measurement
    return job_overhead_s(m) + m.compile_s + m.warmup_extra_s + m.checkpoint_save_s


def _resume_s(record: CalibrationRecord) -> float:
    """What a job after the first pays beyond its steady steps and saves: its script and srun
    start a new process, which loads the checkpoint, compiles (workload.compile) and warms up
    again, and exits."""
    m = record.measurement
    return job_overhead_s(m) + m.checkpoint_load_s + m.compile_s + m.warmup_extra_s


def _eager_steps_s(record: CalibrationRecord, totals: Totals, chosen: _Candidate) -> float:
    """workload.compile: the steps term had the run stayed eager, from the eager step the
    calibration timed before compiling (0.0 when it timed none). The difference is compute,
    per micro-batch, so it scales with the chosen node count's accumulation."""
    m = record.measurement
    if m.eager_step_s <= 0 or m.compile_s <= 0:
        return 0.0
    per_micro_batch = (m.eager_step_s - m.step_mean_s) / record.spec.batch.grad_accum
    return totals.steps * (chosen.stats.mean_s + per_micro_batch * chosen.grad_accum)


def _gpus_per_node(spec: RunSpec) -> int:
    return max(spec.cluster.gpus_per_node, 1)


def _partition_name(partition: PartitionLimits | None) -> str:
    return f"partition {partition.name}" if partition else "the partition"


def _scaling_model(spec: RunSpec, record: CalibrationRecord) -> ScalingModel:
    """The fit of a multi-node calibration when the record has one, else the ring model from
    the one device it timed and the spec's bandwidths."""
    m = record.measurement
    if record.scaling is not None:
        return measured_scaling(spec.plan, record.scaling, m.step_mean_s, m.params)
    return ring_model(spec.plan, m.step_mean_s, record.spec.batch.grad_accum, m.params)


def _with_measured(
    spec: RunSpec, record: CalibrationRecord, options: tuple[NodeOption, ...]
) -> tuple[NodeOption, ...]:
    """The node counts the calibration ran, with the efficiency and step their jobs showed
    beside the model's (the model reproduces the smallest count by construction)."""
    section = record.scaling
    if section is None:
        return options
    by_nodes = {o.nodes: o for o in options}
    base = by_nodes.get(section.points[0].nodes)
    base_efficiency = base.efficiency if base is not None and base.efficiency else 1.0
    out = []
    for option in options:
        point = next((p for p in section.points if p.nodes == option.nodes), None)
        measured = measured_efficiency(
            section, option.nodes, spec.cluster.gpus_per_node, base_efficiency
        )
        if point is not None and measured is not None and option.feasible:
            option = dataclasses.replace(
                option, measured_efficiency=measured, measured_step_s=point.step_mean_s
            )
        out.append(option)
    return tuple(out)
