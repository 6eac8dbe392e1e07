"""What the launcher of a user's command does before it starts the command, as the built-in
training does (jobs.training.preflight): rank 0 takes the trainer lock, checks the chain's
progress and the checkpoint folder's room, and refuses to start from step 0 when the run's
progress file names checkpoints of which none is left. The other ranks start their command
only once rank 0 holds the lock for this very job. Standard library only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jobs.contract.failure import Refusal
from jobs.contract.train_config import TrainConfig
from jobs.node import space, trainer_lock
from jobs.node.watchdog import NoWatchdog
from jobs.training import preflight, trainer_state

FOLLOW_WAIT_S = 300.0  # how long another rank waits for rank 0 to take the lock


def prepare(
    config: TrainConfig,
    env: Mapping[str, str],
    watch: NoWatchdog,
    history: list[dict[str, Any]],
    resume_path: str | None,
) -> trainer_lock.TrainerLock:
    """Rank 0: the lock (Refusal), the chain guard (preflight.ChainStopped), room and a
    resumable checkpoint (Refusal)."""
    lock = preflight.take_lock(config, env, watch)
    try:
        watch.arm("startup")
        preflight.guard_chain(config, history, env)
        _check_room(config, history)
        if resume_path is None:
            _check_fresh_start(config, history)
    except BaseException:
        lock.release()
        raise
    return lock


def _saved(history: list[dict[str, Any]]) -> list[tuple[int, str, int]]:
    """(step, path, bytes) of the progress file's checkpoint lines, oldest first."""
    found = []
    for event in history:
        step, path, size = event.get("step"), event.get("path"), event.get("bytes")
        if event.get("event") != "checkpoint" or not isinstance(path, str) or not path:
            continue
        if isinstance(step, int) and not isinstance(step, bool):
            found.append((step, path, size if isinstance(size, int) and size > 0 else 0))
    return found


def _check_room(config: TrainConfig, history: list[dict[str, Any]]) -> None:
    trainer = config.work.report == "trainer_state"
    folder = Path(config.work.output_dir if trainer else config.checkpoint_dir)
    if trainer:
        folders = trainer_state.list_checkpoints(folder)[-config.keep_checkpoints :]
        kept = [_tree_bytes(Path(f.path)) for f in folders]
    else:
        latest: dict[str, int] = {}
        for _step, path, size in _saved(history):
            if Path(path).exists():
                latest[path] = size
        kept = list(latest.values())[-config.keep_checkpoints :]
    saved = [size for _, _, size in _saved(history)]
    size = max([config.checkpoint_bytes or 0, *saved[-1:]])
    space.check_room(folder, config.keep_checkpoints, size, kept)


def _tree_bytes(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                continue
    return total


def _check_fresh_start(config: TrainConfig, history: list[dict[str, Any]]) -> None:
    saved = [(step, path) for step, path, _ in _saved(history) if step > 0]
    if not saved:
        return
    step, path = max(saved)
    where = f"the progress file records a checkpoint of step {step:,} at {path}"
    if config.work.report == "trainer_state":
        where += (
            f", and {config.work.output_dir} holds no checkpoint-N folder with a trainer_state.json"
        )
    else:
        where += f"; none of the {len(saved)} checkpoint(s) it names is left"
    if config.restart_from_scratch:
        preflight.say(f"restart_from_scratch: starting over from step 0 although {where}")
        return
    raise Refusal(
        "no_checkpoint_loads",
        f"no checkpoint to resume from, and the run is past step 0: {where}. Refusing to "
        f"start over from step 0 silently: restore the checkpoint, or start over on purpose "
        f"with `python -m jobs.train --restart-from-scratch` (train.json: "
        f'"restart_from_scratch": true)',
    )


def follow_rank_0(
    config: TrainConfig, env: Mapping[str, str], wait_s: float = FOLLOW_WAIT_S
) -> str | None:
    """Another rank: wait until rank 0 holds the lock for this job; None then, else why not.
    Outside Slurm (no job id to match) it does not wait."""
    job_id = env.get("SLURM_JOB_ID") or None
    if job_id is None:
        return None
    restart = env.get("SLURM_RESTART_COUNT", "0").strip()
    attempt = int(restart) if restart.isdigit() else 0
    folder = Path(config.checkpoint_dir)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        holder = trainer_lock.read_holder(folder)
        if holder is not None and (holder.job_id, holder.restart) == (job_id, attempt):
            return None
        time.sleep(0.5)
    return (
        f"rank 0 did not take the run's lock ({folder / trainer_lock.LOCK_FILE}) for job "
        f"{job_id} within {wait_s:.0f} s: it refused to start (see its error)"
    )
