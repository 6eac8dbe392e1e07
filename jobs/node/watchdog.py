"""The hang watchdog: a thread that ends a rank stuck in one phase of its job for longer than
that phase's timeout. Standard library only.

A rank stuck in a collective (a dead peer), on a stuck filesystem or in a deadlocked data
loader would otherwise sit until the job's --time runs out, and the end signal cannot save a
checkpoint from a hung step. The training arms the watchdog at each phase (startup, load,
compile, each step, save, evaluation; a user's command: each progress line) with the
timeout train.json gives it (jobs.contract.hang). When one expires, the watchdog thread
writes a `hang` progress event (phase, step, how long, this rank), dumps every thread's stack
into the job's log (faulthandler), runs its clean-ups (the trainer lock, a command's process
group) and exits the process with EXIT_HANG, whatever the main thread is doing: the next
segment of the chain resumes from the newest checkpoint. Each rank has its own watchdog, so
in a job of several ranks every stuck rank says so, naming itself.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from collections.abc import Callable

from jobs.contract.failure import EXIT_HANG
from jobs.contract.hang import HangTimeouts
from jobs.progress import ProgressWriter

# What the watchdog thread waits, at most, for a clean-up or the progress line: a hung
# filesystem must not hang the watchdog too.
CLEANUP_WAIT_S = 10.0
# In a job of several ranks, after its own line and stacks, before it exits: srun kills the
# others when one exits, and they are about to say where they are stuck too.
PEERS_WAIT_S = 2.0


class NoWatchdog:
    """What the code arms when train.json has no hang timeouts: nothing happens."""

    step = 0

    def arm(self, phase: str, step: int | None = None, extra_s: float = 0.0) -> None:
        if step is not None:
            self.step = step

    def add_cleanup(self, cleanup: Callable[[], None]) -> None:
        pass

    def hold_if_fired(self) -> None:
        """Never return once the watchdog has fired (it is ending the process)."""

    def close(self) -> None:
        pass


class Watchdog(NoWatchdog):
    def __init__(
        self,
        timeouts: HangTimeouts,
        progress_path: str,
        rank: int,
        ranks: int,
        exit_process: Callable[[int], None] = os._exit,
    ) -> None:
        self.timeouts, self.progress_path = timeouts, progress_path
        self.rank, self.ranks = rank, ranks
        self._exit = exit_process
        self._cond = threading.Condition()
        self._phase: str | None = None
        self._armed_at = 0.0
        self._timeout = 0.0
        self._closed = False
        self._cleanups: list[Callable[[], None]] = []
        self.step = 0
        self.fired: tuple[str, int, float, float] | None = None  # for tests: what expired
        self._thread = threading.Thread(target=self._watch, name="plan-job-watchdog", daemon=True)
        self._thread.start()

    def arm(self, phase: str, step: int | None = None, extra_s: float = 0.0) -> None:
        """From now, allow ``phase``'s timeout (plus ``extra_s``) before the next arm."""
        self.hold_if_fired()
        with self._cond:
            self._phase = phase
            if step is not None:
                self.step = step
            self._armed_at = time.monotonic()
            # After the last save the process only exits: as long as it took to start.
            base = self.timeouts.timeout("startup" if phase == "exit" else phase)
            self._timeout = base + extra_s
            self._cond.notify()

    def add_cleanup(self, cleanup: Callable[[], None]) -> None:
        self._cleanups.append(cleanup)

    def hold_if_fired(self) -> None:
        # A step that was only very late (a node starved for a minute) can return while the
        # watchdog is already saying it hung: it must not go on to save or write a stop line
        # behind the hang line, nor end the process with another status than EXIT_HANG.
        while self.fired is not None:
            time.sleep(3600)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                if self._phase is None:
                    self._cond.wait()
                    continue
                left = self._armed_at + self._timeout - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                phase, step = self._phase, self.step
                waited, timeout = time.monotonic() - self._armed_at, self._timeout
                break
            else:
                return
        self._fire(phase, step, waited, timeout)

    def _fire(self, phase: str, step: int, waited: float, timeout: float) -> None:
        self.fired = (phase, step, waited, timeout)  # first: the main thread holds from now
        who = f"rank {self.rank}/{self.ranks}: " if self.ranks > 1 else ""
        print(
            f"plan-job train: {who}hang watchdog: no progress in phase {phase!r} for "
            f"{waited:.1f} s (its timeout {timeout:.1f} s), after step {step}; the stacks of "
            f"every thread follow, then this rank exits {EXIT_HANG} and the next segment "
            f"resumes from the newest checkpoint",
            file=sys.stderr,
            flush=True,
        )
        _bounded(lambda: self._write_event(phase, step, waited, timeout), "the hang line")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        for cleanup in reversed(self._cleanups):  # the command's kill before the lock's release
            _bounded(cleanup, "a clean-up")
        if self.ranks > 1:
            time.sleep(PEERS_WAIT_S)
        sys.stdout.flush()
        sys.stderr.flush()
        self._exit(EXIT_HANG)

    def _write_event(self, phase: str, step: int, waited: float, timeout: float) -> None:
        with ProgressWriter(self.progress_path) as progress:
            progress.hang(step, phase, round(waited, 3), round(timeout, 3), self.rank)


def _bounded(action: Callable[[], None], what: str) -> None:
    """Run ``action`` in a thread of its own and wait for it at most CLEANUP_WAIT_S."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:  # reported below: the exit must go on
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(CLEANUP_WAIT_S)
    if worker.is_alive():
        print(f"plan-job train: {what} did not finish in {CLEANUP_WAIT_S:.0f} s", file=sys.stderr)
    elif errors:
        print(f"plan-job train: {what} failed: {errors[0]!r}", file=sys.stderr)


def make_watchdog(
    timeouts: HangTimeouts | None, progress_path: str, rank: int, ranks: int
) -> NoWatchdog:
    if timeouts is None:
        return NoWatchdog()
    return Watchdog(timeouts, progress_path, rank, ranks)
