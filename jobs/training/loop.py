"""The step loop of one job of the built-in training (one rank's): steps, evaluations and
saves, and the decision, taken by all ranks together, to stop before the next step (a stop
signal came, or the step, the evaluation due after it and its save would pass the stop
time). torch is imported inside: importing this module stays cheap.
"""

from __future__ import annotations

import collections
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

from jobs.contract.failure import CheckpointMismatch, NodeError
from jobs.contract.train_config import TrainConfig
from jobs.node import compiling, runtime
from jobs.node.group import Group
from jobs.node.signals import StopRequest
from jobs.node.watchdog import NoWatchdog
from jobs.progress import ProgressWriter
from jobs.training.resume import RECENT_STEPS, JobStart, Resumed
from jobs.workloads.base import Workload

CHECKPOINT_FORMAT = "plan-job/checkpoint/v1"


class QuietProgress:
    """The progress file of ranks other than 0: rank 0 writes the run's one stream."""

    def __enter__(self) -> QuietProgress:
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

    def checkpoint_bad(self, *args: Any) -> None:
        pass


class Run:
    """The step loop of one job (of one rank), with what it knows about how long steps and
    saves take. Its saves, stop decisions and logged losses are collective: every rank calls
    them at the same step."""

    def __init__(
        self,
        config: TrainConfig,
        workload: Workload,
        device: Any,
        progress: ProgressWriter | QuietProgress,
        stop: StopRequest,
        job: JobStart,
        group: Group,
        watch: NoWatchdog | None = None,
    ) -> None:
        import torch

        self.config, self.workload, self.device = config, workload, device
        self.watch = watch or NoWatchdog()
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
            raise CheckpointMismatch(
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
            raise CheckpointMismatch(
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
        # The job's first step also pays what the calibration counted as start-up beyond the
        # steady step: the kernels' first use, and a compiled model's compile.
        first_extra = self._first_step_extra()
        while step < config.total_steps:
            self.watch.arm("step", step, first_extra)
            first_extra = 0.0
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

    def _first_step_extra(self) -> float:
        timeouts = self.config.hang_timeouts
        if timeouts is None:
            return 0.0
        return timeouts.startup_s + (timeouts.compile_s if self.config.work.compile else 0.0)

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
            self.watch.arm("step")  # back in the step the probe interrupted
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

        self.watch.arm("eval", step)
        batches = self.config.eval_batches
        first = self.group.world.rank * batches
        try:
            eval_s, value = runtime.evaluate(self.workload, batches, self.sync, first)
        except torch.cuda.OutOfMemoryError as exc:
            work = self.config.work
            failure = runtime.oom_failure(work.micro_batch, work.precision, self.device, exc)
            raise failure from exc
        self.eval_s = eval_s
        loss = self.group.mean(value)
        self.progress.eval(step, eval_s, loss if math.isfinite(loss) else None)

    def _probe_save(self) -> float:
        """Time one real save, then delete it: the stop decision needs the save time before
        this job has saved anything."""
        path = self.folder / "probe.pt"
        self.watch.arm("save")
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
            work = self.config.work
            failure = runtime.oom_failure(work.micro_batch, work.precision, self.device, exc)
            raise failure from exc
        except NodeError:
            raise  # e.g. the gradient exchange: its message already says what failed
        except Exception as exc:
            failed = compiling.failure(exc, self.config.work.compile, f"training step {number}")
            raise failed or NodeError(
                "workload_error",
                f"training step {number} raised {type(exc).__name__}: {exc}{runtime.where(exc)}",
            ) from exc
        return end - since, value, end

    def save(self, step: int) -> None:
        from jobs.training import checkpoint

        path = checkpoint.checkpoint_path(self.folder, step)
        self.watch.arm("save", step)
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
