"""A training plan: how long, on how many nodes, cut into which Slurm jobs. Frozen data only.

The library (planner.model.planning.make_plan) fills these; the report and the sbatch emitter read
them, so the names here are a contract. So is Plan.to_dict(), which a run folder keeps as
plan.yaml: Plan.from_dict reads it back whole (resubmit renders new segments with it), and
PlanFacts.from_plan_dict reads only the numbers the ETA needs, from any version's. Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from planner.slurm.partition import PartitionLimits
from planner.spec.load import parse_spec
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
    energy_kwh: float | None = None  # at the P50 wall time (planner.model.energy); None: unknown
    # Time to result (planner.model.queue_finish), when Slurm was asked: the first segment's
    # start as Slurm estimates it ("ok", "unknown", "never"), the finish P50/P95 (Unix
    # seconds) and why one is unknown.
    start_status: str | None = None
    start_time: float | None = None
    finish_p50: float | None = None
    finish_p95: float | None = None
    queue_note: str = ""


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
    checkpoint: CheckpointChoice  # the interval is stored here only (checkpoint_interval_*)
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
    # What the all-reduce across nodes comes from (planner.scaling.fit.describe_fit) and how
    # far the chosen node count lies beyond the measured ones; "": a one-device calibration.
    scaling_model: str = ""
    extrapolation: str = ""
    # The history's step correction at the chosen node count (1.0: none), and one line each
    # on what the plan rests on beyond its calibration (planner.model.plan_limits).
    step_correction: float = 1.0
    notes: tuple[str, ...] = ()
    # What the history's coverage widened the P95 by (planner.model.coverage; 1.0: not).
    p95_widening: float = 1.0
    # workload.compile: what compiling costs each job that starts (also in resume_s), and
    # the steps term at the calibration's eager step instead (0.0: eager, or not measured).
    compile_s: float = 0.0
    eager_steps_s: float = 0.0
    # What the training's hang watchdog is set from (planner.runs.hang_timeouts): the P99
    # optimizer step at the chosen node count (step_s times the calibration's P99 over its
    # mean) and what that P99 is; a job's process start-up to its first step; the measured
    # checkpoint load and size. 0 / '': a plan.yaml from before they were kept.
    step_p99_s: float = 0.0
    step_p99_source: str = ""
    process_startup_s: float = 0.0
    checkpoint_load_s: float = 0.0
    checkpoint_bytes: int = 0
    # The GPUs' energy at the P50 wall time with plan.pue, from the calibration's measured
    # power per GPU (planner.model.energy); None: unknown, and energy_note says why.
    energy_kwh: float | None = None
    power_w: float | None = None
    energy_note: str = ""
    # The calibration's compile with the graph already cached, and what its cold one found
    # (jobs.contract.measurement): shown beside compile_s, which every job is charged.
    compile_warm_s: float = 0.0
    compile_cache: str = ""
    # Time to result (planner.model.queue_finish): when the queue was asked (None: it was
    # not: no Slurm, or a plan.yaml from before), the chosen node count's first start and
    # finish P50/P95 (Unix seconds), the waits between its segments and where they come
    # from, how long Slurm's answers took, the rule that chose (plan.choose_by) and the other
    # rule's different winner; queue_note says why the queue is unknown.
    queue_checked_at: float | None = None
    queue_took_s: float | None = None
    queue_asked: int = 0  # --test-only asks in queue_took_s (0: a plan.yaml from before)
    queue_note: str = ""
    start_time: float | None = None
    finish_p50: float | None = None
    finish_p95: float | None = None
    wait_median_s: float | None = None
    wait_p90_s: float | None = None
    wait_p95_s: float | None = None  # the same jobs' P95, for the history's coverage
    wait_jobs: int = 0
    wait_source: str = ""
    choose_by: str = "run"
    choice_other: str = ""
    # The first segment's --time weighed against a shorter one that Slurm would start sooner
    # (planner.model.segment_length): which was chosen and why; "": not weighed.
    segment_length: str = ""

    @property
    def gpus(self) -> int:
        return self.nodes * max(self.gpus_per_node, 1)

    @property
    def checkpoint_interval_steps(self) -> int:
        return self.checkpoint.interval_steps

    @property
    def checkpoint_interval_s(self) -> float:
        return self.checkpoint.interval_s

    @property
    def signal_option(self) -> str:
        return f"B:{self.signal}@{self.signal_lead_s}"

    def to_dict(self) -> dict[str, Any]:
        """Plain builtins only (lists, dicts, numbers, strings) for yaml.safe_dump."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["spec"] = self.spec.to_dict()
        out["partition"] = dataclasses.asdict(self.partition) if self.partition else None
        return _plain(out)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str) -> Plan:
        """The plan to_dict() gave; TypeError, KeyError or ValueError when ``raw`` lacks a
        field or has one of the wrong shape, PlanJobError when its spec no longer validates."""
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {k: v for k, v in raw.items() if k in known}
        values["spec"] = parse_spec(raw["spec"], source=f"{source} (spec)")
        for name, nested in _NESTED.items():
            values[name] = _build(nested, raw[name])
        for name, item_cls in _SEQUENCES.items():
            values[name] = tuple(_build(item_cls, item) for item in raw.get(name) or [])
        values["notes"] = tuple(str(note) for note in raw.get("notes") or ())
        partition = raw.get("partition")
        values["partition"] = _build(PartitionLimits, partition) if partition else None
        return cls(**values)


