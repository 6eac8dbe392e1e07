"""The calibration harness: build the workload on the node, time real steps, stop when the
steady step time is known well enough, probe a checkpoint, report.

Launched as several tasks (srun's nodes x tasks per node, or torchrun), the tasks calibrate
data-parallel, as jobs.train trains (see jobs.node.data_parallel): the step times then include the
gradient exchange, and all-reduces of the gradient's size are timed after the steps
(jobs.calibration.allreduce_timing).

torch is imported inside calibrate() so the time to import it is measured as start-up. That
is this process's start-up, under submitit; the start-up and warm-up the plan uses are those
of the training entry itself, which the harness starts after its steps
(jobs.calibration.fresh_start).
"""

from __future__ import annotations

import collections
import functools
import json
import os
import platform
import resource
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.calibration import allreduce_timing, fresh_start
from jobs.calibration.stats import steady_estimate
from jobs.contract.failure import NodeError, parse_failure
from jobs.contract.measurement import JOB_START_ENV, CalibrationRequest, Measurement
from jobs.node import compiling, data_parallel, runtime
from jobs.node.group import Group, select_gpu, start
from jobs.node.world import World, detect
from jobs.workloads.base import Workload, WorkloadConfig

if TYPE_CHECKING:
    from jobs.training.checkpoint import CheckpointTiming


