"""One job of the built-in training (a workload in this process, data-parallel across the
job's tasks): resume from the newest readable checkpoint, build the workload, step until done
or told to stop (jobs.training.loop), save, say why. See jobs.train for the whole contract.

torch is imported only once training starts: the login node imports jobs.train, which
imports this module.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

from jobs.contract.failure import NodeError, parse_failure
from jobs.contract.train_config import TrainConfig
from jobs.node import compiling, data_parallel, runtime
from jobs.node.group import Group, select_gpu, start
from jobs.node.signals import StopRequest
from jobs.node.world import World, detect
from jobs.progress import ProgressWriter, read_progress
from jobs.training.loop import QuietProgress, Run
from jobs.training.resume import JobStart, claim_folder, job_start, newest_readable, read_chosen

EXIT_OK, EXIT_FAILED = 0, 1


def train_rank(config: TrainConfig, stop_at: float | None, stop: StopRequest, world: World) -> int:
    # Among several ranks, say which one failed: their stderr is interleaved in one log.
    who = f"{world.name}: " if world.size > 1 else ""
    try:
        status = train(config, stop_at, stop, world)
        stop.ignore_from_now()
        return status
    except NodeError as exc:
        failure = parse_failure(str(exc)) or {"kind": exc.kind, "message": str(exc)}
        print(f"plan-job train: {who}{failure['kind']}: {failure['message']}", file=sys.stderr)
        return EXIT_FAILED
    except Exception:
        if world.size == 1:
            raise
        print(f"plan-job train: {who}unexpected error:", file=sys.stderr)
        traceback.print_exc()
        return EXIT_FAILED


def train(
    config: TrainConfig, stop_at: float | None, stop: StopRequest, world: World | None = None
) -> int:
    """One job of the run: resume, step until done or told to stop, save, say why."""
    import torch

    world = detect(os.environ) if world is None else world
    select_gpu(world, config.work.device, torch)
    device = runtime.resolve_device(config.work.device, torch, setting="device")
    group = start(world, device)
    status = _train(config, stop_at, stop, group, device)
    # Only after success: tearing down NCCL after a peer's failure can hang, and a failing
    # process is about to exit anyway.
    group.close()
    return status


def _train(
    config: TrainConfig, stop_at: float | None, stop: StopRequest, group: Group, device: Any
) -> int:
    from jobs.training import checkpoint

    resumed, found = None, None
    if group.is_main:
        folder = Path(config.checkpoint_dir)
        history = read_progress(config.progress_path)
        checkpoint.remove_stale_temporaries(folder)
        claim_folder(config, folder)
        resumed = newest_readable(folder)
        found = job_start(history, resumed, stop_at)
    # One reader decides: ranks scanning the folder themselves could race each other renaming
    # a torn checkpoint, and see different newest ones.
    job: JobStart = group.broadcast(found, "what rank 0 found on disk")
    first = job.step
    say = print if group.is_main else _quiet
    with ProgressWriter(config.progress_path) if group.is_main else QuietProgress() as progress:
        if first >= config.total_steps:
            progress.start(first, config.total_steps, job.restart)
            progress.stop(first, "done")
            say(f"plan-job train: already done: the newest checkpoint is step {first}")
            return EXIT_OK
        if resumed is None and job.path is not None:
            resumed = read_chosen(Path(job.path), job.step)
        workload_config = config.work.workload_config(str(device))
        workload = runtime.build_workload(config.work.builder_path, workload_config, device)
        if group.size > 1:
            data_parallel.join_data_parallel(workload, group, "plan-job train")
        if config.work.compile:
            import torch

            compiling.compile_model(workload, device, torch)  # as the calibration did
        run = Run(config, workload, device, progress, stop, job, group)
        if resumed is None:
            progress.start(first, config.total_steps, job.restart)
        else:
            load_s = run.restore(resumed)
            progress.start(first, config.total_steps, job.restart)
            progress.resume(first, load_s, str(resumed.path))
            say(f"plan-job train: resumed from {resumed.path} (step {first})")
            resumed = None  # its CPU copy of the whole state would live as long as the run
        step, reason, signal_name = run.loop(first)
        progress.stop(step, reason, signal_name)
    say(f"plan-job train: stopped at step {step}/{config.total_steps} ({reason})")
    return EXIT_OK


def _quiet(*_args: Any, **_kwargs: Any) -> None:
    """print for ranks other than 0: one rank's account of the run is enough."""
