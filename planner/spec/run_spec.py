"""The run spec's dataclasses: what to train, on how much data, with which batch, on which
cluster, how to calibrate and plan it. Frozen; planner.spec.load fills them from YAML and
validates every field, so nothing downstream falls back to config on its own. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from jobs.workloads.registry import BUILTIN

COMMAND_WORKLOAD = "command"  # the workload name of a run that trains with command.run
HANG_MODES = ("auto", "off")  # plan.hang_timeouts


@dataclass(frozen=True)
class WorkloadSpec:
    name: str  # built-in name, "custom" for a user function, COMMAND_WORKLOAD for a command
    preset: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    function: str | None = None  # "module:function" for a user workload
    # torch.compile the model (nn.Module.compile) in the calibration and the training alike.
    compile: bool = False

    @property
    def builder_path(self) -> str:
        if self.function:
            return self.function
        return BUILTIN[self.name].builder_path if self.name in BUILTIN else ""


@dataclass(frozen=True)
class CommandSpec:
    """The user's own training command, run as it is (jobs.contract.command_fields)."""

    run: str  # as written in the spec
    argv: tuple[str, ...]  # run, split once on the login node
    report: str = "progress"  # one of REPORT_MODES
    output_dir: str | None = None  # the Trainer's output_dir (report: trainer_state)
    stop_grace_s: float = 30.0  # after the stop signal, before the command is killed


@dataclass(frozen=True)
class DataSpec:
    samples: int | None  # exactly one of samples / tokens is set
    tokens: int | None
    epochs: float = 1.0


@dataclass(frozen=True)
class BatchSpec:
    global_batch: int  # samples per optimizer step, all GPUs together
    micro_batch: int  # samples per forward/backward on one GPU
    grad_accum: int  # micro-batches per optimizer step on one GPU


@dataclass(frozen=True)
class ClusterSpec:
    partition: str | None = None
    nodes: int = 1
    gpus_per_node: int = 1
    cpus_per_task: int = 1
    mem: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None  # sbatch --constraint: node features the job needs
    reservation: str | None = None  # sbatch --reservation: run inside this reservation
    gpu_type: str | None = None  # for the peak FLOP/s when the device cannot tell

    @property
    def gpus(self) -> int:
        return self.nodes * max(self.gpus_per_node, 1)


@dataclass(frozen=True)
class CheckpointSpec:
    dir: str = "checkpoints"
    interval_steps: int | None = None  # None: the plan chooses (Young/Daly)
    keep: int = 2


@dataclass(frozen=True)
class CalibrationSpec:
    executor: str = "local"
    device: str = "auto"
    min_steps: int = 20  # steady steps needed before the CI may stop the run
    max_steps: int = 300
    max_seconds: float = 90.0
    target_ci: float = 0.02  # 95% CI half-width / mean of the steady step time
    time_limit_minutes: int = 10  # --time of the calibration job
    pending_timeout_s: float = 600.0
    peak_tflops: float | None = None  # overrides the device table for MFU
    seed: int = 0
    # One calibration job per node count, smallest first; more than one count (or a count
    # above 1) fits the inter-node all-reduce the plan extrapolates with
    # (planner.scaling.fit).
    nodes: tuple[int, ...] = (1,)
    # Ranks per node of a data-parallel calibration; None: cluster.gpus_per_node (at least 1)
    # once several ranks run, while the default single-node calibration times one device.
    tasks_per_node: int | None = None

    def resolved_tasks_per_node(self, gpus_per_node: int) -> int:
        """Ranks per node each calibration job starts."""
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        if self.nodes == (1,):
            return 1  # the one-device calibration every record before scaling was made with
        return max(gpus_per_node, 1)


CHOOSE_BY = ("finish", "run")


