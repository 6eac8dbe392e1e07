"""make_plan: from a spec and its calibration to nodes, wall time, checkpoints and Slurm jobs.

For every node count n in 1..N (N = min(plan.max_nodes, the partition's MaxNodes and total
nodes); without partition information plan.max_nodes or else cluster.nodes):
step time (planner.scaling.ring; the record's fitted
planner.scaling.fit.MeasuredScaling when a multi-node calibration made one), checkpoint
interval (planner.model.interval), segments under MaxTime and P50/P95 wall time
(planner.model.timemodel), GPU-hours = P50 wall x GPUs, cost.

Which node counts are weighed: planner.model.node_range; how each is weighed and one chosen
(by the run time, or by the finish with the queue): planner.model.node_choice.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from jobs.calibration import tail
from jobs.contract.measurement import Measurement
from planner.calibration.record import CalibrationRecord
from planner.errors import (
    CalibrationMismatchError,
    SpecError,
)
from planner.model.baselines import baselines
from planner.model.correction import Correction
from planner.model.energy import power_facts
from planner.model.node_choice import (
    Candidate,
    Choice,
    ask_queue,
    choose,
    gpus_per_node,
    node_option,
    partition_name,
    weigh,
)
from planner.model.node_range import node_range
from planner.model.plan import (
    SIGNAL,
    SIGNAL_SLACK_S,
    NodeOption,
    Plan,
)
from planner.model.plan_limits import (
    correction_note,
    weak_calibration,
)
from planner.model.queue_finish import QueueProbe
from planner.model.segment_length import Length, weigh_length
from planner.model.timemodel import (
    Totals,
    count_work,
    eval_seconds,
    first_overhead_s,
    resume_s,
    split_segments,
)
from planner.scaling.fit import (
    describe_fit,
    extrapolation,
    measured_efficiency,
    measured_scaling,
)
from planner.scaling.ring import ScalingModel, ring_model
from planner.slurm.partition import PartitionLimits, check_partition
from planner.spec.load import YEAR_S
from planner.spec.run_spec import RunSpec
from planner.units import fmt_percent


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
    queue: QueueProbe | None = None,
    queue_note: str = "",
) -> Plan:
    """The plan; deadline_hours replaces plan.deadline_hours, nodes forces a node count,
    corrections are the history's step corrections by node count
    (planner.history.correction.corrections_for): the CLI passes them, and so can a caller.
    ``queue`` asks Slurm when each node count would start (planner.model.queue_finish);
    without one, ``queue_note`` says why the queue is unknown."""
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
    held = node_range(spec, record, partition, nodes)
    spread, weak = weak_calibration(spec, record)
    results = [
        weigh(spec, record, totals, model, partition, n, eval_s, spread, corrections)
        for n in range(1, held.limit + 1)
    ]
    finishes = ask_queue(spec, m, partition, results, queue, totals.steps) if queue else {}
    choice = choose(
        spec, results, deadline_hours, nodes, finishes, queue.now if queue is not None else None
    )
    # The segment length against the backfill window: the chosen count at a shorter --time.
    length_note, cap = "", partition
    if queue is not None and partition is not None and deadline_hours is None:
        weighed = _segment_length(
            spec, record, partition, choice, queue, (totals, eval_s, model), results
        )
        if weighed is not None:
            length, length_note = weighed
            if length.candidate is not choice.chosen:
                n = length.candidate.nodes
                results[n - 1], cap = length.candidate, length.partition
                finishes = {**finishes, n: length.finish}
                choice = dataclasses.replace(choice, chosen=length.candidate, finish=length.finish)
    chosen, why = choice.chosen, choice.why
    check_length(spec, chosen, totals.steps)
    options = tuple(
        node_option(spec, r, n, choice, deadline_hours, finishes.get(n))
        for n, r in enumerate(results, start=1)
    )
    options = _with_measured(spec, record, options)
    power = power_facts(spec, m)
    options = tuple(
        dataclasses.replace(o, energy_kwh=power.kwh(o.gpu_hours)) if o.gpu_hours is not None else o
        for o in options
    )
    segments = split_segments(
        chosen.work,
        totals.steps,
        first_overhead_s(m),
        resume_s(m),
        chosen.lead_s,
        cap.max_time_s if cap else None,
        partition_name(partition),
    )
    gpus = chosen.nodes * gpus_per_node(spec)
    cost = spec.plan.gpu_hour_cost
    tail_ratio, tail_source = step_tail(m)
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
        signal=SIGNAL,
        signal_lead_s=chosen.lead_s - SIGNAL_SLACK_S,
        resume_s=resume_s(m),
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
                _history_note(corrections, chosen.nodes),
                _spread_note(spec, chosen),
            )
            if note
        ),
        compile_s=m.compile_s,
        compile_warm_s=m.compile_warm_s,
        compile_cache=m.compile_cache,
        eager_steps_s=_eager_steps_s(record, totals, chosen),
        step_p99_s=chosen.stats.mean_s * tail_ratio,
        step_p99_source=tail_source,
        process_startup_s=m.startup_s,
        checkpoint_load_s=m.checkpoint_load_s,
        checkpoint_bytes=m.checkpoint_bytes,
        energy_kwh=power.kwh(chosen.gpu_hours),
        power_w=power.power_w,
        energy_note=power.note,
        segment_length=length_note,
        **_queue_fields(queue, queue_note, choice),
    )


def _segment_length(
    spec: RunSpec,
    record: CalibrationRecord,
    partition: PartitionLimits,
    choice: Choice,
    queue: QueueProbe,
    work: tuple[Totals, float, ScalingModel],
    results: list[Candidate | SpecError],
) -> tuple[Length, str] | None:
    """planner.model.segment_length for the chosen count: by finish or --nodes only (the run
    rule asked for the shortest run, which a shorter length never gives)."""
    if choice.rule == "run" or choice.finish is None:
        return None
    chosen = choice.chosen
    weighed = [r for r in results if isinstance(r, Candidate) and r.nodes == chosen.nodes]
    spread, correction = weighed[0].spread, weighed[0].correction
    totals, eval_s, model = work
    corrections = {chosen.nodes: correction} if correction is not None else None

    def reweigh(capped: PartitionLimits) -> Candidate | SpecError:
        return weigh(spec, record, totals, model, capped, chosen.nodes, eval_s, spread, corrections)

    return weigh_length(
        spec, record.measurement, partition, chosen, choice.finish, queue, totals.steps, reweigh
    )


def _queue_fields(queue: QueueProbe | None, note: str, choice: Choice) -> dict[str, Any]:
    out: dict[str, Any] = {"choose_by": choice.rule, "choice_other": choice.other}
    if queue is None:
        return out | {"queue_note": note}
    finish = choice.finish
    out |= {"queue_checked_at": queue.now, "queue_took_s": queue.took_s, "queue_asked": queue.asked}
    if finish is None:
        return out
    return out | {
        "queue_note": finish.note,
        "start_time": finish.start,
        "finish_p50": finish.p50,
        "finish_p95": finish.p95,
        "wait_median_s": finish.waits.median_s,
        "wait_p90_s": finish.waits.p90_s,
        "wait_p95_s": finish.waits.p95_s,
        "wait_jobs": finish.waits.jobs,
        "wait_source": finish.waits.source,
    }


def _history_note(corrections: Mapping[int, Correction] | None, nodes: int) -> str:
    """What the history says at the chosen node count, applied or not."""
    correction = (corrections or {}).get(nodes)
    return correction_note(correction) if correction is not None else ""


def step_tail(m: Measurement) -> tuple[float, str]:
    """The calibration's P99 step over its mean step (at least 1), and what the P99 is."""
    if m.step_p99_s > 0:
        p99, source = m.step_p99_s, f"P99 of {m.steady_steps} steady calibration steps"
    elif len(m.step_times_s) - m.warmup_steps >= 2:
        steady = m.step_times_s[m.warmup_steps :]
        p99, source = tail.p99(steady), f"P99 of the record's {len(steady)} steady step times"
    else:
        p99, source = m.step_p90_s, "P90 of the calibration (its record keeps no P99)"
    return max(p99 / m.step_mean_s, 1.0), source


