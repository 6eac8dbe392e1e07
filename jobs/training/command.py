"""Running the user's own training command on the node. Standard library only.

``python -m jobs.train train.json`` hands over to run_training() when train.json carries a
``command``: it fills in the command's fields (jobs.contract.command_fields), starts it,
forwards the stop signals and waits. The calibration (jobs.calibration.command) starts it the
same way.

The command runs in a process group of its own, so one signal reaches it and everything it
started (torchrun's workers, DataLoader workers), and a kill leaves nothing behind. It also
gets SIGKILL from the kernel when the Python that started it dies (PR_SET_PDEATHSIG): a
job's python killed outright (scancel, OOM killer) must not leave a training running on the
node. The kernel sends that when the *thread* that started it ends, so start it from a
thread that lives as long as the wait (the main thread, here).

With ``report: trainer_state`` (an unchanged Hugging Face Trainer script) the command writes
no progress lines; this launcher writes them for it from the Trainer's checkpoint-N folders,
so that eta and resubmit read such a run as they read any other.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from jobs.contract.command_fields import environment, render
from jobs.contract.train_config import TrainConfig
from jobs.progress import ProgressWriter, read_progress, restart_count
from jobs.training import trainer_state

EXIT_OK, EXIT_FAILED = 0, 1
STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_S = 1.0  # how often the launcher looks at the Trainer's output_dir


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


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(proc.pid, signum)


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
            _signal_group(proc, signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
            if proc.returncode is not None:
                wait_group(proc, deadline)
    finally:
        # Always: the child may be gone while workers it started (same group) linger.
        _signal_group(proc, signal.SIGKILL)
        returncode = proc.wait()
    return returncode


def resume_from(config: TrainConfig) -> tuple[int, str | None]:
    """The checkpoint the command should resume from: (step, path), or (0, None).

    ``progress``: the highest-step ``checkpoint`` line of the progress file whose path still
    exists (older ones are pruned, or lost with a scratch disk). ``trainer_state``: the
    newest checkpoint-N folder of output_dir holding a trainer_state.json."""
    if config.report == "trainer_state":
        folder = trainer_state.newest_checkpoint(config.output_dir)
        return (folder.step, folder.path) if folder is not None else (0, None)
    best: tuple[int, str | None] = (0, None)
    for event in read_progress(config.progress_path):
        step, path = event.get("step"), event.get("path")
        if event.get("event") != "checkpoint" or not isinstance(path, str) or not path:
            continue
        if not isinstance(step, int) or isinstance(step, bool):
            continue
        if step >= best[0] and Path(path).exists():
            best = (step, path)
    return best


def world_size(env: Mapping[str, str]) -> int:
    """Ranks of the job: WORLD_SIZE (torchrun), else SLURM_NTASKS, else 1."""
    for name in ("WORLD_SIZE", "SLURM_NTASKS"):
        try:
            value = int(env.get(name, ""))
        except ValueError:
            continue
        if value > 0:
            return value
    return 1


def _is_rank_zero(env: Mapping[str, str]) -> bool:
    rank = env.get("RANK") or env.get("SLURM_PROCID") or "0"
    return rank.strip() == "0"


def field_values(
    *,
    total_steps: int,
    checkpoint_dir: str,
    checkpoint_interval_steps: int,
    resume_from: str | None,
    progress_path: str,
    stop_at: float | None,
    eval_interval_steps: int,
    micro_batch: int,
    grad_accum: int,
    seed: int,
    output_dir: str,
    ranks: int,
) -> dict[str, object]:
    """The values of every field of jobs.contract.command_fields.FIELDS."""
    return {
        "total_steps": total_steps,
        "checkpoint_dir": checkpoint_dir,
        "checkpoint_interval_steps": checkpoint_interval_steps,
        "resume_from": resume_from or "",
        "progress_path": progress_path,
        "stop_at": "" if stop_at is None else repr(float(stop_at)),
        "eval_interval_steps": eval_interval_steps,
        "micro_batch": micro_batch,
        "grad_accum": grad_accum,
        "global_batch": micro_batch * grad_accum * ranks,
        "seed": seed,
        "output_dir": output_dir,
    }


class TrainerStateRelay:
    """Turns a Trainer's new checkpoint-N folders into progress lines: per folder a ``step``
    line (step_s: the mean step time since the previous save ended, or since ``since_time``
    for the first) and a ``checkpoint`` line (save_s and bytes from the folder's files).

    A folder is taken at the first look that finds its trainer_state.json, which the Trainer
    writes at the end of a save: waiting for a second look would lose folders that
    save_total_limit deletes within a poll or two when steps are fast. Folders that were
    there before (earlier jobs) are not this job's."""

    def __init__(
        self,
        output_dir: str,
        writer: ProgressWriter,
        since_step: int,
        since_time: float,
        samples_per_step: int,
    ) -> None:
        self.output_dir, self.writer = output_dir, writer
        self.last_step, self.last_end = since_step, since_time
        self.samples_per_step = samples_per_step
        # Earlier jobs' folders. One above since_step is a save cut short (no
        # trainer_state.json): this job writes it anew.
        folders = trainer_state.checkpoint_folders(output_dir)
        self._seen = {step for step, _ in folders if step <= since_step}
        self._warned = False

    def poll(self) -> list[trainer_state.CheckpointFolder]:
        """Write the lines of the folders completed since the last call; returns them."""
        written = []
        for step, path in trainer_state.checkpoint_folders(self.output_dir):
            if step in self._seen:
                continue
            if step <= self.last_step:
                self._seen.add(step)
                self._warn_behind(step)
                continue
            folder = trainer_state.describe(path, step)
            if folder is None:
                continue  # being written, or a save an earlier job's end cut short
            self._seen.add(step)
            self._write(folder)
            written.append(folder)
        return written

    def _write(self, folder: trainer_state.CheckpointFolder) -> None:
        steps = folder.step - self.last_step
        step_s = max(folder.save_start - self.last_end, 0.0) / steps
        loss = trainer_state.loss_at(folder.state, folder.step)
        samples = folder.step * self.samples_per_step
        self.writer.step(folder.step, samples, 0, step_s, loss)
        self.writer.checkpoint(folder.step, folder.save_s, folder.path, folder.nbytes)
        self.last_step, self.last_end = folder.step, folder.save_end

    def _warn_behind(self, step: int) -> None:
        if not self._warned:
            self._warned = True
            print(
                f"plan-job: warning: the command saved checkpoint-{step} behind step "
                f"{self.last_step}: it did not resume; pass {{resume_from}} to the Trainer's "
                "resume_from_checkpoint",
                file=sys.stderr,
            )


class _Forwarder:
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
            _signal_group(proc, signum)
            self.delivered = True


def run_training(config: TrainConfig, stop_at: float | None, signalled: str | None = None) -> int:
    """One job of a run whose training is the user's command; its exit status.

    ``signalled``: the name of a stop signal that came before this was called (the command
    is then not started). 0 when the command ended well or was stopped by a forwarded signal
    (or by the stop time, with ``report: trainer_state``); else the command's status, 128+n
    for death by signal n; 1 when it cannot be started."""
    forwarder = _Forwarder()
    forwarder.install()
    trainer = config.report == "trainer_state"
    env = os.environ
    first, path = resume_from(config)
    ranks = world_size(env)
    values = field_values(
        total_steps=config.total_steps,
        checkpoint_dir=config.checkpoint_dir,
        checkpoint_interval_steps=config.checkpoint_interval_steps,
        resume_from=path,
        progress_path=config.progress_path,
        stop_at=stop_at,
        eval_interval_steps=config.eval_interval_steps,
        micro_batch=config.micro_batch,
        grad_accum=config.grad_accum,
        seed=config.seed,
        output_dir=config.output_dir,
        ranks=ranks,
    )
    argv = render(config.command, values)
    writer = None
    if trainer and _is_rank_zero(env):
        restart = restart_count(read_progress(config.progress_path))
        writer = ProgressWriter(config.progress_path)
        writer.start(first, config.total_steps, restart)
    try:
        if signalled is not None:
            return _not_started(signalled, writer, first)
        return _run(config, stop_at, argv, {**env, **environment(values)}, forwarder, writer, first)
    finally:
        if writer is not None:
            writer.close()


def _not_started(signal_name: str, writer: ProgressWriter | None, step: int) -> int:
    print(
        f"plan-job train: {signal_name} came before the command started; not starting it",
        file=sys.stderr,
    )
    if writer is not None:
        writer.stop(step, "signal", signal_name)
    return EXIT_OK


def _run(
    config: TrainConfig,
    stop_at: float | None,
    argv: list[str],
    env: dict[str, str],
    forwarder: _Forwarder,
    writer: ProgressWriter | None,
    first: int,
) -> int:
    resumed = f", resuming step {first}" if first else ""
    print(f"plan-job train: running {shlex.join(argv)}{resumed}", file=sys.stderr, flush=True)
    relay = None
    if writer is not None:
        samples = config.micro_batch * config.grad_accum
        relay = TrainerStateRelay(config.output_dir, writer, first, time.time(), samples)
    if forwarder.signal is not None:
        return _not_started(forwarder.signal, writer, first)
    try:
        proc = spawn(argv, env, cwd=None)
    except OSError as exc:
        print(
            f"plan-job train: cannot start {argv[0]!r} in {os.getcwd()}: "
            f"{exc.strerror or exc}; the command's first word must be a program on PATH on "
            "the node, or a path",
            file=sys.stderr,
        )
        return EXIT_FAILED
    forwarder.proc = proc
    if forwarder.signal is not None and not forwarder.delivered:  # came during the start
        forwarder.forward(int(signal.Signals[forwarder.signal]), "signal")
    # The Trainer cannot see the stop time: stopped by the launcher, with room to kill it.
    deadline = None
    if config.report == "trainer_state" and stop_at is not None:
        deadline = stop_at - config.stop_grace_s - config.stop_lead_s
    try:
        while True:
            wait_s = POLL_S
            if deadline is not None and forwarder.signal is None:
                wait_s = min(wait_s, max(deadline - time.time(), 0.01))
            try:
                proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                pass
            if relay is not None:
                relay = _poll_or_drop(relay)
            if deadline is not None and forwarder.signal is None and time.time() >= deadline:
                forwarder.forward(signal.SIGTERM, "time_limit")
            since = forwarder.forwarded_at
            if since is not None and time.monotonic() - since > config.stop_grace_s:
                print(
                    f"plan-job train: the command did not exit within stop_grace_s "
                    f"({config.stop_grace_s:g} s) of {forwarder.signal}; killing it",
                    file=sys.stderr,
                )
                break
        if forwarder.forwarded_at is not None:
            wait_group(proc, forwarder.forwarded_at + config.stop_grace_s)
    finally:
        # Also on an exception here: nothing of the command may outlive the launcher.
        status = stop(proc, signal.SIGKILL, 0.0)
        forwarder.proc = None
    step = first
    if relay is not None:
        _poll_or_drop(relay)
        step = relay.last_step
    return _finish(config, status, forwarder, writer, step)


def _poll_or_drop(relay: TrainerStateRelay) -> TrainerStateRelay | None:
    """The relay after a look at output_dir; None once it failed (a full disk, say): the
    progress lines are for eta and resubmit, and must never stop the training."""
    try:
        relay.poll()
    except (OSError, ValueError) as exc:
        print(
            f"plan-job train: warning: no more progress lines from {relay.output_dir}: "
            f"{type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return None
    return relay


def _finish(
    config: TrainConfig,
    status: int,
    forwarder: _Forwarder,
    writer: ProgressWriter | None,
    step: int,
) -> int:
    stopped = forwarder.signal is not None
    sent = int(signal.Signals[forwarder.signal]) if stopped else 0
    # A shell or launcher in between reports a signal death as 128+n.
    by_signal = status < 0 or status in (128 + sent, 128 + int(signal.SIGKILL))
    print(f"plan-job train: the command {describe_status(status)}", file=sys.stderr)
    if writer is not None:
        try:
            _write_stop(config, status, forwarder, writer, step)
        except (OSError, ValueError) as exc:
            print(f"plan-job train: warning: no stop line: {exc}", file=sys.stderr)
    if stopped and (by_signal or status == 0):
        return EXIT_OK
    return 128 - status if status < 0 else status


def _write_stop(
    config: TrainConfig,
    status: int,
    forwarder: _Forwarder,
    writer: ProgressWriter,
    step: int,
) -> None:
    stopped = forwarder.signal is not None
    if step >= config.total_steps:
        writer.stop(step, "done")
    elif stopped and forwarder.reason == "time_limit":
        writer.stop(step, "time_limit")
    elif stopped:
        writer.stop(step, "signal", forwarder.signal)
    elif status == 0:
        print(
            f"plan-job train: warning: the command ended by itself at step {step} of "
            f"{config.total_steps}: does it train to {{total_steps}}?",
            file=sys.stderr,
        )
        writer.stop(step, "done")
    # A crash writes no stop line, as a crashed built-in training writes none.


def describe_status(status: int) -> str:
    """'exited with status 1' / 'was killed by SIGKILL', for messages."""
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"exited with status {status}"


def finite(value: Any) -> float | None:
    """A number from a progress line as a finite float, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None
