"""What rank 0 of a built-in training job does before it trains, in this order: take the run's
trainer lock (jobs.node.trainer_lock), check that the segments before made progress
(jobs.node.chain_guard), check the checkpoint folder's room (jobs.node.space), and find the
newest checkpoint that loads, refusing a silent start from step 0. Each refusal is an
exception here (Refusal, ChainStopped) that jobs.training.builtin turns into the job's exit
status for every rank. torch is imported only to read a checkpoint.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jobs.contract.failure import EXIT_REFUSED
from jobs.contract.train_config import TrainConfig
from jobs.node import chain_guard, space, trainer_lock
from jobs.node.failures import write_failure
from jobs.node.watchdog import NoWatchdog
from jobs.progress import ProgressWriter, read_progress
from jobs.training.resume import (
    RECENT_STEPS,
    JobStart,
    Resumed,
    SetAside,
    check_fresh_start,
    claim_folder,
    job_start,
    newest_readable,
)


class ChainStopped(Exception):
    """The chain's earlier segments made no progress: the rest is cancelled (the
    `chain_stopped` line is written), and the job exits EXIT_CHAIN_STOPPED."""


@dataclass
class Prepared:
    job: JobStart
    resumed: Resumed | None  # dropped once applied: it is a CPU copy of the whole state
    lock: trainer_lock.TrainerLock


def say(text: str) -> None:
    print(f"plan-job train: {text}", file=sys.stderr, flush=True)


def take_lock(
    config: TrainConfig, env: Mapping[str, str], watch: NoWatchdog
) -> trainer_lock.TrainerLock:
    """The run's trainer lock, with its heartbeat running (Refusal: another trainer runs).
    Should another trainer take it over later (this one's heartbeat stalled past stale),
    this process leaves at once, without saving over the other's checkpoints."""
    folder = Path(config.checkpoint_dir)
    me = trainer_lock.Holder.me(env, config.heartbeat_s)
    lock = trainer_lock.acquire(folder, me, say, lambda: watch.arm("startup"))

    def lost(holder: trainer_lock.Holder) -> None:
        import time

        message = (
            f"another trainer took over this run's lock: {holder.describe(time.time())}; "
            f"this one stops at once, without saving, so as not to write over its checkpoints"
        )
        say(message)
        write_failure(
            config.progress_path, 0, "trainer_running", message, {"holder": asdict(holder)}
        )
        sys.stderr.flush()
        os._exit(EXIT_REFUSED)

    lock.start_heartbeat(lost)
    return lock


def guard_chain(config: TrainConfig, history: list[dict[str, Any]], env: Mapping[str, str]) -> None:
    """ChainStopped after cancelling the chain's later jobs, when the segments before this
    one made no progress plan.max_stalled_segments times in a row."""
    limit = config.stalled_limit
    if limit <= 0:
        return
    run_dir = Path(env.get("PLANJOB_RUN_DIR") or Path(config.progress_path).parent)
    verdict = chain_guard.assess(history, run_dir, env.get("SLURM_JOB_ID") or None)
    if verdict.stalled < limit:
        return
    reason = chain_guard.reason(verdict)
    cancelled, result = chain_guard.cancel(verdict.later_jobs)
    if result is not None and not result.ok:
        reason += f"; cancelling the later jobs failed: {result.describe()}"
    tail = chain_guard.log_tail(
        chain_guard.log_path(run_dir, verdict.previous_job) if verdict.previous_job else None
    )
    with ProgressWriter(config.progress_path) as progress:
        progress.chain_stopped(verdict.newest_step, verdict.stalled, reason, cancelled, tail)
    later = ", ".join(cancelled) if cancelled else "none"
    say(f"chain stopped: {reason} (cancelled: {later})")
    raise ChainStopped(reason)


def check_room(config: TrainConfig, folder: Path) -> None:
    from jobs.training import checkpoint

    kept = [path.stat().st_size for _, path in checkpoint.list_checkpoints(folder)]
    size = max([config.checkpoint_bytes or 0, *kept[:1]])
    space.check_room(folder, config.keep_checkpoints, size, kept[: config.keep_checkpoints])


def prepare(
    config: TrainConfig,
    stop_at: float | None,
    set_aside: list[SetAside],
    watch: NoWatchdog,
    env: Mapping[str, str] = os.environ,
) -> Prepared:
    """Rank 0's start of a job: the lock, the chain's progress, room, the checkpoint."""
    from jobs.training import checkpoint

    folder = Path(config.checkpoint_dir)
    lock = take_lock(config, env, watch)
    try:
        watch.arm("startup")
        history = read_progress(config.progress_path, keep_steps=RECENT_STEPS)
        guard_chain(config, history, env)
        # Only now: with the lock held, no other trainer is writing one of these.
        checkpoint.remove_stale_temporaries(folder)
        check_room(config, folder)
        claim_folder(config, folder)
        resumed = newest_readable(folder, set_aside, lambda: watch.arm("load"))
        watch.arm("startup")
        if resumed is None:
            check_fresh_start(config, history, set_aside, folder)
        job = job_start(history, resumed, stop_at)
    except BaseException:
        lock.release()
        raise
    return Prepared(job, resumed, lock)
