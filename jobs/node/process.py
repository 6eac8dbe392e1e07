"""A user's command as a process group on the node: started without a shell, in a process
group of its own that dies with this process, stopped with a signal, a grace and SIGKILL.
Standard library only: the calibration (jobs.calibration.command) and the training
(jobs.training.command) start the command the same way.

The command runs in a process group of its own, so one signal reaches it and everything it
started (torchrun's workers, DataLoader workers), and a kill leaves nothing behind. It also
gets SIGKILL from the kernel when the Python that started it dies (PR_SET_PDEATHSIG): a
job's python killed outright (scancel, OOM killer) must not leave a training running on the
node. The kernel sends that when the *thread* that started it ends, so start it from a
thread that lives as long as the wait (the main thread, here).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from jobs.node.signals import signal_group

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _load_prctl() -> Callable[..., int] | None:
    # Loaded once in the parent: a forked child should run as little as possible before exec.
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()


def _child_setup(parent: int) -> Callable[[], None]:
    prctl = _PRCTL

    def setup() -> None:
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            # The parent may have died between fork and prctl, which then never fires.
            if os.getppid() != parent:
                os._exit(1)

    return setup


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str | os.PathLike[str] | None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (no shell) in a new process group that dies with this process.

    OSError (FileNotFoundError, PermissionError) when the program cannot be started."""
    if not argv:
        raise ValueError("spawn: empty argument list")
    return subprocess.Popen(
        list(argv),
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        preexec_fn=_child_setup(os.getpid()),
    )


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_group(proc: subprocess.Popen[bytes], until: float) -> None:
    """Wait (until ``time.monotonic()`` reaches ``until``) for what is left of the child's
    process group once the child itself is reaped: a launcher such as torchrun may die of a
    stop signal that its workers handle by saving first."""
    while time.monotonic() < until and _group_alive(proc.pid):
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], signum: int, grace_s: float) -> int:
    """Send ``signum`` to the child's group, give the child and its group up to ``grace_s``
    to exit, then SIGKILL whatever is left of the group and reap the child; its returncode.

    A child that had exited already gets no grace: what is left of its group is killed at
    once. A KeyboardInterrupt (or any exception) during the grace still kills and reaps."""
    deadline = time.monotonic() + max(grace_s, 0.0)
    try:
        if proc.poll() is None:
            signal_group(proc, signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
            if proc.returncode is not None:
                wait_group(proc, deadline)
    finally:
        # Always: the child may be gone while workers it started (same group) linger.
        signal_group(proc, signal.SIGKILL)
        returncode = proc.wait()
    return returncode


def describe_status(status: int) -> str:
    """'exited with status 1' / 'was killed by SIGKILL', for messages."""
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"exited with status {status}"
