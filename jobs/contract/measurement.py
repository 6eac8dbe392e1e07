"""What the login node sends to a calibration job, and what comes back. Torch-free.

Both travel through submitit's pickles, so they are plain frozen dataclasses of builtins. The
work to calibrate is a jobs.contract.work.Work, the same as a training run's train.json
holds. A failure comes back as a failure line instead (jobs.contract.failure).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobs.contract.work import Work, split_work

# Set by the calibration job's batch script to its own start (Unix seconds): the harness
# measures how long the script and srun took to start the process.
JOB_START_ENV = "PLANJOB_JOB_START"
# The calibration job's batch script writes its end (Unix seconds) to this file in the job's
# folder, so the login node can tell how long the process took to exit and the job to end.
JOB_END_FILE = "job-end-{job_id}"

# "exited": a user's command (jobs.calibration.command) ended by itself after enough steps.
STOP_REASONS = ("ci_target", "step_cap", "time_cap", "exited")


@dataclass(frozen=True)
class CalibrationRequest:
    work: Work  # what to calibrate: the workload or the user's command, batch, precision, device
    min_steps: int
    max_steps: int
    max_seconds: float
    target_ci: float
    scratch_dir: str  # where the checkpoint probe is written (the run's checkpoint filesystem)
    progress_path: str | None = None  # JSONL the CLI tails to show live progress
    eval_batches: int = 0  # held-out batches of the one evaluation timed; 0: none
    workdir: str = ""  # a command's working directory ('' : the job's)
    checkpoint_interval_steps: int = 0  # a command saves this often; 0: the harness picks

    @classmethod
    def from_flat(cls, fields: Mapping[str, Any]) -> CalibrationRequest:
        """From the work's fields and the request's side by side (as they were before the
        request embedded a Work)."""
        work, rest = split_work(fields)
        return cls(work=work, **rest)


@dataclass(frozen=True)
class Measurement:
    # where it ran
    host: str
    device_kind: str  # cpu | cuda
    device_name: str
    versions: Mapping[str, str]
    # the workload, per optimizer step on one device
    params: int
    samples_per_step: int
    tokens_per_sample: int
    token_unit: str
    flops_per_step: float
    # time. startup_s and warmup_extra_s are a training job's (jobs.calibration.fresh_start: a fresh
    # `python -m jobs.train`, when fresh_steps > 0); import_s and build_s are this job's own
    # process's, under submitit.
    startup_s: float  # process start to the first step's start
    import_s: float  # process start to torch imported
    build_s: float  # model, optimizer and data set-up
    warmup_steps: int  # the calibration's steps before its steady state (MSER's cut)
    # warm-up steps' time beyond the steady mean (the fresh process's first max(cut, 1))
    warmup_extra_s: float
    steps_run: int
    steady_steps: int
    step_mean_s: float
    step_median_s: float
    step_std_s: float
    step_ci_half_s: float
    step_p90_s: float
    data_share: float  # of the steady step time, spent producing the batch
    stopped_by: str  # one of STOP_REASONS
    target_ci: float
    # memory and checkpoint
    peak_memory_bytes: int
    memory_kind: str  # cuda_max_allocated | rss_peak
    checkpoint_save_s: float
    checkpoint_load_s: float
    checkpoint_bytes: int
    loss_first: float
    loss_last: float
    step_times_s: tuple[float, ...] = field(default=())
    load_times_s: tuple[float, ...] = field(default=())
    # One evaluation of eval_batches held-out batches, data included (defaults: records
    # written before evaluation was measured, or a spec without it).
    eval_s: float = 0.0  # the second evaluation: what each of the run's costs
    eval_batches: int = 0
    # The first evaluation, kernels' first use included (0.0: not timed, or a record from
    # before it was). Shown, not planned: a run's first evaluation was not slower than its
    # others on an H200 (278-323 ms each; the calibration's first 679 ms).
    eval_first_s: float = 0.0
    # The batch script's start to this process's start (the shell, srun launching the task):
    # every job of the run pays it before its start-up. 0.0: not measured (a local job).
    job_start_s: float = 0.0
    # The harness's return to the end of the batch script: the interpreter's exit (freeing
    # torch and the model takes a good half second on a CPU), srun's and the script's end.
    # Every job pays it after its last save. Filled in by the login node from the script's
    # end; until then (a local job: always) the training entry's own exit after its last
    # save (jobs.calibration.fresh_start); 0.0: not measured.
    job_end_s: float = 0.0
    returned_at: float = 0.0  # Unix time the harness returned, for job_end_s
    # The data-parallel world the steps ran in (defaults: one process, as every record written
    # before multi-node calibration). With ranks > 1 every step time above includes averaging
    # the gradients across the ranks, and the per-step counts stay those of one rank.
    nodes: int = 1  # distinct nodes among the ranks
    ranks: int = 1  # processes (tasks) in the world: nodes x tasks_per_node when even
    tasks_per_node: int = 1  # the most ranks on any one node
    backend: str = ""  # torch.distributed backend: gloo | nccl; '' for one rank
    # (bytes, median seconds) of one all-reduce (sum) of that many fp32 bytes across all
    # ranks, in increasing bytes: 1/16, 1/4 and all of the gradient (params x 4). The slowest
    # rank's median. () for one rank.
    allreduce_times: tuple[tuple[int, float], ...] = ()
    # (first step, last step, times the median) of slow stretches after the warm-up: noise
    # such as a load spike, not warm-up; the winsorized steady mean clips what fits in its
    # slowest 10% of steps.
    slowdowns: tuple[tuple[int, int, float], ...] = ()
    # The plain mean of the steady steps beside the winsorized step_mean_s (0.0: a record
    # from before the steady mean was winsorized, whose step_mean_s is the plain one).
    step_raw_mean_s: float = 0.0
    # torch's CPU threads in the job (jobs.node.threads), and where the count came from;
    # 0 and '': a record from before plan-job chose them.
    torch_threads: int = 0
    threads_why: str = ""
    # The calibration process's own start-up and warm-up (under submitit, the node's first
    # process to run the step), beside the training entry's above; steps that entry ran (0:
    # the figures above are the process's own: a user's command, or a record from before).
    harness_startup_s: float = 0.0
    harness_warmup_extra_s: float = 0.0
    fresh_steps: int = 0
    # workload.compile (0.0 / 0 without it): what compiling costs a job that starts (the
    # compile call, torch._dynamo's import, and its first compiled step beyond the steady one,
    # the compiled steps' own warm-up and, when it evaluates, its first evaluation beyond the
    # second), and the eager step it replaces, the median of eager_steps steps timed before
    # compiling (after the first).
    compile_s: float = 0.0
    eager_step_s: float = 0.0
    eager_steps: int = 0
    # The 99th percentile of the steady step times (jobs.calibration.tail): what the hang
    # watchdog's step timeout is a multiple of. 0.0: a record from before it was kept.
    step_p99_s: float = 0.0
    # GPU power from NVML (jobs.calibration.power), in watts, one entry per GPU (rank order):
    # the median over the steady steps and the idle power before them. () when unknown, and
    # power_source says why ("unknown: ..."); "nvml" when read; "" in records from before
    # power was measured.
    power_w: tuple[float, ...] = ()
    idle_power_w: tuple[float, ...] = ()
    power_source: str = ""
    # compile_s is a cold compile (an empty inductor/Triton cache: what a run's first job
    # pays on a fresh node); compile_warm_s the same with the graph in the cache, and
    # compile_cache what the cold one found ("cold"; "warm"/"partly warm" where the cache
    # is not the node's own, "unknown" where torch keeps no counts). 0.0 and '': not
    # measured (eager, or a record from before).
    compile_warm_s: float = 0.0
    compile_cache: str = ""

    def __post_init__(self) -> None:
        # A record read back from YAML gives lists of lists: make them the declared tuples
        # here, so that every reader compares and hashes the same thing. TypeError for a
        # malformed entry: what a record's loader reports for a field it cannot use.
        pairs = []
        for pair in self.allreduce_times:
            try:
                size, seconds = pair
                pairs.append((int(size), float(seconds)))
            except (TypeError, ValueError):
                raise TypeError(
                    f"allreduce_times entries are [bytes, seconds], not {pair!r}"
                ) from None
        object.__setattr__(self, "allreduce_times", tuple(pairs))
        try:
            slow = tuple((int(a), int(b), float(r)) for a, b, r in self.slowdowns)
        except (TypeError, ValueError):
            raise TypeError(
                f"slowdowns entries are [first step, last step, ratio], not {self.slowdowns!r}"
            ) from None
        object.__setattr__(self, "slowdowns", slow)
        for name in ("power_w", "idle_power_w"):
            try:
                object.__setattr__(self, name, tuple(float(w) for w in getattr(self, name)))
            except (TypeError, ValueError):
                raise TypeError(f"{name} entries are watts, not {getattr(self, name)!r}") from None

    @property
    def step_ci_relative(self) -> float:
        return self.step_ci_half_s / self.step_mean_s
