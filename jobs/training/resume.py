"""Where one job of a run starts: the newest checkpoint that still loads (a torn one is set
aside), what the progress file says of the run's earlier jobs (how many, their last step,
save and evaluation times), and the checkpoint folder's owner mark. Rank 0 finds these and
tells every other rank (JobStart); torch is imported only to read a checkpoint.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.contract.checkpoint_owner import Owner, read_owner, write_owner
from jobs.contract.failure import NodeError, Refusal
from jobs.contract.train_config import TrainConfig
from jobs.progress import restart_count

RECENT_STEPS = 5  # the next step is assumed to take as long as the slowest of these


@dataclass(frozen=True)
class Resumed:
    step: int
    path: Path
    state: dict[str, Any]
    read_s: float


@dataclass(frozen=True)
class JobStart:
    """What rank 0 finds on disk at the start of a job, and tells every other rank."""

    restart: int  # how many jobs of the run came before this one
    step: int  # the step resumed from (0: a fresh start)
    path: str | None  # the checkpoint resumed from
    step_times: tuple[float, ...]  # the previous jobs' last step times
    save_s: float | None  # the previous jobs' last save time
    eval_s: float | None  # the previous jobs' last evaluation time
    # Rank 0's, for all: the stop time is the job's, and ranks that disagreed on having one
    # would disagree on the (collective) probe save.
    stop_at: float | None


@dataclass(frozen=True)
class SetAside:
    """A checkpoint that failed its checksum or did not load, renamed to ``*.bad``."""

    path: Path
    moved_to: Path
    reason: str
    step: int


def newest_readable(
    folder: Path,
    set_aside: list[SetAside] | None = None,
    on_try: Callable[[], None] = lambda: None,
) -> Resumed | None:
    """The newest checkpoint that passes its checksum and loads; the others (torn by a kill, a
    full disk, a flipped bit) are renamed to ``*.bad``, so that they neither shadow nor
    outlive the checkpoints after them, and listed in ``set_aside``. A checkpoint written
    before checkpoints carried a checksum loads unchecked, and the log says so once."""
    from jobs.training import checkpoint, checksum

    unchecked: list[Path] = []
    for step, path in checkpoint.list_checkpoints(folder):
        on_try()  # the hang watchdog allows each checkpoint its own load time
        start = time.perf_counter()
        try:
            if not checksum.verify(path):
                unchecked.append(path)
            state = checkpoint.read_state(path, "cpu")
            if state.get("step") != step:
                raise ValueError(f"it holds step {state.get('step')!r}, its name says {step}")
        except Exception as exc:  # a torn file fails in torch.load's many ways
            reason = str(exc) if isinstance(exc, checksum.ChecksumMismatch) else _error(exc)
            bad = path.with_name(path.name + ".bad")
            print(
                f"plan-job train: warning: cannot load {path} ({reason}); renamed it to "
                f"{bad.name}, trying the next older checkpoint",
                file=sys.stderr,
            )
            path.replace(bad)
            if set_aside is not None:
                set_aside.append(SetAside(path, bad, reason, step))
            continue
        if unchecked:
            print(
                f"plan-job train: {unchecked[-1].name} carries no checksum (written before "
                f"plan-job checked them); loaded it unchecked",
                file=sys.stderr,
            )
        return Resumed(step, path, state, time.perf_counter() - start)
    return None


def _error(exc: BaseException) -> str:
    first = (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:300]


def read_chosen(path: Path, step: int) -> Resumed:
    """The checkpoint rank 0 chose, read by another rank."""
    from jobs.training import checkpoint

    start = time.perf_counter()
    try:
        state = checkpoint.read_state(path, "cpu")
    except Exception as exc:
        raise NodeError(
            "checkpoint",
            f"cannot read {path}, which rank 0 read: {type(exc).__name__}: {exc}",
        ) from exc
    return Resumed(step, path, state, time.perf_counter() - start)


def job_start(
    history: list[dict[str, Any]], resumed: Resumed | None, stop_at: float | None
) -> JobStart:
    # Until this job has timed its own, the previous jobs' times are the best guess.
    past_steps = [e["step_s"] for e in history if e["event"] == "step"]
    past_saves = [e["save_s"] for e in history if e["event"] == "checkpoint"]
    past_evals = [e["eval_s"] for e in history if e["event"] == "eval"]
    return JobStart(
        restart=restart_count(history),
        step=resumed.step if resumed is not None else 0,
        path=str(resumed.path) if resumed is not None else None,
        step_times=tuple(past_steps[-RECENT_STEPS:]),
        save_s=past_saves[-1] if past_saves else None,
        eval_s=past_evals[-1] if past_evals else None,
        stop_at=stop_at,
    )


def claim_folder(config: TrainConfig, folder: Path) -> None:
    """Mark an unclaimed checkpoint folder as this run's: `plan-job submit` claims it before
    the first job, a run started by hand (`python -m jobs.train train.json`) claims it here,
    so that a later run with another folder's id is warned before it resumes from these."""
    if config.run_id and read_owner(folder) is None:
        write_owner(folder, Owner(config.run_id, str(Path(config.progress_path).parent)))


def check_fresh_start(
    config: TrainConfig,
    history: list[dict[str, Any]],
    set_aside: list[SetAside],
    folder: Path,
    pattern: str = "ckpt-*.pt.bad",
) -> None:
    """No checkpoint loads: a Refusal (no_checkpoint_loads, exit 2) when the run is past step 0
    by its progress file or its checkpoint folder, never a silent start from step 0; unless
    train.json says restart_from_scratch (or ``--restart-from-scratch``), which starts over."""
    saved = [
        (e["step"], str(e.get("path")))
        for e in history
        if e.get("event") == "checkpoint" and isinstance(e.get("step"), int) and e["step"] > 0
    ]
    earlier_bad = sorted(
        p.name for p in folder.glob(pattern) if p not in {s.moved_to for s in set_aside}
    )
    if not saved and not set_aside and not earlier_bad:
        return  # a new run
    what = []
    if saved:
        step, path = max(saved)
        state = "still there" if Path(path).exists() else "gone"
        name = Path(path).name if Path(path).parent == folder else path
        what.append(f"the progress file records {name}, a checkpoint of step {step:,} ({state})")
    for item in set_aside:
        # The event's message has 500 characters; the log has each error whole above.
        reason = item.reason if len(item.reason) <= 50 else item.reason[:47] + "..."
        what.append(f"{item.path.name}: {reason} (now .bad)")
    if earlier_bad:
        more = f" and {len(earlier_bad) - 3} more" if len(earlier_bad) > 3 else ""
        what.append(f"set aside by earlier jobs: {', '.join(earlier_bad[:3])}{more}")
    found = "; ".join(what)
    if config.restart_from_scratch:
        print(
            f"plan-job train: restart_from_scratch: starting over from step 0 although the "
            f"run is past it ({found})",
            file=sys.stderr,
        )
        return
    raise Refusal(
        "no_checkpoint_loads",
        f"no checkpoint in {folder} loads, and the run is past step 0: {found}. Not starting "
        f"over silently: restore a good checkpoint, or start over with --restart-from-scratch "
        f"(train.json: restart_from_scratch)",
    )
