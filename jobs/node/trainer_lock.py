"""One trainer per run: a lock file in the checkpoint folder that names the trainer holding it
and carries its heartbeat. Standard library only.

Two trainers on one checkpoint folder write over each other's checkpoints and progress: an
orphan left running on a node whose slurmd died while Slurm requeued its job (NODE_FAIL), a
job started by hand beside the chain. Rank 0 of every job takes the lock before it loads
anything and refreshes its heartbeat from a thread while it trains; the file goes when the
trainer exits. A second trainer that finds the lock waits to see whether the heartbeat moves:
if it does, the holder is alive and the newcomer refuses (Refusal, cause trainer_running,
exit 2); if it goes stale (or the holder's pid is gone from this very host), the newcomer
takes the lock over and says so. A requeued job has the same job id and a higher
SLURM_RESTART_COUNT, so the lock tells its attempts apart.

The file, ``<checkpoint_dir>/.plan-job-trainer.json``, written atomically (temp + rename):
``{"job_id", "restart", "host", "pid", "started", "heartbeat", "heartbeat_s",
"stale_after_s"}``; fresh while now - heartbeat < stale_after_s.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from jobs.contract.failure import Refusal

LOCK_FILE = ".plan-job-trainer.json"
DEFAULT_HEARTBEAT_S = 30.0


def stale_after(heartbeat_s: float) -> float:
    """How long a heartbeat stays fresh: several beats, so that a slow filesystem or a busy
    node does not make a live trainer look dead."""
    return max(4 * heartbeat_s, heartbeat_s + 5)


@dataclass(frozen=True)
class Holder:
    job_id: str | None
    restart: int
    host: str
    pid: int
    started: float
    heartbeat: float
    heartbeat_s: float
    stale_after_s: float

    @classmethod
    def me(cls, env: Mapping[str, str], heartbeat_s: float) -> Holder:
        now = time.time()
        restart = env.get("SLURM_RESTART_COUNT", "0").strip()
        return cls(
            job_id=env.get("SLURM_JOB_ID") or None,
            restart=int(restart) if restart.isdigit() else 0,
            host=socket.gethostname(),
            pid=os.getpid(),
            started=now,
            heartbeat=now,
            heartbeat_s=heartbeat_s,
            stale_after_s=stale_after(heartbeat_s),
        )

    @classmethod
    def from_dict(cls, raw: Any) -> Holder | None:
        if not isinstance(raw, dict):
            return None
        try:
            holder = cls(
                job_id=None if raw.get("job_id") is None else str(raw["job_id"]),
                restart=int(raw.get("restart", 0)),
                host=str(raw["host"]),
                pid=int(raw["pid"]),
                started=float(raw["started"]),
                heartbeat=float(raw["heartbeat"]),
                heartbeat_s=float(raw["heartbeat_s"]),
                stale_after_s=float(raw["stale_after_s"]),
            )
        except (KeyError, TypeError, ValueError):
            return None
        numbers = (holder.heartbeat, holder.heartbeat_s, holder.stale_after_s)
        return holder if all(math.isfinite(n) for n in numbers) else None

    def same_trainer(self, other: Holder) -> bool:
        return (self.host, self.pid, self.started) == (other.host, other.pid, other.started)

    def fresh(self, now: float) -> bool:
        return now - self.heartbeat < self.stale_after_s

    def describe(self, now: float) -> str:
        job = f"job {self.job_id}" if self.job_id else "a trainer outside Slurm"
        if self.job_id and self.restart:
            job += f" (restart {self.restart})"
        return (
            f"{job} on {self.host} pid {self.pid}, heartbeat {max(now - self.heartbeat, 0):.0f} s "
            f"ago"
        )


def read_holder(folder: Path) -> Holder | None:
    """The lock's holder; None when there is no lock or it is not one (a torn write)."""
    try:
        text = (folder / LOCK_FILE).read_text(encoding="utf-8")
    except OSError:
        return None
    try:
        return Holder.from_dict(json.loads(text))
    except ValueError:
        return None


