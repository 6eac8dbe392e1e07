"""One live line on a terminal; a line per change (or per 30 s) in a log file. The
calibration's job status and the run's progress bar (planner.eta.progress_bar) both use it."""

from __future__ import annotations

import sys
import time
from typing import Any

REPEAT_S = 30.0  # off a terminal, an unchanged line is written again after this long


class StatusLine:
    """One live line on a terminal; a line per change (or per 30 s) in a log file."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last_text = ""
        self.last_time = 0.0

    def show(self, text: str, key: str) -> None:
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
        elif key != self.last_text or now - self.last_time > REPEAT_S:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last_time = now
        self.last_text = key

    def close(self) -> None:
        if self.tty and self.last_text:
            self.stream.write("\n")
            self.stream.flush()