def process_age_s() -> float:
    """Seconds since this process started, from the kernel's own record (Linux)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat(5); two fields precede the ")" split
        ticks = os.sysconf("SC_CLK_TCK")
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / ticks
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


# The CI (an MSER pass over all steps so far: milliseconds once there are thousands) is
# recomputed this often, not after every step, where it would cost more than a small step.
CI_CHECK_EVERY_S = 0.2


@dataclass(frozen=True)
class StepLog:
    step_times: list[float]
    load_times: list[float]
    losses: list[float]
    stopped_by: str


def job_start_s(age_s: float) -> float:
    """Seconds from the batch script's start (its $PLANJOB_JOB_START) to this process's; 0.0
    when the script did not say (a local job)."""
    try:
        script_start = float(os.environ[JOB_START_ENV])
    except (KeyError, ValueError):
        return 0.0
    return max(time.time() - age_s - script_start, 0.0)


def calibrate(request: CalibrationRequest) -> Measurement:
    """Calibrate in this process. Started by srun as several tasks (or by torchrun), every
    task runs this: the tasks train data-parallel as jobs.train does, all stop after the same
    step, and each returns its own Measurement of those steps (submitit hands back task 0's).
    A failure on any rank fails every rank, with a message that names the rank and its node.
    """
    age_at_entry = process_age_s()
    launched_s = job_start_s(age_at_entry)
    entry = time.perf_counter()
    import torch

    imported = time.perf_counter()
    try:
        world = detect(os.environ)
    except ValueError as exc:
        raise NodeError("distributed", f"bad launch environment: {exc}") from exc
    clock = _Clock(age_at_entry, launched_s, entry, imported)
    if world.size == 1:
        return _calibrate(request, world, clock, torch)
    try:
        return _calibrate(request, world, clock, torch)
    except Exception as exc:
        raise rank_failure(world, exc) from exc


@dataclass(frozen=True)
class _Clock:
    age_at_entry: float  # the process's age when calibrate() was called
    launched_s: float  # the batch script's start to this process's
    entry: float  # perf_counter() at the call
    imported: float  # perf_counter() once torch was imported


def _calibrate(request: CalibrationRequest, world: World, clock: _Clock, torch: Any) -> Measurement:
    select_gpu(world, request.device, torch)
    device = runtime.resolve_device(request.device, torch)
    sync = runtime.synchronizer(device, torch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    starting = time.perf_counter()
    group = start(world, device)
    started = time.perf_counter()
    workload = _build(request, device)
    made = time.perf_counter()
    if group.size > 1:
        data_parallel.join_data_parallel(workload, group, "plan-job calibrate")
    # Joining the others (the rendezvous waits for the slowest rank, rank 0's weights are
    # sent) is start-up that every job of a multi-node run pays: it counts as build.
    built = time.perf_counter()
    joining_s = (started - starting) + (built - made) if group.size > 1 else 0.0
    try:
        eager, compiled_first = [], 0.0
        if request.compile:
            steps_of = functools.partial(_run_steps, workload, sync=sync, group=group)
            eager, compiled_first = compiling.eager_then_compiled(
                workload, request, device, torch, steps_of
            )
        steps = _run_steps(workload, request, sync, group)
        eval_first_s, eval_s = _time_evaluation(workload, request, sync, group.world.rank)
    except torch.cuda.OutOfMemoryError as exc:
        raise _oom(request, device, exc) from exc
    first_step_at = built  # the first step starts right after the build
    counts = workload.counts
    allreduce_times = allreduce_timing.time_allreduces(group, counts.params, device, sync)
    nodes, tasks_per_node = _layout(group)
    timing = _probe_checkpoint(workload, Path(request.scratch_dir), device, sync, group)
    peak, memory_kind = _peak_memory(device, torch)
    est = steady_estimate(steps.step_times)
    steady_start = est.warmup_steps
    steady_total = sum(steps.step_times[steady_start:])
    own_warmup_s = max(sum(steps.step_times[:steady_start]) - steady_start * est.mean, 0.0)
    own_startup_s = clock.age_at_entry + (first_step_at - clock.entry)
    del workload  # freed for the training entry's own build on this device
    fresh = fresh_start.on_rank_0(request, est.warmup_steps, est.mean, group, device, torch)
    compile_s = 0.0
    if request.compile:
        # What a compiling job pays beyond an eager one's warm-up (the eager steps paid the
        # kernels' first use): compiling and its first compiled step beyond steady, the
        # compiled steps' warm-up, and its first evaluation (another graph) beyond the next.
        compile_s = max(compiled_first - est.mean, 0.0) + own_warmup_s
        compile_s += max(eval_first_s - eval_s, 0.0)
    measurement = Measurement(
        host=socket.gethostname(),
        device_kind=device.type,
        device_name=_device_name(device, torch),
        versions=_versions(torch),
        params=counts.params,
        samples_per_step=counts.samples_per_step,
        tokens_per_sample=counts.tokens_per_sample,
        token_unit=counts.token_unit,
        flops_per_step=float(counts.flops_per_step),
        # A multi-rank job's rendezvous and join are its own: the entry ran as one process.
        startup_s=fresh.startup_s + joining_s,
        import_s=clock.age_at_entry + (clock.imported - clock.entry),
        build_s=built - clock.imported,
        warmup_steps=est.warmup_steps,
        warmup_extra_s=fresh.warmup_extra_s,
        steps_run=len(steps.step_times),
        steady_steps=est.n,
        step_mean_s=est.mean,
        step_median_s=est.median,
        step_std_s=est.std,
        step_ci_half_s=est.ci_half_width,
        step_p90_s=est.p90,
        data_share=sum(steps.load_times[steady_start:]) / steady_total if steady_total else 0.0,
        stopped_by=steps.stopped_by,
        target_ci=request.target_ci,
        peak_memory_bytes=peak,
        memory_kind=memory_kind,
        checkpoint_save_s=timing.save_s,
        checkpoint_load_s=timing.load_s,
        checkpoint_bytes=timing.nbytes,
        loss_first=steps.losses[0],
        loss_last=steps.losses[-1],
        step_times_s=tuple(steps.step_times),
        load_times_s=tuple(steps.load_times),
        eval_s=eval_s,
        eval_first_s=eval_first_s,
        eval_batches=request.eval_batches,
        job_start_s=clock.launched_s,
        job_end_s=fresh.exit_s,  # until the login node reads the job's own end
        harness_startup_s=own_startup_s,
        harness_warmup_extra_s=own_warmup_s,
        fresh_steps=len(fresh.step_times),
        compile_s=compile_s,
        eager_step_s=statistics.median(eager[1:] or eager) if eager else 0.0,
        eager_steps=len(eager),
        nodes=nodes,
        ranks=group.size,
        tasks_per_node=tasks_per_node,
        backend=_backend(group),
        allreduce_times=allreduce_times,
        slowdowns=tuple((s.first_step, s.last_step, s.ratio) for s in est.slowdowns),
        returned_at=time.time(),
    )
    # Only after success: tearing down NCCL after a peer's failure can hang, and a failing
    # process is about to exit anyway.
    group.close()
    return measurement


def _layout(group: Group) -> tuple[int, int]:
    """(nodes, the most ranks on one node), from the nodes the ranks say they are on: the
    same for srun's and torchrun's launches, and for uneven ones."""
    hosts = group.gather(group.world.host, "the ranks' nodes")
    layout = None
    if hosts is not None:
        per_node = collections.Counter(hosts)
        layout = (len(per_node), max(per_node.values()))
    nodes, tasks_per_node = group.broadcast(layout, "the ranks' nodes")
    return int(nodes), int(tasks_per_node)


def _probe_checkpoint(
    workload: Workload, folder: Path, device: Any, sync: Callable[[], None], group: Group
) -> CheckpointTiming:
    """Rank 0's probe, on every rank: the ranks share the scratch folder (a run's checkpoints
    are rank 0's alone too), and ranks writing one probe file at once would break each
    other's."""
    timing = None
    if group.is_main:
        from jobs.training import checkpoint

        timing = checkpoint.probe(workload, folder, device, sync)
    return group.broadcast(timing, "rank 0's checkpoint probe")


def _backend(group: Group) -> str:
    if group.size == 1:
        return ""
    import torch.distributed as dist

    return str(dist.get_backend())


# --- a failing rank ------------------------------------------------------------------------------

# The failures of the ranks, in the rendezvous store that every rank already talks to: a
# rank that sees only "a collective failed" (its peer died) reports the peer's own error.
_FAILURE_COUNT_KEY = "plan-job/calibration/failures"
_FAILURE_KEY = "plan-job/calibration/failure/{index}"
# How long a rank whose collective failed waits for the failing rank's own error. The peer
# publishes before it exits and gloo notices the exit, so it is normally there already.
FAILURE_WAIT_S = 3.0


def rank_failure(world: World, exc: BaseException) -> NodeError:
    """The NodeError this rank raises for ``exc``: its own failure, named ``rank R on
    NODE: KIND: message`` and published for the others, or, when all this rank saw was a
    collective failing, the first failure another rank published."""
    if isinstance(exc, NodeError):
        parsed = parse_failure(str(exc)) or {"kind": exc.kind, "message": str(exc)}
    else:
        message = f"{type(exc).__name__}: {exc}{runtime.where(exc)}"
        parsed = {"kind": "error", "message": message}
    kind, message = str(parsed.pop("kind")), str(parsed.pop("message"))
    store = _default_store()
    if kind == "distributed" and store is not None:
        other = _published_failure(store)
        if other is not None:
            return other
    details = {**parsed, "rank": world.rank, "node": world.host}
    named = f"rank {world.rank} on {world.host}: {kind}: {message}"
    if kind != "distributed" and store is not None:
        _publish(store, {"kind": kind, "message": named, **details})
    return NodeError(kind, named, **details)


def _default_store() -> Any:
    """The process group's store, with a short timeout; None before the group exists."""
    try:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            return None
        store = dist.distributed_c10d._get_default_store()
        # Its own timeout is the rendezvous's (minutes): a failing rank must not wait that
        # long on a server whose node is gone. The group is finished with it by now.
        short = timedelta(seconds=FAILURE_WAIT_S + 2)
        for layer in (store, getattr(store, "underlying_store", None)):
            if layer is not None:
                layer.set_timeout(short)
        return store
    except Exception:  # a private API: without it, each rank reports only its own failure
        return None


def _publish(store: Any, failure: dict[str, Any]) -> None:
    try:
        index = store.add(_FAILURE_COUNT_KEY, 1)
        store.set(_FAILURE_KEY.format(index=index), json.dumps(failure))
    except Exception:  # the store's server (rank 0) may be gone: this rank's error stands
        pass


def _published_failure(store: Any) -> NodeError | None:
    deadline = time.monotonic() + FAILURE_WAIT_S
    try:
        while True:
            # The first published: the rank that failed first, whose failure the others saw.
            if store.add(_FAILURE_COUNT_KEY, 0) >= 1 and store.check(
                [_FAILURE_KEY.format(index=1)]
            ):
                failure = json.loads(store.get(_FAILURE_KEY.format(index=1)))
                kind, message = failure.pop("kind"), failure.pop("message")
                return NodeError(kind, message, **failure)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)
    except Exception:  # rank 0, the store's server, may have exited first
        return None


