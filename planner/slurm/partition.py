"""A Slurm partition's limits, read from scontrol and sinfo: what a plan has to fit in.

`scontrol -o show partition` gives MaxTime, DefaultTime, MaxNodes and TotalNodes on one line
of Key=Value pairs; `sinfo -h -N -p NAME -o "%N %c %G"` gives each node's CPUs and GRES, from
which the smallest node decides: a job asking for G GPUs per node must fit every node it may
be given. Torch-free; every command goes through planner.shell.run_command.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from planner.errors import CommandError, PartitionLimitError, SpecError
from planner.shell import CommandResult, run_command
from planner.slurm.client import READ_TIMEOUT_S, classify
from planner.spec.run_spec import RunSpec

Runner = Callable[[Sequence[str]], CommandResult]

SINFO_FORMAT = "%N %c %G"
# Slurm prints these where a limit is not set.
_NO_LIMIT = ("UNLIMITED", "INFINITE", "NONE")
# [days-]a[:b[:c]]; which of a, b, c are hours, minutes or seconds depends on the day part.
_DURATION_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_DURATION_FORMATS = (
    "minutes, minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes, "
    "days-hours:minutes:seconds, or UNLIMITED"
)


@dataclass(frozen=True)
class PartitionLimits:
    name: str
    max_time_s: int | None  # None: UNLIMITED
    default_time_s: int | None  # None: not set (a job without --time gets MaxTime)
    max_nodes: int | None  # per job; None: UNLIMITED
    total_nodes: int
    gpus_per_node: int  # smallest GRES gpu count over the partition's nodes, 0 if none
    cpus_per_node: int  # smallest over the partition's nodes

    @property
    def max_time_minutes(self) -> int | None:
        # --time is given in whole minutes; never round a limit up past the partition's.
        return None if self.max_time_s is None else self.max_time_s // 60


@dataclass(frozen=True)
class NodeInfo:
    name: str
    cpus: int
    gpus: int


def parse_slurm_duration(text: str, field: str = "time") -> int | None:
    """Seconds in a Slurm time string, None for UNLIMITED/INFINITE/NONE.

    Slurm's formats (sbatch(1) --time): "M", "M:S", "H:M:S", "D-H", "D-H:M", "D-H:M:S".
    """
    value = text.strip()
    if value.upper() in _NO_LIMIT:
        return None
    match = _DURATION_RE.match(value)
    if not match:
        raise SpecError(field, text, f"not a Slurm duration; expected {_DURATION_FORMATS}")
    days, a, b, c = match.groups()
    if days is not None:
        hours, minutes, seconds = int(a), int(b or 0), int(c or 0)
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if c is not None:  # H:M:S
        return (int(a) * 60 + int(b)) * 60 + int(c)
    return int(a) * 60 + int(b or 0)  # M or M:S


def parse_scontrol_partitions(text: str) -> list[dict[str, str]]:
    """One dict per partition line of `scontrol -o show partition`."""
    partitions = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = {}
        for token in line.split():
            key, sep, value = token.partition("=")  # TRES=cpu=4,... keeps its own "="
            if sep:
                fields[key] = value
        if "PartitionName" in fields:
            partitions.append(fields)
    return partitions


def gres_gpu_count(gres: str) -> int:
    """GPUs in a node's GRES: "gpu:2" -> 2, "gpu:h100:8(S:0-1)" -> 8, "(null)" -> 0.

    Several entries ("gpu:a100:2,gpu:v100:2,shard:8") add up over the gpu ones.
    """
    total = 0
    for item in _split_outside_parentheses(gres.strip()):
        item = re.sub(r"\(.*\)$", "", item)  # socket binding "(S:0-1)" or "(IDX:0-3)"
        parts = item.split(":")
        if parts[0] != "gpu":
            continue
        count = parts[-1] if len(parts) > 1 else "1"
        # "gpu:h100" without a count means one, as in a --gres request.
        total += int(count) if count.isdigit() else 1
    return total


def parse_sinfo_nodes(text: str) -> list[NodeInfo]:
    """Nodes of `sinfo -h -N -p NAME -o "%N %c %G"`, each once."""
    nodes: dict[str, NodeInfo] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or not parts[1].rstrip("+").isdigit():
            raise SpecError("sinfo output", line, f"expected '{SINFO_FORMAT}' fields")
        name, cpus, gres = parts
        nodes.setdefault(name, NodeInfo(name, int(cpus.rstrip("+")), gres_gpu_count(gres)))
    return list(nodes.values())


def limits_from(fields: dict[str, str], nodes: Sequence[NodeInfo]) -> PartitionLimits:
    """PartitionLimits from one parsed scontrol line and the partition's sinfo nodes."""
    name = fields["PartitionName"]
    max_nodes = fields.get("MaxNodes", "UNLIMITED")
    total = fields.get("TotalNodes")
    return PartitionLimits(
        name=name,
        max_time_s=parse_slurm_duration(fields.get("MaxTime", "UNLIMITED"), f"{name} MaxTime"),
        default_time_s=parse_slurm_duration(
            fields.get("DefaultTime", "NONE"), f"{name} DefaultTime"
        ),
        max_nodes=int(max_nodes) if max_nodes.isdigit() else None,
        total_nodes=int(total) if total and total.isdigit() else len(nodes),
        gpus_per_node=min((n.gpus for n in nodes), default=0),
        cpus_per_node=min((n.cpus for n in nodes), default=0),
    )


