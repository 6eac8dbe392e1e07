"""An exclusive claim on a folder about to be written, so two plan-job processes writing the
same run folder at once cannot both succeed.

Checking that a folder is absent and then renaming a finished copy into place is not enough:
rename(2) of a directory onto an existing *empty* one succeeds, and the second of two emits
sees the first's folder and replaces it. The claim is a file beside the folder, created with
O_CREAT | O_EXCL (atomic on local filesystems and on NFSv3+), naming the process that holds
it. One left by a process that died on this host is taken over; any other is reported. Torch-free.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from planner.errors import RunFolderBusyError


def lock_path(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.plan-job-lock"


@contextlib.contextmanager
def exclusive_claim(folder: Path, command: str) -> Iterator[None]:
    """Hold the claim on ``folder`` (resolved) for the duration; RunFolderBusyError naming
    the holder when another process has it."""
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
    mine["started"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    for attempt in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read(path)
            if attempt == 0 and _dead_here(holder):
                path.unlink(missing_ok=True)  # its process died without releasing it
                continue
            raise RunFolderBusyError(_busy(folder, path, holder)) from None
        with os.fdopen(fd, "w") as handle:
            json.dump(mine, handle)
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _read(path: Path) -> dict[str, object]:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # still being written, or not ours: reported as held
    return found if isinstance(found, dict) else {}


def _dead_here(holder: dict[str, object]) -> bool:
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def _busy(folder: Path, path: Path, holder: dict[str, object]) -> str:
    who = (
        f"a plan-job {holder.get('command', '?')} process (pid {holder.get('pid')} on "
        f"{holder.get('host')}, since {holder.get('started')})"
        if holder
        else "another plan-job process"
    )
    return (
        f"-o {folder}: {who} is writing this run folder now; nothing was written. Wait for it "
        f"and choose another -o, or, if no such process runs, delete {path}"
    )
