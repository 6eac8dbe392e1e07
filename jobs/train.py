"""The training entry that generated sbatch scripts run: ``python -m jobs.train CONFIG.json
[--stop-at UNIX_SECONDS]``.

It trains the workload of CONFIG.json (a jobs.contract.train_config.TrainConfig) towards
``total_steps`` and leaves when that is done, when SIGUSR2 or SIGTERM arrives, or before the
stop time (``--stop-at``, else ``$PLANJOB_STOP_AT``; neither: no limit) would cut the next
step (with the evaluation due after it, when ``eval_interval_steps`` asks for one) and its
save short. Each way out saves a checkpoint first, so the next job of the run
resumes from the newest readable one. The workload's RNG streams (torch.Generator objects in
``Workload.extra_state``) and torch's global RNGs are checkpointed too, which makes a resumed
run bit-identical to an uninterrupted one on CPU. Evaluations draw held-out batches from
generators of their own (jobs.workloads.base.Workload), so they change none of this.

Launched by srun as several tasks (or by torchrun), it trains data-parallel: see
jobs.node.data_parallel. Rank 0 writes the progress file and the checkpoints, which hold every
rank's RNG states; the ranks agree on every stop, so they all stop after the same step. A
checkpoint resumes only with the number of ranks that wrote it (else exit 1): the global
batch and the ranks' data streams would change mid-run.

Exit status: 0 done or cleanly stopped, 1 the workload (or its checkpoint, or another rank)
failed, 2 bad config file, arguments or launch environment. torch is imported only once
training starts: the login node imports this module.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.contract.checkpoint_owner import Owner, read_owner, write_owner
from jobs.contract.failure import NodeError, parse_failure
from jobs.contract.train_config import TrainConfig
from jobs.node import compiling, data_parallel, runtime
from jobs.node.group import Group, select_gpu, start
from jobs.node.world import World, detect
from jobs.progress import ProgressWriter, read_progress, restart_count
from jobs.workloads.base import Workload, WorkloadConfig

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
STOP_AT_ENV = "PLANJOB_STOP_AT"
STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
RECENT_STEPS = 5  # the next step is assumed to take as long as the slowest of these
CHECKPOINT_FORMAT = "plan-job/checkpoint/v1"


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


def main(argv: list[str] | None = None) -> int:
    stop = StopRequest()
    stop.install()  # first: Slurm's signal may come while torch is still importing
    parser = argparse.ArgumentParser(
        prog="python -m jobs.train",
        description="Train towards the run's total_steps from its newest checkpoint; save and "
        "exit 0 when done, on SIGUSR2/SIGTERM, or before the stop time.",
    )
    parser.add_argument("config", type=Path, help="the run's TrainConfig JSON")
    parser.add_argument(
        "--stop-at",
        type=float,
        metavar="UNIX_SECONDS",
        help=f"leave before this time (default: ${STOP_AT_ENV}; neither: no limit)",
    )
    args = parser.parse_args(argv)  # exits 2 on bad arguments
    try:
        config = TrainConfig.from_json(args.config.read_text(encoding="utf-8"))
        stop_at = args.stop_at if args.stop_at is not None else _stop_at_from_env()
    except (OSError, ValueError) as exc:
        print(f"plan-job train: bad config {args.config}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if config.command:  # the user's own training command: jobs.training.command runs it
        from jobs.training.command import run_training

        status = run_training(config, stop_at, signalled=stop.signal)
        stop.ignore_from_now()
        return status
    try:
        world = detect(os.environ)
    except ValueError as exc:
        print(f"plan-job train: bad launch environment: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    status = _train_rank(config, stop_at, stop, world)
    if world.size > 1:
        # Leave without the interpreter's finalisation: gloo's and the rendezvous store's C++
        # threads can still be joinable there (always after a failure, where the group is
        # not torn down; now and then after a clean teardown too), and destroying one calls
        # std::terminate: SIGABRT in place of this exit status, a COMPLETED job made FAILED.
        # Everything this rank writes is closed by now; the standard streams are flushed here.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _train_rank(config: TrainConfig, stop_at: float | None, stop: StopRequest, world: World) -> int:
    # Among several ranks, say which one failed: their stderr is interleaved in one log.
    who = f"{world.name}: " if world.size > 1 else ""
    try:
        status = train(config, stop_at, stop, world)
        stop.ignore_from_now()
        return status
    except NodeError as exc:
        failure = parse_failure(str(exc)) or {"kind": exc.kind, "message": str(exc)}
        print(f"plan-job train: {who}{failure['kind']}: {failure['message']}", file=sys.stderr)
        return EXIT_FAILED
    except Exception:
        if world.size == 1:
            raise
        print(f"plan-job train: {who}unexpected error:", file=sys.stderr)
        traceback.print_exc()
        return EXIT_FAILED


def _stop_at_from_env() -> float | None:
    text = os.environ.get(STOP_AT_ENV, "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"${STOP_AT_ENV}={text!r} is not Unix seconds") from None


@dataclass(frozen=True)
class Resumed:
    step: int
    path: Path
    state: dict[str, Any]
    read_s: float


@dataclass(frozen=True)
class JobStart:
    """What rank 0 finds on disk at the start of a job, and tells every other rank."""

    restart: int  # how many jobs of the run came before this one
    step: int  # the step resumed from (0: a fresh start)
    path: str | None  # the checkpoint resumed from
    step_times: tuple[float, ...]  # the previous jobs' last step times
    save_s: float | None  # the previous jobs' last save time
    eval_s: float | None  # the previous jobs' last evaluation time
    # Rank 0's, for all: the stop time is the job's, and ranks that disagreed on having one
    # would disagree on the (collective) probe save.
    stop_at: float | None


def train(
    config: TrainConfig, stop_at: float | None, stop: StopRequest, world: World | None = None
) -> int:
    """One job of the run: resume, step until done or told to stop, save, say why."""
    import torch

    world = detect(os.environ) if world is None else world
    select_gpu(world, config.device, torch)
    device = runtime.resolve_device(config.device, torch, setting="device")
    group = start(world, device)
    status = _train(config, stop_at, stop, group, device)
    # Only after success: tearing down NCCL after a peer's failure can hang, and a failing
    # process is about to exit anyway.
    group.close()
    return status


def _train(
    config: TrainConfig, stop_at: float | None, stop: StopRequest, group: Group, device: Any
) -> int:
    from jobs.training import checkpoint

    resumed, found = None, None
    if group.is_main:
        folder = Path(config.checkpoint_dir)
        history = read_progress(config.progress_path)
        checkpoint.remove_stale_temporaries(folder)
        _claim_folder(config, folder)
        resumed = newest_readable(folder)
        found = _job_start(history, resumed, stop_at)
    # One reader decides: ranks scanning the folder themselves could race each other renaming
    # a torn checkpoint, and see different newest ones.
    job: JobStart = group.broadcast(found, "what rank 0 found on disk")
    first = job.step
    say = print if group.is_main else _quiet
    with ProgressWriter(config.progress_path) if group.is_main else _QuietProgress() as progress:
        if first >= config.total_steps:
            progress.start(first, config.total_steps, job.restart)
            progress.stop(first, "done")
            say(f"plan-job train: already done: the newest checkpoint is step {first}")
            return EXIT_OK
        if resumed is None and job.path is not None:
            resumed = _read_chosen(Path(job.path), job.step)
        workload_config = _workload_config(config, device)
        workload = runtime.build_workload(config.builder_path, workload_config, device)
        if group.size > 1:
            data_parallel.join_data_parallel(workload, group, "plan-job train")
        if config.compile:
            import torch

            compiling.compile_model(workload, device, torch)  # as the calibration did
        run = Run(config, workload, device, progress, stop, job, group)
        if resumed is None:
            progress.start(first, config.total_steps, job.restart)
        else:
            load_s = run.restore(resumed)
            progress.start(first, config.total_steps, job.restart)
            progress.resume(first, load_s, str(resumed.path))
            say(f"plan-job train: resumed from {resumed.path} (step {first})")
            resumed = None  # its CPU copy of the whole state would live as long as the run
        step, reason, signal_name = run.loop(first)
        progress.stop(step, reason, signal_name)
    say(f"plan-job train: stopped at step {step}/{config.total_steps} ({reason})")
    return EXIT_OK


def _claim_folder(config: TrainConfig, folder: Path) -> None:
    """Mark an unclaimed checkpoint folder as this run's: `plan-job submit` claims it before
    the first job, a run started by hand (`python -m jobs.train train.json`) claims it here,
    so that a later run with another folder's id is warned before it resumes from these."""
    if config.run_id and read_owner(folder) is None:
        write_owner(folder, Owner(config.run_id, str(Path(config.progress_path).parent)))


