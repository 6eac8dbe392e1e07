"""The stop signals on the node: SIGUSR2, which plan-job's scripts ask Slurm to send before
the time limit (Lightning keeps USR1 for its own requeue), and SIGTERM, which Slurm sends at
the limit and torchrun forwards. Standard library only.
"""

from __future__ import annotations

import signal
import subprocess
import time

from jobs.node.process import signal_group

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


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
