"""The one mapping from the spec's cluster settings and a job's shape to Slurm options.

Both ways plan-job asks Slurm for a job read it: the calibration's submitit executor
(planner.slurm.submission, submitit's parameter names) and the run's #SBATCH lines
(planner.runs.emit, sbatch's long option names). A new cluster setting is one row of
CLUSTER_SETTINGS, so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from planner.spec.run_spec import ClusterSpec

# submitit 1.5 has no parameter for these: it writes them from additional_parameters.
_SUBMITIT_ADDITIONAL = "additional_parameters"


@dataclass(frozen=True)
class ClusterSetting:
    """One optional cluster.* field passed to Slurm as it is written."""

    field: str  # ClusterSpec's attribute, and the spec's key under cluster
    sbatch: str  # sbatch's long option, without the dashes
    submitit: str | None  # submitit.SlurmExecutor's parameter; None: additional_parameters


# In the order the #SBATCH lines list them (before the job's shape).
CLUSTER_SETTINGS = (
    ClusterSetting("partition", "partition", "partition"),
    ClusterSetting("account", "account", "account"),
    ClusterSetting("qos", "qos", "qos"),
    ClusterSetting("constraint", "constraint", "constraint"),
    ClusterSetting("reservation", "reservation", None),
)


@dataclass(frozen=True)
class JobShape:
    """How many nodes, ranks and GPUs one job asks for."""

    nodes: int
    tasks_per_node: int
    gpus_per_node: int  # the gres count per node; 0: no GPU asked for


@dataclass(frozen=True)
class SlurmOption:
    sbatch: str  # sbatch's long option, without the dashes
    submitit: str | None  # submitit's parameter; None: one of its additional_parameters
    value: str | int


def job_options(cluster: ClusterSpec, shape: JobShape) -> tuple[SlurmOption, ...]:
    """The cluster's settings and the job's shape as Slurm options, in #SBATCH order (the
    time limit, signal and output, which differ between a calibration and a segment, are
    the caller's)."""
    options = [
        SlurmOption(setting.sbatch, setting.submitit, value)
        for setting in CLUSTER_SETTINGS
        for value in [getattr(cluster, setting.field)]
        if value is not None
    ]
    options += [
        SlurmOption("nodes", "nodes", shape.nodes),
        SlurmOption("ntasks-per-node", "ntasks_per_node", shape.tasks_per_node),
        SlurmOption("cpus-per-task", "cpus_per_task", cluster.cpus_per_task),
    ]
    if shape.gpus_per_node > 0:
        options.append(SlurmOption("gres", "gres", f"gpu:{shape.gpus_per_node}"))
    if cluster.mem is not None:
        options.append(SlurmOption("mem", "mem", cluster.mem))
    return tuple(options)


def sbatch_lines(options: tuple[SlurmOption, ...]) -> list[tuple[str, str]]:
    """(option, value) pairs for the template's #SBATCH lines."""
    return [(option.sbatch, str(option.value)) for option in options]


def submitit_parameters(options: tuple[SlurmOption, ...]) -> dict[str, Any]:
    """submitit.SlurmExecutor.update_parameters' keywords for the same options (submitit
    quotes every value with shlex.quote when it writes its #SBATCH lines)."""
    parameters: dict[str, Any] = {}
    additional: dict[str, str | int] = {}
    for option in options:
        if option.submitit is None:
            additional[option.sbatch] = option.value
        else:
            parameters[option.submitit] = option.value
    if additional:
        parameters[_SUBMITIT_ADDITIONAL] = additional
    return parameters