def check_length(spec: RunSpec, chosen: Candidate, steps: int) -> None:
    """A plan past a year is a unit slip (data.samples in tokens, a step time in ms read as
    s), and its figures would overflow Slurm's --time and every date shown: refuse it."""
    p95 = chosen.wall.p95_s
    if math.isfinite(p95) and p95 <= YEAR_S:
        return
    days = f"{p95 / 86_400:.3g} days" if math.isfinite(p95) else "an unbounded time"
    raise SpecError(
        "data.samples" if spec.data.samples is not None else "data.tokens",
        spec.data.samples if spec.data.samples is not None else spec.data.tokens,
        f"the plan would take {days} at P95 ({steps:,} steps of {chosen.stats.mean_s:.3g} s on "
        f"{chosen.nodes} node(s)); plan-job plans runs of up to a year: check data.samples or "
        f"data.tokens, data.epochs, the batch and the calibration's step time",
        spec.source,
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


def _spread_note(spec: RunSpec, chosen: Candidate) -> str:
    """The history's spread, when it is what widened the P95."""
    c = chosen.correction
    if c is None or c.spread <= spec.plan.run_to_run_spread or chosen.spread != c.spread:
        return ""
    return (
        f"the newest jobs strayed {fmt_percent(c.spread)} (standard deviation) from the "
        f"corrected pace, more than plan.run_to_run_spread "
        f"({fmt_percent(spec.plan.run_to_run_spread)}): the P95 uses {fmt_percent(c.spread)}"
    )


def _eager_steps_s(record: CalibrationRecord, totals: Totals, chosen: Candidate) -> float:
    """workload.compile: the steps term had the run stayed eager, from the eager step the
    calibration timed before compiling (0.0 when it timed none). The difference is compute,
    per micro-batch, so it scales with the chosen node count's accumulation."""
    m = record.measurement
    if m.eager_step_s <= 0 or m.compile_s <= 0:
        return 0.0
    per_micro_batch = (m.eager_step_s - m.step_mean_s) / record.spec.batch.grad_accum
    return totals.steps * (chosen.stats.mean_s + per_micro_batch * chosen.grad_accum)


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
