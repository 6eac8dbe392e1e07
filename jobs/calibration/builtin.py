"""The calibration harness for a workload (a built-in one or the user's workload.function):
build it on the node, time real steps (jobs.calibration.steps) until the steady step time is
known well enough, probe a checkpoint, report.

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
import os
import platform
import resource
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.calibration import allreduce_timing, fresh_start, host, power, tail
from jobs.calibration.rank_failure import rank_failure
from jobs.calibration.stats import steady_estimate
from jobs.calibration.steps import run_steps, time_evaluation
from jobs.contract.failure import NodeError
from jobs.contract.measurement import CalibrationRequest, Measurement
from jobs.node import compiling, data_parallel, runtime, threads
from jobs.node.group import Group, select_gpu, start
from jobs.node.world import World, detect
from jobs.workloads.base import Workload

if TYPE_CHECKING:
    from jobs.training.checkpoint import CheckpointTiming


def calibrate(request: CalibrationRequest) -> Measurement:
    """Calibrate in this process. Started by srun as several tasks (or by torchrun), every
    task runs this: the tasks train data-parallel as jobs.train does, all stop after the same
    step, and each returns its own Measurement of those steps (submitit hands back task 0's).
    A failure on any rank fails every rank, with a message that names the rank and its node.
    """
    age_at_entry = host.process_age_s()
    launched_s = host.job_start_s(age_at_entry)
    entry = time.perf_counter()
    import torch

    imported = time.perf_counter()
    # Before the workload is built: the run's jobs.train makes the same choice.
    threading = threads.apply(torch)
    try:
        world = detect(os.environ)
    except ValueError as exc:
        raise NodeError("distributed", f"bad launch environment: {exc}") from exc
    clock = _Clock(age_at_entry, launched_s, entry, imported, threading)
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
    threads: threads.ThreadChoice


def _calibrate(request: CalibrationRequest, world: World, clock: _Clock, torch: Any) -> Measurement:
    select_gpu(world, request.work.device, torch)
    device = runtime.resolve_device(request.work.device, torch)
    sync = runtime.synchronizer(device, torch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # Before anything runs on it: the GPU's idle power (nothing read on a CPU).
    watch = power.Watch(_gpu_selectors(device, torch)).begin() if device.type == "cuda" else None
    try:
        return _calibrate_on(request, world, clock, torch, device, sync, watch)
    finally:
        if watch is not None:
            watch.abandon()  # stops the readings if the calibration failed before its steps


def _calibrate_on(
    request: CalibrationRequest,
    world: World,
    clock: _Clock,
    torch: Any,
    device: Any,
    sync: Callable[[], None],
    watch: power.Watch | None,
) -> Measurement:
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
        compiled: compiling.CompileTiming | None = None
        if request.work.compile:
            steps_of = functools.partial(run_steps, workload, sync=sync, group=group)
            compiled = compiling.eager_then_compiled(workload, request, device, torch, steps_of)
        eager = compiled.eager_step_times if compiled else []
        steps_began = time.time()
        steps = run_steps(workload, request, sync, group)
        eval_first_s, eval_s = time_evaluation(workload, request, sync, group.world.rank)
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
    gpu_power = _gpu_power(watch, group, steps_began, steps.step_times, steady_start)
    steady_total = sum(steps.step_times[steady_start:])
    own_warmup_s = max(sum(steps.step_times[:steady_start]) - steady_start * est.mean, 0.0)
    # The idle power's reading is the calibration's own: no training job waits for it.
    idle_s = watch.idle_spent_s if watch is not None else 0.0
    own_startup_s = clock.age_at_entry + (first_step_at - clock.entry) - idle_s
    del workload  # freed for the training entry's own build on this device
    fresh = fresh_start.on_rank_0(request, est.warmup_steps, est.mean, group, device, torch)
    compile_s = compile_warm_s = 0.0
    if compiled is not None:
        # What a compiling job pays beyond an eager one's warm-up (the eager steps paid the
        # kernels' first use): compiling and its first compiled step beyond steady, the
        # compiled steps' warm-up, and its first evaluation (another graph) beyond the next.
        beyond = own_warmup_s + max(eval_first_s - eval_s, 0.0)
        compile_s = max(compiled.cold_s - est.mean, 0.0) + beyond
        if compiled.warm_s:
            compile_warm_s = max(compiled.warm_s - est.mean, 0.0) + beyond
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
        build_s=built - clock.imported - idle_s,
        warmup_steps=est.warmup_steps,
        warmup_extra_s=fresh.warmup_extra_s,
        steps_run=len(steps.step_times),
        steady_steps=est.n,
        step_mean_s=est.mean,
        step_median_s=est.median,
        step_std_s=est.std,
        step_ci_half_s=est.ci_half_width,
        step_p90_s=est.p90,
        step_p99_s=tail.p99(steps.step_times[est.warmup_steps :]),
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
        compile_warm_s=compile_warm_s,
        compile_cache=compiled.cache if compiled else "",
        eager_step_s=statistics.median(eager[1:] or eager) if eager else 0.0,
        eager_steps=len(eager),
        nodes=nodes,
        ranks=group.size,
        tasks_per_node=tasks_per_node,
        backend=_backend(group),
        allreduce_times=allreduce_times,
        slowdowns=tuple((s.first_step, s.last_step, s.ratio) for s in est.slowdowns),
        power_w=gpu_power.power_w,
        idle_power_w=gpu_power.idle_w,
        power_source=gpu_power.source,
        step_raw_mean_s=est.raw_mean,
        torch_threads=clock.threads.threads,
        threads_why=clock.threads.why,
        returned_at=time.time(),
    )
    # Only after success: tearing down NCCL after a peer's failure can hang, and a failing
    # process is about to exit anyway.
    group.close()
    return measurement


def _gpu_selectors(device: Any, torch: Any) -> list[str] | None:
    """This rank's GPU as NVML knows it: its UUID (CUDA's indices need not be NVML's)."""
    try:
        return [str(torch.cuda.get_device_properties(device).uuid)]
    except (AttributeError, RuntimeError):
        visible = power.visible_selectors(dict(os.environ))
        index = device.index if device.index is not None else torch.cuda.current_device()
        return [visible[index]] if visible is not None and index < len(visible) else None


def _gpu_power(
    watch: power.Watch | None,
    group: Group,
    began: float,
    step_times: list[float],
    steady_start: int,
) -> power.PowerReading:
    """Every rank's GPU over its steady steps, on rank 0 in rank order; unknown when any
    rank could not read its own."""
    if watch is None:
        mine = power.unknown("the calibration ran on the CPU")
    else:
        start = began + sum(step_times[:steady_start])
        mine = watch.finish(start, began + sum(step_times))
    every = group.gather(mine, "the GPUs' power")
    if every is None:  # not rank 0: its measurement is not the one kept
        return mine
    missing = next((r for r in every if not r.power_w), None)
    if missing is not None:
        return missing
    return power.PowerReading(
        tuple(w for r in every for w in r.power_w),
        tuple(w for r in every for w in r.idle_w) if all(r.idle_w for r in every) else (),
        power.SOURCE,
    )


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


def _build(request: CalibrationRequest, device: Any) -> Workload:
    config = request.work.workload_config(str(device))
    return runtime.build_workload(request.work.builder_path, config, device)


def _oom(request: CalibrationRequest, device: Any, exc: BaseException) -> NodeError:
    return runtime.oom_failure(request.work.micro_batch, request.work.precision, device, exc)


def _peak_memory(device: Any, torch: Any) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss_peak"


def _device_name(device: Any, torch: Any) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return host.cpu_name()


def _versions(torch: Any) -> dict[str, str]:
    import submitit

    versions = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "submitit": str(submitit.__version__),
        "plan-job": host.plan_job_version(),
    }
    if torch.version.cuda:
        versions["cuda"] = str(torch.version.cuda)
    return versions
