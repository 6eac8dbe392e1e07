"""The stop signals on the node: SIGUSR2, which plan-job's scripts ask Slurm to send before
the time limit (Lightning keeps USR1 for its own requeue), and SIGTERM, which Slurm sends at
the limit and torchrun forwards. The built-in training keeps them as a request to stop
(StopRequest); the launcher of a user's command forwards them to its process group
(Forwarder); jobs.report's Reporter keeps its own, chained to a script's handlers. Standard
library only.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess


STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
# What the launcher sends a user's command whose progress lines stopped, before it kills it:
# a process that registered dump_stacks_on_signal() (jobs.report's Reporter does) writes every
# thread's stack to its stderr, the job's log. SIGURG because its default is to be ignored:
# a process that did not register loses nothing.
STACK_DUMP_SIGNAL = signal.SIGURG


def dump_stacks_on_signal() -> bool:
    """Have STACK_DUMP_SIGNAL dump every thread's Python stack to stderr (faulthandler, which
    works while the main thread is stuck in C code). Not when a handler is set already."""
    if signal.getsignal(STACK_DUMP_SIGNAL) not in (signal.SIG_DFL, None):
        return False
    try:
        faulthandler.register(STACK_DUMP_SIGNAL, all_threads=True, chain=False)
    except (RuntimeError, ValueError, OSError):  # no usable stderr (closed, not a file)
        return False
    return True


class StopRequest:
    """Set by SIGUSR2/SIGTERM; the loop looks at it between steps, never inside one."""

    def __init__(self) -> None:
        self.signal: str | None = None

    @property
    def signum(self) -> int:
        return 0 if self.signal is None else int(signal.Signals[self.signal])

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self.signal = signal.Signals(signum).name

    @staticmethod
    def ignore_from_now() -> None:
        # Interpreter shutdown resets Python-level handlers to the default, which for USR2 and
        # TERM is to die: a signal that lands while torch tears down would turn a finished run
        # into exit 140. SIG_IGN survives shutdown, and the work is saved by then.
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


def signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(proc.pid, signum)


class Forwarder:
    """SIGUSR2/SIGTERM handlers that pass the signal on to the command's process group."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.signal: str | None = None
        self.reason: str | None = None  # "signal" or "time_limit"
        self.forwarded_at: float | None = None
        self.delivered = False  # the command's group has been sent the signal

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self.forward(signum, "signal")

    def forward(self, signum: int, reason: str) -> None:
        if self.signal is None:
            self.signal, self.reason = signal.Signals(signum).name, reason
            self.forwarded_at = time.monotonic()
        proc = self.proc
        if proc is not None and proc.returncode is None:
            signal_group(proc, signum)
            self.delivered = True