def _job_start(
    history: list[dict[str, Any]], resumed: Resumed | None, stop_at: float | None
) -> JobStart:
    # Until this job has timed its own, the previous jobs' times are the best guess.
    past_steps = [e["step_s"] for e in history if e["event"] == "step"]
    past_saves = [e["save_s"] for e in history if e["event"] == "checkpoint"]
    past_evals = [e["eval_s"] for e in history if e["event"] == "eval"]
    return JobStart(
        restart=restart_count(history),
        step=resumed.step if resumed is not None else 0,
        path=str(resumed.path) if resumed is not None else None,
        step_times=tuple(past_steps[-RECENT_STEPS:]),
        save_s=past_saves[-1] if past_saves else None,
        eval_s=past_evals[-1] if past_evals else None,
        stop_at=stop_at,
    )


def _read_chosen(path: Path, step: int) -> Resumed:
    """The checkpoint rank 0 chose, read by another rank."""
    from jobs.training import checkpoint

    start = time.perf_counter()
    try:
        state = checkpoint.read_state(path, "cpu")
    except Exception as exc:
        raise NodeError(
            "checkpoint",
            f"cannot read {path}, which rank 0 read: {type(exc).__name__}: {exc}",
        ) from exc
    return Resumed(step, path, state, time.perf_counter() - start)


