"""One job of the built-in training (a workload in this process, data-parallel across the
job's tasks): rank 0 prepares (jobs.training.preflight: the trainer lock, the chain's
progress, room, the newest checkpoint that loads) and tells the others, then every rank
builds the workload, steps until done or told to stop (jobs.training.loop), saves, says why.
A failure ends with a `failure` progress event naming its cause (jobs.node.failures). See
jobs.train for the whole contract.

torch is imported only once training starts: the login node imports jobs.train, which
imports this module.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from jobs.contract.failure import (
    EXIT_CHAIN_STOPPED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    CollectiveFailed,
    NodeError,
    Refusal,
    parse_failure,
)
from jobs.contract.train_config import TrainConfig
from jobs.node import compiling, data_parallel, runtime
from jobs.node.failures import cause_of, no_space_detail, write_failure
from jobs.node.group import Group, select_gpu, start
from jobs.node.signals import StopRequest
from jobs.node.watchdog import NoWatchdog
from jobs.node.world import World, detect
from jobs.progress import ProgressWriter
from jobs.training import preflight
from jobs.training.loop import QuietProgress, Run
from jobs.training.resume import JobStart, SetAside, read_chosen

__all__ = ["EXIT_FAILED", "EXIT_OK", "train", "train_rank"]


def train_rank(
    config: TrainConfig,
    stop_at: float | None,
    stop: StopRequest,
    world: World,
    watch: NoWatchdog | None = None,
) -> int:
    watch = watch or NoWatchdog()
    # Among several ranks, say which one failed: their stderr is interleaved in one log.
    who = f"{world.name}: " if world.size > 1 else ""
    began = time.time()
    try:
        status = train(config, stop_at, stop, world, watch)
        stop.ignore_from_now()
        watch.hold_if_fired()
        return status
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        # A collective that fails because the hung peer is gone is the hang's echo, which
        # the watchdog is reporting: it ends this process.
        watch.hold_if_fired()
        cause = cause_of(exc)
        if isinstance(exc, NodeError):
            failure = parse_failure(str(exc)) or {"kind": exc.kind, "message": str(exc)}
            kind, message = failure["kind"], str(failure["message"])
        else:
            kind, message = type(exc).__name__, str(exc) or type(exc).__name__
        print(f"plan-job train: {who}{kind}: {message}", file=sys.stderr)
        if _says_why(exc, world, config.progress_path, began):
            detail = (
                no_space_detail(Path(config.checkpoint_dir), 0) if cause == "no_space" else None
            )
            rank = world.rank if world.size > 1 else None
            write_failure(config.progress_path, watch.step, cause, message, detail, rank)
        if not isinstance(exc, NodeError) and cause == "exception":
            if world.size == 1:
                raise  # the traceback is the report of an error nobody foresaw
            traceback.print_exc()
        return EXIT_FAILED


def _says_why(exc: BaseException, world: World, progress_path: str, began: float) -> bool:
    """Whether this rank writes the `failure` line. A failed collective is the echo of
    another rank's failure, which wrote its own line; it is the cause only when no rank
    said anything (a rank killed outright), and then rank 0 says it."""
    if not isinstance(exc, CollectiveFailed):
        return True
    return world.rank == 0 and not _failure_since(progress_path, began)


def _failure_since(progress_path: str, began: float) -> bool:
    import json

    job_id = os.environ.get("SLURM_JOB_ID")
    try:
        with open(progress_path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(size - 65536, 0))
            lines = handle.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return False
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if (
            isinstance(event, dict)
            and event.get("event") == "failure"
            and event.get("job_id") == job_id
            and isinstance(event.get("time"), int | float)
            and event["time"] >= began
        ):
            return True
    return False


def train(
    config: TrainConfig,
    stop_at: float | None,
    stop: StopRequest,
    world: World | None = None,
    watch: NoWatchdog | None = None,
) -> int:
    """One job of the run: prepare, resume, step until done or told to stop, save, say why."""
    import torch

    watch = watch or NoWatchdog()
    world = detect(os.environ) if world is None else world
    select_gpu(world, config.work.device, torch)
    device = runtime.resolve_device(config.work.device, torch, setting="device")
    group = start(world, device)
    status = _train(config, stop_at, stop, group, device, watch)
    # Only when the ranks agree: tearing down NCCL after a peer's failure can hang, and a
    # failing process is about to exit anyway.
    group.close()
    return status


def _train(
    config: TrainConfig,
    stop_at: float | None,
    stop: StopRequest,
    group: Group,
    device: Any,
    watch: NoWatchdog,
) -> int:
    say = print if group.is_main else _quiet
    set_aside: list[SetAside] = []
    prepared: preflight.Prepared | None = None
    found: Any = None
    if group.is_main:
        try:
            prepared = preflight.prepare(config, stop_at, set_aside, watch)
            found = prepared.job
        except Refusal as exc:
            _refused(config, exc, set_aside)
            found = (EXIT_REFUSED, exc.text)
        except preflight.ChainStopped as exc:
            found = (EXIT_CHAIN_STOPPED, str(exc))
    # One reader decides: ranks scanning the folder themselves could race each other renaming
    # a torn checkpoint, and see different newest ones, or take the lock from each other.
    decided = group.broadcast(found, "what rank 0 found on disk")
    if not isinstance(decided, JobStart):
        status, why = decided
        if not group.is_main:
            print(
                f"plan-job train: {group.world.name}: rank 0 refused to start: {why}",
                file=sys.stderr,
            )
        return int(status)
    if prepared is not None:
        watch.add_cleanup(prepared.lock.release)
    try:
        return _run(config, decided, prepared, group, device, watch, set_aside, stop, say)
    finally:
        if prepared is not None:
            prepared.lock.release()


def _refused(config: TrainConfig, refusal: Refusal, set_aside: list[SetAside]) -> None:
    print(f"plan-job train: refused to start: {refusal.text}", file=sys.stderr, flush=True)
    try:
        with ProgressWriter(config.progress_path) as progress:
            _report_set_aside(progress, set_aside)
    except OSError:
        pass  # write_failure below says the progress file cannot be written
    write_failure(config.progress_path, 0, refusal.cause, refusal.text, refusal.detail or None)


def _report_set_aside(progress: ProgressWriter | QuietProgress, set_aside: list[SetAside]) -> None:
    for item in set_aside:
        progress.checkpoint_bad(str(item.path), str(item.moved_to), item.reason, item.step)


def _run(
    config: TrainConfig,
    job: JobStart,
    prepared: preflight.Prepared | None,
    group: Group,
    device: Any,
    watch: NoWatchdog,
    set_aside: list[SetAside],
    stop: StopRequest,
    say: Any,
) -> int:
    first = job.step
    watch.arm("startup", first)
    resumed = None
    if prepared is not None:
        resumed, prepared.resumed = prepared.resumed, None
    with ProgressWriter(config.progress_path) if group.is_main else QuietProgress() as progress:
        if first >= config.total_steps:
            progress.start(first, config.total_steps, job.restart)
            _report_set_aside(progress, set_aside)
            progress.stop(first, "done")
            say(f"plan-job train: already done: the newest checkpoint is step {first}")
            return EXIT_OK
        if resumed is None and job.path is not None:
            watch.arm("load")
            resumed = read_chosen(Path(job.path), job.step)
            watch.arm("startup")
        workload_config = config.work.workload_config(str(device))
        workload = runtime.build_workload(config.work.builder_path, workload_config, device)
        if group.size > 1:
            data_parallel.join_data_parallel(workload, group, "plan-job train")
        if config.work.compile:
            import torch

            watch.arm("compile")
            compiling.compile_model(workload, device, torch)  # as the calibration did
        run = Run(config, workload, device, progress, stop, job, group, watch)
        if resumed is None:
            progress.start(first, config.total_steps, job.restart)
            _report_set_aside(progress, set_aside)
        else:
            watch.arm("load")
            load_s = run.restore(resumed)
            progress.start(first, config.total_steps, job.restart)
            _report_set_aside(progress, set_aside)
            progress.resume(first, load_s, str(resumed.path))
            say(f"plan-job train: resumed from {resumed.path} (step {first})")
            resumed = None  # its CPU copy of the whole state would live as long as the run
        step, reason, signal_name = run.loop(first)
        watch.arm("exit", step)  # before the stop line: not behind a hang line
        progress.stop(step, reason, signal_name)
    say(f"plan-job train: stopped at step {step}/{config.total_steps} ({reason})")
    return EXIT_OK


def _quiet(*_args: Any, **_kwargs: Any) -> None:
    """print for ranks other than 0: one rank's account of the run is enough."""
