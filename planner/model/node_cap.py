"""The most nodes a plan weighs, and which limit set it: `--nodes 2` refused with "between 1
and 1" must say whether the partition, the spec or the missing Slurm is why.

Each limit is a NodeCap (count, reason); the plan takes the tightest. A new limit joins by
adding its NodeCap to the list node_caps returns. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
