"""Which node counts a plan weighs: 1..N, and why N (planner.model.node_choice chooses
among them).

- The tightest of the partition's size and MaxNodes, plan.max_nodes, cluster.nodes without
  Slurm, and the spec's node count when the calibrated command reported no parameter count:
  `--nodes 2` refused with "between 1 and 1" must say whether the partition, the spec or the
  missing Slurm is why. Each limit is a NodeCap (count, reason); a new limit joins by adding
  its NodeCap to the list node_caps returns.
- Without a measured point beyond the calibrated node count, a plan does not choose more
  nodes than were calibrated: a 2-node plan from the default network model planned 9.93 ms
  steps that ran at 59.6 ms. `--nodes N` or plan.allow_unmeasured_scaling lets the model
  choose anyway (MeasuredCap).
Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from planner.calibration.record import CalibrationRecord
from planner.errors import PartitionLimitError
from planner.shell import command_text
from planner.slurm.partition import PartitionLimits
from planner.spec.run_spec import RunSpec


@dataclass(frozen=True)
class NodeCap:
    limit: int
    reason: str  # why, naming the setting or the partition fact to change


def node_caps(spec: RunSpec, partition: PartitionLimits | None, params: int) -> list[NodeCap]:
    """Every limit on the node count; ``params`` is the calibration's parameter count."""
    caps = []
    max_nodes = spec.plan.max_nodes
    if partition is None:
        if max_nodes:
            caps.append(NodeCap(max_nodes, f"plan.max_nodes is {max_nodes}"))
        else:
            n = spec.cluster.nodes
            caps.append(
                NodeCap(
                    n,
                    f"no partition limits were read (no Slurm here): without a partition the "
                    f"plan considers up to cluster.nodes ({n}); set cluster.nodes or "
                    f"plan.max_nodes",
                )
            )
    else:
        name = partition.name
        caps.append(
            NodeCap(partition.total_nodes, f"partition {name} has {partition.total_nodes} node(s)")
        )
        if partition.max_nodes is not None:
            caps.append(
                NodeCap(
                    partition.max_nodes, f"partition {name}'s MaxNodes is {partition.max_nodes}"
                )
            )
        if max_nodes:
            caps.append(NodeCap(max_nodes, f"plan.max_nodes is {max_nodes}"))
    if params <= 0:
        # No parameter count, no all-reduce size: more nodes than the spec asks for would look
        # free. A command reports it with jobs.report's Reporter.start(params=...).
        n = spec.cluster.nodes
        caps.append(
            NodeCap(
                n,
                f"the calibrated command reported no parameter count, so the all-reduce is "
                f"unknown and the plan keeps to cluster.nodes ({n}); report params "
                f"(Reporter.start(params=...)) to weigh more nodes",
            )
        )
    return caps


def tightest(caps: Sequence[NodeCap]) -> NodeCap:
    """The smallest limit (at least 1), every limit at that count named in its reason."""
    limit = max(1, min(cap.limit for cap in caps))
    reasons = [cap.reason for cap in caps if max(cap.limit, 1) == limit]
    return NodeCap(limit, "; ".join(dict.fromkeys(reasons)))


def node_cap(spec: RunSpec, partition: PartitionLimits | None, params: int) -> NodeCap:
    return tightest(node_caps(spec, partition, params))


def node_range(
    spec: RunSpec, record: CalibrationRecord, partition: PartitionLimits | None, forced: int | None
) -> MeasuredCap:
    """The most nodes the plan weighs and the note on what it held back; PartitionLimitError
    for a ``forced`` (--nodes) count outside the limits."""
    cap = node_cap(spec, partition, record.measurement.params)
    if forced is not None and not 1 <= forced <= cap.limit:
        raise PartitionLimitError(
            "--nodes", forced, f"must be between 1 and {cap.limit}: {cap.reason}", spec.source
        )
    return measured_cap(spec, record, cap.limit, forced)


@dataclass(frozen=True)
class MeasuredCap:
    limit: int  # the most nodes the plan considers
    note: str  # "" when nothing was held back


def measured_nodes(record: CalibrationRecord) -> int:
    """The largest node count the calibration ran."""
    if record.scaling is not None:
        return max(record.scaling.node_counts)
    return record.measurement.nodes


def measured_cap(
    spec: RunSpec, record: CalibrationRecord, limit: int, forced: int | None
) -> MeasuredCap:
    """``limit`` (the partition's and the spec's cap), held to the measured node counts unless
    the user forced a count or allowed unmeasured scaling."""
    measured = measured_nodes(record)
    if limit <= measured:
        return MeasuredCap(limit, "")
    calibrate = command_text(
        "plan-job", "calibrate", "SPEC", "--nodes", f"1,{measured + 1}", "--executor", "slurm"
    )
    measure = f"measure them with `{calibrate}`"
    if forced is not None:
        note = ""
        if forced > measured:
            note = (
                f"--nodes {forced}: scaling beyond the calibrated {measured} node(s) is "
                f"modelled, not measured; {measure}"
            )
        return MeasuredCap(limit, note)
    if spec.plan.allow_unmeasured_scaling:
        return MeasuredCap(
            limit,
            f"node counts above the calibrated {measured} are modelled, not measured "
            "(plan.allow_unmeasured_scaling)",
        )
    return MeasuredCap(
        measured,
        f"planned on the calibrated {measured} node(s) only: scaling to more (up to {limit}) "
        f"is modelled, not measured; {measure}, or set plan.allow_unmeasured_scaling: true "
        "to let the model choose them",
    )