def _write(folder: Path, holder: Holder) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f"{LOCK_FILE}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(asdict(holder), handle)
        os.replace(tmp, folder / LOCK_FILE)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TrainerLock:
    """The lock, held: its heartbeat thread and its release."""

    def __init__(self, folder: Path, holder: Holder) -> None:
        self.folder, self.holder = folder, holder
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost_to: Holder | None = None  # who took the lock over while this one held it

    def start_heartbeat(self, on_lost: Callable[[Holder], None]) -> None:
        """Refresh the heartbeat every heartbeat_s from a daemon thread; ``on_lost`` is called
        (from that thread) when another trainer has taken the lock over."""

        def beat() -> None:
            while not self._stop.wait(self.holder.heartbeat_s):
                if not self.refresh():
                    if self.lost_to is not None:
                        on_lost(self.lost_to)
                    return

        self._thread = threading.Thread(target=beat, name="plan-job-lock-heartbeat", daemon=True)
        self._thread.start()

    def refresh(self) -> bool:
        """Write a new heartbeat; False when the lock is no longer this trainer's."""
        current = read_holder(self.folder)
        if current is not None and not current.same_trainer(self.holder):
            self.lost_to = current
            return False
        self.holder = replace(self.holder, heartbeat=time.time())
        try:
            _write(self.folder, self.holder)
        except OSError as exc:  # a full or stuck disk: the next beat tries again
            print(f"plan-job train: warning: cannot refresh {LOCK_FILE}: {exc}", file=sys.stderr)
        return True

    def release(self) -> None:
        """Stop the heartbeat and remove the file, if it still names this trainer."""
        self._stop.set()
        current = read_holder(self.folder)
        if current is not None and current.same_trainer(self.holder):
            with contextlib.suppress(OSError):
                (self.folder / LOCK_FILE).unlink()


def acquire(
    folder: Path,
    me: Holder,
    say: Callable[[str], None],
    on_wait: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> TrainerLock:
    """Take the run's lock for ``me``, waiting to tell a live holder from a dead one.

    Refusal (cause trainer_running, the holder's fields in ``holder``) when the holder's
    heartbeat moves while this waits; a lock whose heartbeat stops is taken over once it is
    stale, one whose holder's pid is gone from this host at once."""
    folder.mkdir(parents=True, exist_ok=True)
    first: Holder | None = None
    while True:
        holder = read_holder(folder)
        now = clock()
        if holder is None:
            if (folder / LOCK_FILE).exists():
                say(f"{folder / LOCK_FILE} is not a lock plan-job wrote; taking it over")
            break
        if holder.same_trainer(me):
            break
        if not holder.fresh(now):
            say(
                f"taking over the run's lock from {holder.describe(now)}: stale (no heartbeat "
                f"for {holder.stale_after_s:.0f} s)"
            )
            break
        if holder.host == me.host and not _pid_alive(holder.pid):
            say(f"taking over the run's lock from {holder.describe(now)}: that process is gone")
            break
        if first is None:
            first = holder
            say(
                f"the run's lock is held by {holder.describe(now)}; waiting to see whether its "
                f"heartbeat moves (up to {holder.stale_after_s:.0f} s)"
            )
        elif not holder.same_trainer(first) or holder.heartbeat > first.heartbeat:
            raise Refusal(
                "trainer_running",
                f"another trainer is running this run: {holder.describe(now)} (lock "
                f"{folder / LOCK_FILE}); two trainers would write over each other's "
                f"checkpoints. Stop it (scancel its job, or kill pid {holder.pid} on "
                f"{holder.host}) and resubmit; a lock whose heartbeat stops is taken over "
                f"after {holder.stale_after_s:.0f} s",
                holder=asdict(holder),
            )
        until_stale = holder.heartbeat + holder.stale_after_s - now
        on_wait()  # waiting here is not a hang
        sleep(max(min(holder.heartbeat_s / 2, until_stale + 0.1), 0.05))
    mine = replace(me, heartbeat=clock())
    _write(folder, mine)
    return TrainerLock(folder, mine)
