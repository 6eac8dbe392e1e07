"""A training plan: how long, on how many nodes, cut into which Slurm jobs. Frozen data only.

The library (planner.model.planning.make_plan) fills these; the report and the sbatch emitter read
them, so the names here are a contract. Torch-free.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from planner.slurm.partition import PartitionLimits
from planner.spec.run_spec import RunSpec

# USR2, not USR1 or TERM: PyTorch Lightning's SLURMEnvironment traps SIGUSR1 for its own
# auto-requeue, and SIGTERM is what Slurm sends at the time limit and what torchrun/elastic
# uses to tear its workers down, so either would be claimed twice. NCCL does not use SIGUSR2.
# submitit also uses USR2, but the scripts we emit do not run under submitit.
SIGNAL = "USR2"
# Slurm may deliver --signal up to 60 s before the requested lead (its timer's resolution).
SIGNAL_SLACK_S = 60
# Between the signal's latest arrival and the limit beyond one step and one save: the process
# exit and Slurm's clean-up.
SIGNAL_MARGIN_S = 10
# One-sided 95% quantile of the normal distribution.
Z95 = 1.6448536269514722


@dataclass(frozen=True)
class TimeEstimate:
    """Wall time of the whole run; the P50 is the sum of the terms below."""

    p50_s: float
    p95_s: float
    sigma_s: float  # one sigma of the total: calibration CI, run-to-run spread, step noise
    startup_s: float  # first job: script and srun, process start to first step, exit
    warmup_s: float  # warm-up steps' time beyond the steady mean
    steps_s: float  # optimizer steps at the P50 step time
    checkpoints_s: float  # periodic saves, one per segment boundary, the first job's probe
    evals_s: float
    resumes_s: float  # per extra segment: start-up, checkpoint load and warm-up
    failures_s: float  # expected cost of interruptions: lost work plus restart
    # workload.compile: every job's compile (the later jobs' is not in resumes_s); 0: eager
    compile_s: float = 0.0


@dataclass(frozen=True)
class CheckpointChoice:
    interval_steps: int
    interval_s: float  # at the P50 step time
    method: str  # "daly" or "user" (checkpoint.interval_steps)
    save_s: float  # measured by the calibration
    mtbf_s: float  # of the whole job
    mtbf_source: str
    daly_s: float  # optimal compute time between saves (Daly 2006)
    young_s: float  # first-order optimum sqrt(2 d M) (Young 1974), for comparison
    overhead: float  # expected fraction of the compute time: saves, lost work, restarts
    expected_failures: float  # over the P50 wall time


@dataclass(frozen=True)
class Segment:
    """One sbatch job of a chain (afterany); the last may not be needed at P50."""

    index: int  # 1-based
    time_limit_minutes: int  # --time
    time_min_minutes: int  # --time-min: P50 time of the steps this segment is planned for
    steps_p50: int  # steps it is expected to run at the P50 speed when given its full --time
    steps_planned: int  # its share at the P95 speed, which the --time is sized for


@dataclass(frozen=True)
class NodeOption:
    nodes: int
    gpus: int
    feasible: bool
    reason: str  # why it is infeasible or not chosen; "chosen: ..." for the choice
    chosen: bool = False
    grad_accum: int | None = None
    step_s: float | None = None  # P50 optimizer step, compute plus communication
    comm_s: float | None = None
    efficiency: float | None = None  # throughput / (nodes x one node's throughput)
    wall_p50_s: float | None = None
    wall_p95_s: float | None = None
    segments: int | None = None
    gpu_hours: float | None = None  # at the P50 wall time
    cost: float | None = None  # gpu_hours x plan.gpu_hour_cost
    # A node count a multi-node calibration ran: its efficiency and step from the jobs.
    measured_efficiency: float | None = None
    measured_step_s: float | None = None


@dataclass(frozen=True)
class Baselines:
    """The two estimates people make without a planner, for the chosen node count."""

    mini_steps: int  # K: the calibration's steps, the "mini epoch"
    mini_s: float  # its time including start-up and warm-up
    method1_s: float  # mini_s scaled by the run's steps in calibration units / K
    flops_total: float  # training FLOPs of all samples (all GPUs)
    flops_per_gpu_s: float  # achieved FLOP/s per GPU the FLOP estimate divides by
    flops_rate_source: str
    flops_s: float  # flops_total / (GPUs x flops_per_gpu_s): no start-up, saves, communication


@dataclass(frozen=True)
class Plan:
    spec: RunSpec
    calibration_path: str
    fingerprint: str  # the calibration record's step fingerprint
    total_steps: int
    samples_total: int
    tokens_total: int
    token_unit: str
    nodes: int
    gpus_per_node: int
    grad_accum: int
    step_s: float  # P50 optimizer step at the chosen node count
    step_p95_s: float
    efficiency: float
    wall: TimeEstimate
    checkpoint: CheckpointChoice
    checkpoint_interval_steps: int
    checkpoint_interval_s: float
    signal: str
    signal_lead_s: int  # --signal=B:USR2@lead: one P95 step, one save and SIGNAL_MARGIN_S
    resume_s: float  # start-up, checkpoint load and warm-up: every segment after the first
    partition: PartitionLimits | None
    segments: tuple[Segment, ...]
    options: tuple[NodeOption, ...]
    baselines: Baselines
    deadline_hours: float | None
    choice_reason: str
    gpu_hours: float  # at the P50 wall time
    cost: float | None
    eval_s: float = 0.0  # one evaluation (plan.eval_s, else the calibration's); 0: none
    # What the all-reduce across nodes comes from (planner.model.scaling_fit.describe_fit) and how
    # far the chosen node count lies beyond the measured ones; "": a one-device calibration.
    scaling_model: str = ""
    extrapolation: str = ""
    # The history's step correction at the chosen node count (1.0: none), and one line each
    # on what the plan rests on beyond its calibration (planner.model.plan_limits).
    step_correction: float = 1.0
    notes: tuple[str, ...] = ()
    # workload.compile: what compiling costs each job that starts (also in resume_s), and
    # the steps term at the calibration's eager step instead (0.0: eager, or not measured).
    compile_s: float = 0.0
    eager_steps_s: float = 0.0

    @property
    def gpus(self) -> int:
        return self.nodes * max(self.gpus_per_node, 1)

    @property
    def signal_option(self) -> str:
        return f"B:{self.signal}@{self.signal_lead_s}"

    def to_dict(self) -> dict[str, Any]:
        """Plain builtins only (lists, dicts, numbers, strings) for yaml.safe_dump."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["spec"] = self.spec.to_dict()
        out["partition"] = dataclasses.asdict(self.partition) if self.partition else None
        return _plain(out)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