@dataclass(frozen=True)
class PlanFacts:
    """What the ETA reads from a run folder's plan.yaml (fields of Plan)."""

    total_steps: int | None
    checkpoint_interval_steps: int | None
    save_s: float | None
    resume_s: float | None  # start-up, checkpoint load and warm-up, per segment after the first
    signal_lead_s: float | None
    segment_limits_s: tuple[int, ...]  # each segment's --time
    run_to_run_spread: float | None
    warmup_s: float | None = None  # the calibration's warm-up beyond steady, in resume_s
    compile_s: float | None = None  # workload.compile: each job's compile, in resume_s
    partition: str | None = None  # where the waits between segments are read (sacct)
    nodes: int | None = None  # the chain's node count, whose waits are read
    queue_history_days: int | None = None  # plan.queue_history_days

    @classmethod
    def from_plan_dict(cls, raw: Mapping[str, Any]) -> PlanFacts:
        """From Plan.to_dict()'s output, taking what is there: a missing or odd field is None."""
        checkpoint = raw.get("checkpoint") or {}
        spec_plan = (raw.get("spec") or {}).get("plan") or {}
        return cls(
            total_steps=_int(raw.get("total_steps")),
            # plan.yaml before the interval was stored once had it at the top level too.
            checkpoint_interval_steps=_int(
                checkpoint.get("interval_steps", raw.get("checkpoint_interval_steps"))
            ),
            save_s=_float(checkpoint.get("save_s")),
            resume_s=_float(raw.get("resume_s")),
            signal_lead_s=_float(raw.get("signal_lead_s")),
            segment_limits_s=tuple(
                int(s["time_limit_minutes"]) * 60
                for s in raw.get("segments") or []
                if isinstance(s, dict) and _int(s.get("time_limit_minutes"))
            ),
            run_to_run_spread=_float(spec_plan.get("run_to_run_spread")),
            warmup_s=_float((raw.get("wall") or {}).get("warmup_s")),
            compile_s=_float(raw.get("compile_s")),
            partition=_partition_name(raw),
            nodes=_int(raw.get("nodes")),
            queue_history_days=_int(spec_plan.get("queue_history_days")),
        )


_NESTED: dict[str, type] = {
    "wall": TimeEstimate,
    "checkpoint": CheckpointChoice,
    "baselines": Baselines,
}
_SEQUENCES: dict[str, type] = {"segments": Segment, "options": NodeOption}


def _build(cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise TypeError(f"{cls.__name__}: expected a mapping, got {type(raw).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in names})


def _partition_name(raw: Mapping[str, Any]) -> str | None:
    """The partition the plan read, else the spec's cluster.partition."""
    partition = raw.get("partition")
    if isinstance(partition, dict) and isinstance(partition.get("name"), str):
        return str(partition["name"])
    cluster = (raw.get("spec") or {}).get("cluster") or {}
    name = cluster.get("partition") if isinstance(cluster, dict) else None
    return name if isinstance(name, str) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    finite = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if finite and math.isfinite(value) else None


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