@dataclass(frozen=True)
class PlanSpec:
    deadline_hours: float | None = None  # the P95 wall time must fit; None: fastest efficient
    efficiency_floor: float = 0.8  # without a deadline: fastest node count at least this efficient
    max_nodes: int | None = None  # cap on the node counts considered
    # Inter-node all-reduce bandwidth per node, GB/s each way. 100 = 4 x 200 Gb/s HDR
    # InfiniBand line rate, a common A100-era fabric (DGX A100 has 8 x 200 Gb/s, DGX H100
    # 8 x 400 Gb/s). Measure yours: nccl-tests all_reduce_perf busbw across two nodes.
    interconnect_gbps: float = 100.0
    # Within a node, GB/s each way per GPU. 300 = NVLink 3 (A100 SXM, 600 GB/s both ways,
    # NVIDIA datasheet); H100/H200 SXM NVLink 4 is 450; PCIe 4.0 x16 cards ~ 25 (32 line rate).
    intranode_gbps: float = 300.0
    # Fixed cost per optimizer step across nodes: DDP issues one all-reduce per 25 MB bucket
    # and each pays tens of µs of ring latency over InfiniBand; 1 ms covers a few dozen.
    allreduce_latency_s: float = 1e-3
    mtbf_hours: float | None = None  # of the whole job; None: from interruptions_per_gpu_day
    # Llama 3 (Meta 2024, sec. 3.3.4): 419 unexpected interruptions in 54 days on 16,384 H100s.
    interruptions_per_gpu_day: float = 4.7e-4
    # Relative sigma of throughput from one job (or node set) to the next. An assumption, the
    # size of the calibration's own default CI target: set it from two calibrations.
    run_to_run_spread: float = 0.02
    gpu_hour_cost: float | None = None  # any currency; None: no cost column
    # The facility's power usage effectiveness: its power over the IT equipment's. Scales the
    # GPUs' measured energy to what the site draws (1.0: the GPUs alone).
    pue: float = 1.0
    # Evaluate every N steps (the training runs it, the calibration times one); None: never.
    eval_interval_steps: int | None = None
    eval_batches: int = 10  # held-out micro-batches one evaluation runs
    eval_s: float | None = None  # seconds one evaluation takes; None: the calibration's
    # Let the plan choose node counts beyond those the calibration measured, from the
    # network model (plan.interconnect_gbps ...) or the fit's extrapolation.
    allow_unmeasured_scaling: bool = False
    # How the node count is chosen: by the earliest finish (queue wait + run + the waits
    # between segments) or by the run time alone; None: "finish" when Slurm answers, else
    # "run" (CHOOSE_BY).
    choose_by: str | None = None
    # Days of the partition's accounting (sacct) the waits between segments are read from.
    queue_history_days: int = 14
    # The training's hang watchdog (jobs.node.watchdog): each phase may take this many times
    # its calibrated time (the step: its P99) before the rank is taken for hung.
    hang_factor: float = 5.0
    hang_timeouts: str = "auto"  # one of HANG_MODES: "off" writes no timeouts into train.json
    # Segments in a row without progress after which the next one cancels the rest of the
    # chain (jobs.node.chain_guard); 0: never.
    max_stalled_segments: int = 2


@dataclass(frozen=True)
class RunSpec:
    name: str
    workload: WorkloadSpec
    data: DataSpec
    batch: BatchSpec
    precision: str
    cluster: ClusterSpec
    checkpoint: CheckpointSpec
    calibration: CalibrationSpec
    source: str | None = None  # the file it came from, for messages
    plan: PlanSpec = field(default_factory=PlanSpec)
    command: CommandSpec | None = None  # the user's own training command, else the workload's
    # What reading the spec changed and the user should be told (a `~` expanded): not a
    # setting, so neither compared nor saved.
    notes: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("source")
        out.pop("notes")
        out["workload"]["overrides"] = dict(self.workload.overrides)
        if not self.workload.compile:
            # Records and step fingerprints written before workload.compile read the same.
            out["workload"].pop("compile")
        if self.command is None:
            out.pop("command")  # records written before commands existed read the same
        else:
            out["command"].pop("argv")  # follows from run
        return out

    def step_fingerprint(self) -> str:
        """Hash of what decides one device's step time; a calibration matches a plan by it."""
        key = {
            "workload": self.to_dict()["workload"],
            "micro_batch": self.batch.micro_batch,
            "grad_accum": self.batch.grad_accum,
            "precision": self.precision,
        }
        if self.command is not None:
            key["command"] = {"run": self.command.run, "report": self.command.report}
        blob = json.dumps(key, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