def _build(request: CalibrationRequest, device: Any) -> Workload:
    config = WorkloadConfig(
        preset=request.preset,
        overrides=dict(request.overrides),
        micro_batch=request.micro_batch,
        grad_accum=request.grad_accum,
        precision=request.precision,
        device=str(device),
        seed=request.seed,
    )
    return runtime.build_workload(request.builder_path, config, device)


def _run_steps(
    workload: Workload,
    request: CalibrationRequest,
    sync: Callable[[], None],
    group: Group,
) -> StepLog:
    step_times: list[float] = []
    load_times: list[float] = []
    losses: list[float] = []
    # One progress stream for the CLI: every rank gets the same request, so the same path.
    progress = _ProgressWriter(request.progress_path if group.is_main else None)
    started = t0 = time.perf_counter()
    stopping = _StopRule(request, group, started)
    stopped_by = "step_cap"
    while len(step_times) < request.max_steps:
        batch = workload.next_batch()
        sync()
        t1 = time.perf_counter()
        try:
            loss = workload.train_step(batch)
        except NodeError:
            raise  # e.g. the gradient exchange: its message already says what failed
        except Exception as exc:
            if type(exc).__name__ == "OutOfMemoryError":
                raise
            if type(exc).__name__ == "UncompletedJobError":
                # submitit's handler of the Slurm time-limit signal raises inside the step.
                raise NodeError(
                    "time_limit",
                    f"the calibration job reached its time limit at step {len(step_times) + 1}: "
                    "raise calibration.time_limit_minutes or lower calibration.max_seconds",
                ) from exc
            what = f"training step {len(step_times) + 1}"
            failed = compiling.failure(exc, request.compile, what)
            raise failed or NodeError(
                "workload_error",
                f"{what} raised {type(exc).__name__}: {exc}{runtime.where(exc)}",
            ) from exc
        sync()
        losses.append(float(loss))
        progress.write(len(step_times) + 1, time.perf_counter() - started, stopping.ci)
        # A step as a training loop runs it: its data, the step, reading the loss back and
        # a progress line. The stop decision below is the harness's own work: it stays out.
        t2 = time.perf_counter()
        step_times.append(t2 - t0)
        load_times.append(t1 - t0)
        reason = stopping.after_step(step_times, t2)
        if reason is not None:
            stopped_by = reason
            break
        t0 = time.perf_counter()
    progress.close()
    return StepLog(step_times, load_times, losses, stopped_by)