def _quiet(*_args: Any, **_kwargs: Any) -> None:
    """print for ranks other than 0: one rank's account of the run is enough."""


class _QuietProgress:
    """The progress file of ranks other than 0: rank 0 writes the run's one stream."""

    def __enter__(self) -> _QuietProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def start(self, *args: Any) -> None:
        pass

    def resume(self, *args: Any) -> None:
        pass

    def step(self, *args: Any) -> None:
        pass

    def checkpoint(self, *args: Any) -> None:
        pass

    def eval(self, *args: Any) -> None:
        pass

    def stop(self, *args: Any) -> None:
        pass


def newest_readable(folder: Path) -> Resumed | None:
    """The newest checkpoint that loads; unreadable ones (torn by a kill, a full disk) are
    renamed to ``*.bad`` so that they neither shadow nor outlive the checkpoints after them."""
    from jobs.training import checkpoint

    for step, path in checkpoint.list_checkpoints(folder):
        start = time.perf_counter()
        try:
            state = checkpoint.read_state(path, "cpu")
            if state.get("step") != step:
                raise ValueError(f"it holds step {state.get('step')!r}, its name says {step}")
        except Exception as exc:  # a torn file fails in torch.load's many ways
            bad = path.with_name(path.name + ".bad")
            print(
                f"plan-job train: warning: cannot load {path} ({type(exc).__name__}: {exc}); "
                f"renamed it to {bad.name}, trying the next older checkpoint",
                file=sys.stderr,
            )
            path.replace(bad)
            continue
        return Resumed(step, path, state, time.perf_counter() - start)
    return None


def _workload_config(config: TrainConfig, device: Any) -> WorkloadConfig:
    return WorkloadConfig(
        preset=config.preset,
        overrides=dict(config.overrides),
        micro_batch=config.micro_batch,
        grad_accum=config.grad_accum,
        precision=config.precision,
        device=str(device),
        seed=config.seed,
    )


