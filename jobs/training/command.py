"""Running the user's own training command on the node. Standard library only.

``python -m jobs.train train.json`` hands over to run_training() when train.json carries a
``command``: it fills in the command's fields (jobs.contract.command_fields), starts it,
forwards the stop signals and waits. The calibration (jobs.calibration.command) starts it the
same way.

The command runs in a process group of its own that dies with this process
(jobs.node.process); SIGUSR2 and SIGTERM are forwarded to the group (jobs.node.signals).

With ``report: trainer_state`` (an unchanged Hugging Face Trainer script) the command writes
no progress lines; this launcher writes them for it from the Trainer's checkpoint-N folders
(jobs.training.trainer_relay), so that eta and resubmit read such a run as any other.

Before the command starts, rank 0 takes the run's trainer lock and checks the chain's
progress, the room and that there is a checkpoint to resume from when the run is past step 0
(jobs.training.command_start). With train.json's ``hang_timeouts`` the launcher judges the
command by its progress lines: when none comes within the timeout, it asks the command for its
stacks (jobs.node.signals.STACK_DUMP_SIGNAL), kills it and exits 124 (jobs.node.watchdog). A
command that fails or outlives its stop grace ends with a `failure` progress event.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from jobs.contract.command_fields import environment, field_values, render, world_size
from jobs.contract.failure import EXIT_CHAIN_STOPPED, EXIT_FAILED, EXIT_OK, EXIT_REFUSED, Refusal
from jobs.contract.train_config import TrainConfig
from jobs.node.failures import write_failure
from jobs.node.process import describe_status, spawn, stop, wait_group
from jobs.node.signals import STACK_DUMP_SIGNAL, Forwarder, signal_group
from jobs.node.trainer_lock import TrainerLock
from jobs.node.watchdog import NoWatchdog, make_watchdog
from jobs.progress import ProgressWriter, read_progress, restart_count
from jobs.training import command_start, trainer_state
from jobs.training.preflight import ChainStopped
from jobs.training.progress_tail import ProgressTail
from jobs.training.trainer_relay import TrainerStateRelay

POLL_S = 1.0  # how often the launcher looks at the progress file and the Trainer's output_dir
DUMP_WAIT_S = 2.0  # after asking a hung command for its stacks, before killing it


def resume_from(config: TrainConfig) -> tuple[int, str | None]:
    """The checkpoint the command should resume from: (step, path), or (0, None).

    ``progress``: the highest-step ``checkpoint`` line of the progress file whose path still
    exists (older ones are pruned, or lost with a scratch disk). ``trainer_state``: the
    newest checkpoint-N folder of output_dir holding a trainer_state.json."""
    if config.work.report == "trainer_state":
        folder = trainer_state.newest_checkpoint(config.work.output_dir)
        return (folder.step, folder.path) if folder is not None else (0, None)
    best: tuple[int, str | None] = (0, None)
    for event in read_progress(config.progress_path, keep_steps=0):
        step, path = event.get("step"), event.get("path")
        if event.get("event") != "checkpoint" or not isinstance(path, str) or not path:
            continue
        if not isinstance(step, int) or isinstance(step, bool):
            continue
        if step >= best[0] and Path(path).exists():
            best = (step, path)
    return best


def _rank_of(env: Mapping[str, str]) -> int:
    rank = (env.get("RANK") or env.get("SLURM_PROCID") or "0").strip()
    return int(rank) if rank.isdigit() else 0


def _is_rank_zero(env: Mapping[str, str]) -> bool:
    return _rank_of(env) == 0


def run_training(config: TrainConfig, stop_at: float | None, signalled: str | None = None) -> int:
    """One job of a run whose training is the user's command; its exit status.

    ``signalled``: the name of a stop signal that came before this was called (the command
    is then not started). 0 when the command ended well or was stopped by a forwarded signal
    (or by the stop time, with ``report: trainer_state``); else the command's status, 128+n
    for death by signal n; 1 when it cannot be started; 2 refused (another trainer, no room,
    nothing to resume from), 3 the chain stopped itself, 124 the command hung."""
    forwarder = Forwarder()
    forwarder.install()
    env = os.environ
    ranks = world_size(env)
    watch = make_watchdog(config.hang_timeouts, config.progress_path, _rank_of(env), ranks)
    watch.arm("startup", 0, _first_line_extra(config))
    lock: TrainerLock | None = None
    try:
        first, path = resume_from(config)
        if _is_rank_zero(env):
            try:
                history = read_progress(config.progress_path, keep_steps=0)
                lock = command_start.prepare(config, env, watch, history, path)
            except Refusal as exc:
                print(f"plan-job train: refused to start: {exc.text}", file=sys.stderr)
                write_failure(config.progress_path, 0, exc.cause, exc.text, exc.detail or None)
                return EXIT_REFUSED
            except ChainStopped:
                return EXIT_CHAIN_STOPPED
            watch.add_cleanup(lock.release)
        else:
            refused = command_start.follow_rank_0(config, env)
            if refused is not None:
                print(f"plan-job train: rank {_rank_of(env)}: {refused}", file=sys.stderr)
                return EXIT_REFUSED
        status = _launch(config, stop_at, signalled, forwarder, watch, first, path, ranks)
        watch.hold_if_fired()  # the command was killed for a hang: EXIT_HANG, not its status
        return status
    finally:
        watch.close()
        if lock is not None:
            lock.release()


def _first_line_extra(config: TrainConfig) -> float:
    """Until its first step line, a command also starts, loads and compiles."""
    hang = config.hang_timeouts
    if hang is None:
        return 0.0
    return hang.load_s + hang.progress_s + (hang.compile_s if config.work.compile else 0.0)


def _launch(
    config: TrainConfig,
    stop_at: float | None,
    signalled: str | None,
    forwarder: Forwarder,
    watch: NoWatchdog,
    first: int,
    path: str | None,
    ranks: int,
) -> int:
    trainer = config.work.report == "trainer_state"
    env = os.environ
    values = field_values(
        total_steps=config.total_steps,
        checkpoint_dir=config.checkpoint_dir,
        checkpoint_interval_steps=config.checkpoint_interval_steps,
        resume_from=path,
        progress_path=config.progress_path,
        stop_at=stop_at,
        eval_interval_steps=config.eval_interval_steps,
        micro_batch=config.work.micro_batch,
        grad_accum=config.work.grad_accum,
        seed=config.work.seed,
        output_dir=config.work.output_dir,
        ranks=ranks,
    )
    argv = render(config.work.command, values)
    writer = None
    if trainer and _is_rank_zero(env):
        restart = restart_count(read_progress(config.progress_path, keep_steps=0))
        writer = ProgressWriter(config.progress_path)
        writer.start(first, config.total_steps, restart)
    try:
        if signalled is not None:
            return _not_started(signalled, writer, first)
        merged = {**env, **environment(values)}
        return _run(config, stop_at, argv, merged, forwarder, writer, first, watch)
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
    forwarder: Forwarder,
    writer: ProgressWriter | None,
    first: int,
    watch: NoWatchdog,
) -> int:
    resumed = f", resuming step {first}" if first else ""
    print(f"plan-job train: running {shlex.join(argv)}{resumed}", file=sys.stderr, flush=True)
    relay = None
    if writer is not None:
        samples = config.work.micro_batch * config.work.grad_accum
        relay = TrainerStateRelay(config.work.output_dir, writer, first, time.time(), samples)
    if forwarder.signal is not None:
        return _not_started(forwarder.signal, writer, first)
    tail = ProgressTail(config.progress_path)  # the command's lines are those after this
    started = False  # a step line came: from now on, the gaps between lines are judged
    ignored_stop: str | None = None
    try:
        proc = spawn(argv, env, cwd=None)
    except OSError as exc:
        message = (
            f"cannot start {argv[0]!r} in {os.getcwd()}: {exc.strerror or exc}; the command's "
            f"first word must be a program on PATH on the node, or a path"
        )
        print(f"plan-job train: {message}", file=sys.stderr)
        write_failure(config.progress_path, first, "command_failed", message, None, _rank())
        return EXIT_FAILED
    watch.add_cleanup(lambda: _dump_and_kill(proc))
    forwarder.proc = proc
    if forwarder.signal is not None and not forwarder.delivered:  # came during the start
        forwarder.forward(int(signal.Signals[forwarder.signal]), "signal")
    # The Trainer cannot see the stop time: stopped by the launcher, with room to kill it.
    deadline = None
    if config.work.report == "trainer_state" and stop_at is not None:
        deadline = stop_at - config.work.stop_grace_s - config.stop_lead_s
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
            if tail.poll():
                started = started or tail.last_step is not None
                step = tail.last_step if tail.last_step is not None else first
                if started:
                    watch.arm("progress", step)
                else:
                    watch.arm("startup", step, _first_line_extra(config))
            if deadline is not None and forwarder.signal is None and time.time() >= deadline:
                forwarder.forward(signal.SIGTERM, "time_limit")
            since = forwarder.forwarded_at
            if since is not None and time.monotonic() - since > config.work.stop_grace_s:
                ignored_stop = (
                    f"the command did not exit within stop_grace_s "
                    f"({config.work.stop_grace_s:g} s) of {forwarder.signal}; killing it"
                )
                print(f"plan-job train: {ignored_stop}", file=sys.stderr)
                break
        if forwarder.forwarded_at is not None:
            wait_group(proc, forwarder.forwarded_at + config.work.stop_grace_s)
    finally:
        # Also on an exception here: nothing of the command may outlive the launcher.
        status = stop(proc, signal.SIGKILL, 0.0)
        forwarder.proc = None
    step = first
    if relay is not None:
        _poll_or_drop(relay)
        step = relay.last_step
    tail.poll()
    if tail.last_step is not None:
        step = max(step, tail.last_step)
    return _finish(config, status, forwarder, writer, step, ignored_stop, watch)


def _rank() -> int | None:
    """This rank, for a failure line of a job of several ranks; None for one."""
    return _rank_of(os.environ) if world_size(os.environ) > 1 else None


def _dump_and_kill(proc: subprocess.Popen[bytes]) -> None:
    """The hang watchdog's clean-up: the command's stacks into the log, then nothing left."""
    if proc.poll() is None:
        signal_group(proc, STACK_DUMP_SIGNAL)
        time.sleep(DUMP_WAIT_S)
    stop(proc, signal.SIGKILL, 0.0)


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
    forwarder: Forwarder,
    writer: ProgressWriter | None,
    step: int,
    ignored_stop: str | None,
    watch: NoWatchdog,
) -> int:
    watch.hold_if_fired()  # killed by the hang watchdog: its line says so, not these
    stopped = forwarder.signal is not None
    sent = int(signal.Signals[forwarder.signal]) if forwarder.signal is not None else 0
    # A shell or launcher in between reports a signal death as 128+n.
    by_signal = status < 0 or status in (128 + sent, 128 + int(signal.SIGKILL))
    print(f"plan-job train: the command {describe_status(status)}", file=sys.stderr)
    if writer is not None:
        try:
            _write_stop(config, status, forwarder, writer, step)
        except (OSError, ValueError) as exc:
            print(f"plan-job train: warning: no stop line: {exc}", file=sys.stderr)
    if ignored_stop is not None:
        # Killed after its grace: what it trained since its last save is lost.
        write_failure(
            config.progress_path, step, "command_ignored_stop", ignored_stop, None, _rank()
        )
        return EXIT_FAILED
    if stopped and (by_signal or status == 0):
        return EXIT_OK
    if status != 0:
        name = _signal_name(status)
        how = f"was killed by {name}" if name else f"exited with status {status}"
        write_failure(
            config.progress_path,
            step,
            "command_failed",
            f"the command {how} at step {step}: {shlex.join(config.work.command)}",
            {"exit_code": None if name else status, "signal": name},
            _rank(),
        )
    return 128 - status if status < 0 else status


def _signal_name(status: int) -> str | None:
    """The signal a status reports a death by: -n from Popen, 128+n through a shell."""
    number = -status if status < 0 else status - 128 if status > 128 else 0
    try:
        return signal.Signals(number).name if number else None
    except ValueError:
        return None


def _write_stop(
    config: TrainConfig,
    status: int,
    forwarder: Forwarder,
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