class _StopRule:
    """Whether to stop after a step: the CI target (checked every CI_CHECK_EVERY_S), the time
    cap (after every step) or, by the loop's own condition, the step cap.

    Several ranks must stop after the same step, or one would wait forever in a gradient
    exchange the others never start. Rank 0 alone decides, at steps every rank knows in
    advance: at each check it sends its decision and the step of the next check, about
    CI_CHECK_EVERY_S on. Deciding at every step would add a collective to each.
    """

    def __init__(self, request: CalibrationRequest, group: Group, started: float) -> None:
        self.request, self.group, self.started = request, group, started
        self.checked = started
        self.ci: float | None = None  # the last CI computed, for the progress lines
        self.next_check = 1  # several ranks: the number of steps after which to decide

    def after_step(self, step_times: list[float], now: float) -> str | None:
        if self.group.size == 1:
            return self._decide(step_times, now, ci_due=now - self.checked >= CI_CHECK_EVERY_S)
        if len(step_times) < self.next_check:
            return None
        decision = None
        if self.group.is_main:
            reason = self._decide(step_times, now, ci_due=True)
            left = self.request.max_seconds - (now - self.started)
            gap = min(CI_CHECK_EVERY_S, max(left, 0.0))
            ahead = max(1, int(gap / max(step_times[-1], 1e-9)))
            decision = (reason, len(step_times) + ahead)
        reason, self.next_check = self.group.broadcast(decision, "rank 0's decision to stop")
        return reason

    def _decide(self, step_times: list[float], now: float, ci_due: bool) -> str | None:
        if ci_due:
            self.ci = _ci_if_ready(step_times, self.request.min_steps)
            self.checked = time.perf_counter()
            if self.ci is not None and self.ci <= self.request.target_ci:
                return "ci_target"
        if now - self.started >= self.request.max_seconds and len(step_times) >= 2:
            return "time_cap"
        return None


