"""What a plan's node count and its hours are counted in: GPUs, or on a CPU-only spec
(cluster.gpus_per_node 0) one task per node with cluster.cpus_per_task CPUs.

The planner counts a CPU-only node as one "GPU" (one rank, one task), so Plan.gpu_hours is
node-hours there; the core-hours Slurm allocates are that times cpus_per_task. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.spec.run_spec import RunSpec


@dataclass(frozen=True)
class Units:
    cpu_only: bool
    per_node: int  # GPUs per node, or tasks per node on CPU (one rank each)
    cpus_per_task: int

    @property
    def device(self) -> str:
        return "CPU task" if self.cpu_only else "GPU"

    @property
    def devices(self) -> str:
        """A column header for the count of ranks."""
        return "tasks" if self.cpu_only else "GPUs"

    @property
    def hours(self) -> str:
        """What Plan.gpu_hours is in."""
        return "node-hours" if self.cpu_only else "GPU-hours"

    @property
    def hours_short(self) -> str:
        return "node-h" if self.cpu_only else "GPU-h"

    def shape(self, nodes: int) -> str:
        """2 nodes x 4 GPUs; 1 node x 1 CPU task of 2 CPUs."""
        each = _plural(self.per_node, self.device)
        cpus = f" of {self.task_cpus}" if self.cpu_only else ""
        return f"{_plural(nodes, 'node')} x {each}{cpus}"

    @property
    def task_cpus(self) -> str:
        return _plural(self.cpus_per_task, "CPU")

    def core_hours(self, gpu_hours: float) -> float:
        """Plan.gpu_hours of a CPU-only plan in the cores the jobs hold."""
        return gpu_hours * self.cpus_per_task

    def reword(self, text: str) -> str:
        """The planner writes its reasons in GPU terms ("fewest GPU-hours ..."); on CPU they
        are node-hours."""
        return text.replace("GPU-hours", self.hours) if self.cpu_only else text

    def to_dict(self) -> dict[str, object]:
        """For --json: the unit of the stable ``gpus`` and ``gpu_hours`` keys."""
        return {
            "device": "cpu" if self.cpu_only else "gpu",
            "per_node": self.per_node,
            "cpus_per_task": self.cpus_per_task,
            "gpus_counts": "tasks" if self.cpu_only else "GPUs",
            "gpu_hours_unit": self.hours,
        }


def units_of(spec: RunSpec) -> Units:
    cluster = spec.cluster
    cpu_only = cluster.gpus_per_node == 0
    return Units(cpu_only, max(cluster.gpus_per_node, 1), cluster.cpus_per_task)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")
