"""The progress lines a user's command appends while the launcher waits for it: what the hang
watchdog judges the command by. Standard library only.

Only the bytes appended since the last look are read, so that a progress file of a million
steps costs nothing per poll; a cut last line waits for its end.
"""

from __future__ import annotations

import json
import os


class ProgressTail:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._offset = os.path.getsize(path)  # the earlier jobs' lines are not this one's
        except OSError:
            self._offset = 0
        self._partial = b""
        self.last_step: int | None = None  # the last step line's step, once there is one
        self.lines = 0

    def poll(self) -> bool:
        """Read what was appended since the last call; True when a whole line came."""
        try:
            with open(self.path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                if size < self._offset:  # replaced or cut: read it again from the start
                    self._offset, self._partial = 0, b""
                if size == self._offset:
                    return False
                handle.seek(self._offset)
                data = handle.read(size - self._offset)
        except OSError:
            return False
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        for raw in complete:
            self._take(raw)
        return bool(complete)

    def _take(self, raw: bytes) -> None:
        self.lines += 1
        try:
            event = json.loads(raw)
        except ValueError:
            return
        if isinstance(event, dict) and event.get("event") == "step":
            step = event.get("step")
            if isinstance(step, int) and not isinstance(step, bool):
                self.last_step = step