def _time_evaluation(
    workload: Workload, request: CalibrationRequest, sync: Callable[[], None], rank: int = 0
) -> tuple[float, float]:
    """Two evaluations as the run does them, after the steps, each rank its own held-out
    batches as jobs.train: (the first, the second). The first pays the forward-only kernels'
    first use (on an H200 679 ms against 278-323 ms for every evaluation of the run after
    it), the second is what the run's evaluations cost. (0.0, 0.0) when the spec asks for
    none."""
    if request.eval_batches <= 0:
        return 0.0, 0.0
    first = rank * request.eval_batches
    once, _loss = runtime.evaluate(workload, request.eval_batches, sync, first)
    again, _loss = runtime.evaluate(workload, request.eval_batches, sync, first)
    return once, again


def _ci_if_ready(step_times: list[float], min_steps: int) -> float | None:
    """The steady CI, once it can be trusted: enough steady steps, and warm-up clearly over.

    MSER may cut at most half the series; a cut near that bound means the times are still
    trending, and a CI computed then would be spuriously narrow.
    """
    if len(step_times) < min_steps:
        return None
    est = steady_estimate(step_times)
    if est.n < min_steps or est.warmup_steps > len(step_times) // 2 - 5:
        return None
    return est.ci_relative


class _ProgressWriter:
    """Appends a JSON line per step so the CLI can show live progress; never fails the run."""

    def __init__(self, path: str | None) -> None:
        self._handle = None
        if path:
            try:
                self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115
            except OSError:
                self._handle = None

    def write(self, step: int, elapsed: float, ci: float | None) -> None:
        if self._handle is not None:
            line = {"step": step, "elapsed_s": round(elapsed, 4), "ci_rel": ci}
            self._handle.write(json.dumps(line) + "\n")
            self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _oom(request: CalibrationRequest, device: Any, exc: BaseException) -> NodeError:
    return runtime.oom_failure(request.micro_batch, request.precision, device, exc)


def _peak_memory(device: Any, torch: Any) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss_peak"


def _device_name(device: Any, torch: Any) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return cpu_name()


def _versions(torch: Any) -> dict[str, str]:
    import submitit

    versions = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "submitit": str(submitit.__version__),
        "plan-job": _plan_job_version(),
    }
    if torch.version.cuda:
        versions["cuda"] = str(torch.version.cuda)
    return versions


def _plan_job_version() -> str:
    try:
        from importlib.metadata import version

        return version("plan-job")
    except Exception:
        return "unknown"


def cpu_name() -> str:
    """A readable CPU model name for the record (platform.processor() is often empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()
