"""SIGTERM and SIGHUP end plan-job the way Ctrl-C does: as a KeyboardInterrupt, so every path
that cancels what plan-job submitted on Ctrl-C (a calibration job, a half-submitted chain)
runs for `kill`, `timeout` and a closed login shell too. Without this, Python dies on them
at once and leaves the local calibration running and the Slurm one queued.
"""

from __future__ import annotations

import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    # The clean-up that follows (scancel, waiting for the local job) must not be cut short
    # by the same signal sent again, as `timeout` and shells do; SIGKILL still ends it.
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def install() -> None:
    """Make SIGTERM and SIGHUP raise KeyboardInterrupt (its argument the signal's name)."""
    for stop in STOP_SIGNALS:
        if signal.getsignal(stop) is not signal.SIG_IGN:  # nohup: leave SIGHUP ignored
            signal.signal(stop, _interrupt)


def interrupted_by(exc: BaseException) -> str:
    """' by SIGTERM' for a KeyboardInterrupt raised by _interrupt; '' for Ctrl-C."""
    name = exc.args[0] if exc.args else ""
    return f" by {name}" if isinstance(name, str) and name.startswith("SIG") else ""