class Run:
    """The step loop of one job (of one rank), with what it knows about how long steps and
    saves take. Its saves, stop decisions and logged losses are collective: every rank calls
    them at the same step."""

    def __init__(
        self,
        config: TrainConfig,
        workload: Workload,
        device: Any,
        progress: ProgressWriter | _QuietProgress,
        stop: StopRequest,
        job: JobStart,
        group: Group,
    ) -> None:
        import torch

        self.config, self.workload, self.device = config, workload, device
        self.progress, self.stop, self.stop_at = progress, stop, job.stop_at
        self.group = group
        self.sync = runtime.synchronizer(device, torch)
        self.folder = Path(config.checkpoint_dir)
        self.saved_step = 0  # a fresh build is step 0: nothing to save there
        self.step_times = collections.deque(job.step_times, maxlen=RECENT_STEPS)
        # Rank 0's, on every rank: whether a probe save is due must be the same everywhere.
        self.save_s: float | None = job.save_s
        self.eval_s: float | None = job.eval_s
        if config.eval_interval_steps and not workload.can_evaluate:
            raise NodeError(
                "workload_error",
                f"train.json asks for an evaluation every {config.eval_interval_steps} steps "
                f"but workload {workload.name!r} has no eval_step/eval_batch",
            )

    def restore(self, resumed: Resumed) -> float:
        """Apply the checkpoint; returns the seconds reading and applying it took."""
        from jobs.training import checkpoint

        saved_ranks, ranks = checkpoint.saved_world_size(resumed.state), self.group.size
        if saved_ranks != ranks:
            raise NodeError(
                "checkpoint",
                f"{resumed.path} was written by {saved_ranks} rank(s) and this job has "
                f"{ranks}: the global batch (ranks x micro_batch x grad_accum) and the ranks' "
                f"data streams would change mid-run. Launch {saved_ranks} task(s) (nodes x "
                f"tasks per node) as the run's earlier jobs did, or start a new run with an "
                f"empty checkpoint_dir",
            )
        start = time.perf_counter()
        try:
            checkpoint.apply_state(self.workload, resumed.state)
            checkpoint.set_global_rng_state(resumed.state["rng"], self.device)
            if ranks > 1:
                own = resumed.state["ranks"][self.group.world.rank]
                checkpoint.set_rank_rng_state(self.workload, own, self.device)
        except Exception as exc:
            raise NodeError(
                "checkpoint",
                f"{resumed.path} does not fit the workload (was the run's config changed?): "
                f"{type(exc).__name__}: {exc}",
            ) from exc
        self.sync()
        self.saved_step = resumed.step
        return resumed.read_s + time.perf_counter() - start

    def loop(self, step: int) -> tuple[int, str, str | None]:
        """Train from ``step``; returns the step stopped at, saved unless it is 0, why, and
        the signal's name when a signal stopped it."""
        config, counts = self.config, self.workload.counts
        reason, signal_name = "done", None
        # The stop decision needs the save time before this job has saved anything. A lone
        # process told to stop already has no decision to make; ranks probe together.
        alone_and_told = self.stop.signum != 0 and self.group.size == 1
        if self.stop_at is not None and self.save_s is None and not alone_and_told:
            self.save_s = self._probe_save()
        # A step's time runs from the previous one's end (or the save or evaluation after it):
        # the loop's own work between steps is part of what every step costs.
        mark = time.perf_counter()
        while step < config.total_steps:
            stopping = self._stop_reason(step + 1)
            if stopping is not None:
                reason, signal_name = stopping
                break
            step_s, value, mark = self._step(step + 1, mark)
            step += 1
            self.step_times.append(step_s)
            if step % config.log_every == 0 or step == config.total_steps:
                loss = self.group.mean(value)  # the global batch's, not rank 0's share
                samples = step * counts.samples_per_step
                tokens = step * counts.tokens_per_step
                finite = loss if math.isfinite(loss) else None  # JSON has no NaN
                self.progress.step(step, samples, tokens, step_s, finite)
            if self._eval_due(step):
                self.evaluate(step)
                mark = time.perf_counter()
            if step % config.checkpoint_interval_steps == 0 or step == config.total_steps:
                self.save(step)
                mark = time.perf_counter()
        if self.saved_step != step:
            self.save(step)
        return step, reason, signal_name

    def _stop_reason(self, next_step: int) -> tuple[str, str | None] | None:
        """Whether to stop before ``next_step``, decided by all ranks together: srun
        forwards a signal to every task but not at one instant, and the clocks differ."""
        signum = self.stop.signum
        # The time check may run a (collective) probe save, so only a lone process may skip
        # it when a signal has come.
        late = self._out_of_time(next_step) if signum == 0 or self.group.size > 1 else False
        signum, late = self.group.stop_votes(signum, late)
        if signum:
            return "signal", signal.Signals(signum).name
        if late:
            return "time_limit", None
        return None

    def _out_of_time(self, next_step: int) -> bool:
        if self.stop_at is None:
            return False
        if self.save_s is None:
            self.save_s = self._probe_save()
        step_s = max(self.step_times, default=0.0)
        needed = step_s + self.save_s + self.config.stop_lead_s
        if self._eval_due(next_step):
            # Before this run has timed one, an evaluation batch (a forward pass of one
            # micro-batch) is taken to cost a whole optimizer step: an overestimate.
            needed += self.eval_s if self.eval_s is not None else self.config.eval_batches * step_s
        return time.time() + needed > self.stop_at

    def _eval_due(self, step: int) -> bool:
        interval = self.config.eval_interval_steps
        return interval > 0 and step % interval == 0

    def evaluate(self, step: int) -> None:
        """One evaluation after ``step``; every rank evaluates its own held-out batches."""
        import torch

        batches = self.config.eval_batches
        first = self.group.world.rank * batches
        try:
            eval_s, value = runtime.evaluate(self.workload, batches, self.sync, first)
        except torch.cuda.OutOfMemoryError as exc:
            config = self.config
            failure = runtime.oom_failure(config.micro_batch, config.precision, self.device, exc)
            raise failure from exc
        self.eval_s = eval_s
        loss = self.group.mean(value)
        self.progress.eval(step, eval_s, loss if math.isfinite(loss) else None)

    def _probe_save(self) -> float:
        """Time one real save, then delete it: the stop decision needs the save time before
        this job has saved anything."""
        path = self.folder / "probe.pt"
        try:
            save_s, _ = self._write(self.saved_step, path)
            return save_s
        finally:
            if self.group.is_main:
                path.unlink(missing_ok=True)

    def _step(self, number: int, since: float) -> tuple[float, float, float]:
        """One optimizer step: (seconds since ``since``, the loss, when it ended)."""
        import torch

        try:
            loss = self.workload.train_step(self.workload.next_batch())
            self.sync()
            end = time.perf_counter()
            value = float(loss)
        except torch.cuda.OutOfMemoryError as exc:
            config = self.config
            failure = runtime.oom_failure(config.micro_batch, config.precision, self.device, exc)
            raise failure from exc
        except NodeError:
            raise  # e.g. the gradient exchange: its message already says what failed
        except Exception as exc:
            failed = compiling.failure(exc, self.config.compile, f"training step {number}")
            raise failed or NodeError(
                "workload_error",
                f"training step {number} raised {type(exc).__name__}: {exc}{runtime.where(exc)}",
            ) from exc
        return end - since, value, end

    def save(self, step: int) -> None:
        from jobs.training import checkpoint

        path = checkpoint.checkpoint_path(self.folder, step)
        self.save_s, nbytes = self._write(step, path)
        self.saved_step = step
        if self.group.is_main:
            self.progress.checkpoint(step, self.save_s, str(path), nbytes)
            checkpoint.prune(self.folder, self.config.keep_checkpoints)

    def _write(self, step: int, path: Path) -> tuple[float, int]:
        """Rank 0 saves the state with every rank's RNG states; returns its save time and
        the file's size, on every rank. Returning also means the file is complete."""
        from jobs.training import checkpoint

        self.sync()
        start = time.perf_counter()
        mine = checkpoint.rank_rng_state(self.workload, self.device)
        if self.group.size > 1:
            # Averaged gradients keep every rank's weights identical; a sum per rank shows
            # when a workload broke that (e.g. with a rank-dependent update of its own).
            mine["weights_sum"] = checkpoint.weights_sum(self.workload.model)
        rngs = self.group.gather(mine, "the ranks' RNG states")
        written = None
        if self.group.is_main:
            if rngs is not None and len({r.get("weights_sum") for r in rngs}) > 1:
                sums = ", ".join(f"rank {i}: {r['weights_sum']!r}" for i, r in enumerate(rngs))
                print(
                    f"plan-job train: warning: the ranks' weights differ at step {step} "
                    f"({sums}); rank 0's are saved",
                    file=sys.stderr,
                )
            nbytes = checkpoint.save_atomic(self._state(step, rngs), path)
            written = (time.perf_counter() - start, nbytes)
        return self.group.broadcast(written, f"the outcome of rank 0's save to {path}")

    def _state(self, step: int, rngs: list[Any] | None) -> dict[str, Any]:
        from jobs.training import checkpoint

        extra: dict[str, Any] = {"world_size": self.group.size}
        if self.group.size > 1:
            extra["ranks"] = rngs  # rank r's global RNGs, streams and weights sum at [r]
        return checkpoint.workload_state(
            self.workload,
            format=CHECKPOINT_FORMAT,
            step=step,
            rng=checkpoint.global_rng_state(self.device),
            train_config=self.config.to_json(),
            **extra,
        )


if __name__ == "__main__":
    sys.exit(main())