def read_partition(name: str | None, runner: Runner | None = None) -> PartitionLimits:
    """The limits of partition ``name``, or of the cluster's default partition when None.

    SlurmUnavailableError (ControllerUnreachableError) when the client cannot run or its
    controller does not answer: planner.slurm.client."""
    run = runner or _read
    partitions = _scontrol(run, name)
    if name is None:
        defaults = [p for p in partitions if p.get("Default") == "YES"]
        if not defaults:
            names = ", ".join(p["PartitionName"] for p in partitions) or "none"
            raise SpecError(
                "cluster.partition",
                None,
                f"this cluster has no default partition; name one of: {names}",
            )
        fields = defaults[0]
    else:
        matching = [p for p in partitions if p["PartitionName"] == name]
        if not matching:
            raise _unknown_partition(run, name)
        fields = matching[0]
    part = fields["PartitionName"]
    sinfo = _call(run, ["sinfo", "-h", "-N", "-p", part, "-o", SINFO_FORMAT])
    nodes = parse_sinfo_nodes(sinfo.stdout)
    if not nodes:
        raise SpecError("cluster.partition", part, "sinfo lists no nodes in this partition")
    return limits_from(fields, nodes)


def check_partition(spec: RunSpec, partition: PartitionLimits | None) -> None:
    """The spec's cluster section must fit the partition's nodes."""
    if partition is None:
        return
    cluster, name = spec.cluster, partition.name
    most = min(partition.total_nodes, partition.max_nodes or partition.total_nodes)
    checks = [
        ("cluster.nodes", cluster.nodes, most, f"partition {name} allows {most} nodes per job"),
        (
            "cluster.gpus_per_node",
            cluster.gpus_per_node,
            partition.gpus_per_node,
            f"partition {name}'s nodes have {partition.gpus_per_node} GPUs (smallest GRES)",
        ),
        (
            "cluster.cpus_per_task",
            cluster.cpus_per_task,
            partition.cpus_per_node,
            f"partition {name}'s nodes have {partition.cpus_per_node} CPUs",
        ),
    ]
    for field, value, allowed, text in checks:
        if value > allowed:
            raise PartitionLimitError(field, value, f"at most {allowed}: {text}", spec.source)


def _scontrol(run: Runner, name: str | None) -> list[dict[str, str]]:
    argv = ["scontrol", "-o", "show", "partition"] + ([name] if name else [])
    try:
        return parse_scontrol_partitions(_call(run, argv).stdout)
    except CommandError as exc:
        if name is None:
            raise
        # Asked again for the list of partitions: a dead controller was already raised by
        # _call as SlurmUnavailableError, so this costs no second retry loop.
        raise _unknown_partition(run, name) from exc


def _unknown_partition(run: Runner, name: str) -> SpecError:
    listing = _call(run, ["scontrol", "-o", "show", "partition"])
    names = ", ".join(p["PartitionName"] for p in parse_scontrol_partitions(listing.stdout))
    return SpecError("cluster.partition", name, f"no such partition; this cluster has: {names}")


def _read(argv: Sequence[str]) -> CommandResult:
    return run_command(argv, timeout=READ_TIMEOUT_S)


def _call(run: Runner, argv: list[str]) -> CommandResult:
    try:
        return run(argv)
    except CommandError as exc:
        unavailable = classify(
            exc, "run plan-job on the cluster's login node to read the partition's limits"
        )
        if unavailable is not None:
            raise unavailable from exc
        raise


def _split_outside_parentheses(text: str) -> list[str]:
    items, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return [item for item in items if item]
