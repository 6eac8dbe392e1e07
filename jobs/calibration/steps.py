"""The calibration's timed steps: the loop that runs and times the workload's real steps,
the rule that stops it once the steady step time's CI reaches the target (or at the caps),
agreed by every rank, the timing of an evaluation, and the live progress lines the CLI tails.

torch is never imported here: the caller passes the synchronisation in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from jobs.calibration.stats import steady_estimate
from jobs.contract.failure import NodeError
from jobs.contract.measurement import CalibrationRequest
from jobs.node import compiling, runtime
from jobs.node.group import Group
from jobs.workloads.base import Workload

# The CI (an MSER pass over all steps so far: milliseconds once there are thousands) is
# recomputed this often, not after every step, where it would cost more than a small step.
CI_CHECK_EVERY_S = 0.2


@dataclass(frozen=True)
class StepLog:
    step_times: list[float]
    load_times: list[float]
    losses: list[float]
    stopped_by: str


def run_steps(
    workload: Workload,
    request: CalibrationRequest,
    sync: Callable[[], None],
    group: Group,
) -> StepLog:
    step_times: list[float] = []
    load_times: list[float] = []
    losses: list[float] = []
    # One progress stream for the CLI: every rank gets the same request, so the same path.
    progress = LiveProgress(request.progress_path if group.is_main else None)
    started = t0 = time.perf_counter()
    stopping = StopRule(request, group, started)
    stopped_by = "step_cap"
    while len(step_times) < request.max_steps:
        batch = workload.next_batch()
        sync()
        t1 = time.perf_counter()
        try:
            loss = workload.train_step(batch)
        except NodeError:
            raise  # e.g. the gradient exchange: its message already says what failed
        except Exception as exc:
            if type(exc).__name__ == "OutOfMemoryError":
                raise
            if compiling.time_limit_in(exc):
                # submitit's handler of the Slurm time-limit signal raises inside the step.
                raise NodeError(
                    "time_limit",
                    f"the calibration job reached its time limit at step {len(step_times) + 1}: "
                    "raise calibration.time_limit_minutes or lower calibration.max_seconds",
                ) from exc
            what = f"training step {len(step_times) + 1}"
            failed = compiling.failure(exc, request.work.compile, what)
            raise failed or NodeError(
                "workload_error",
                f"{what} raised {type(exc).__name__}: {exc}{runtime.where(exc)}",
            ) from exc
        sync()
        losses.append(float(loss))
        progress.write(len(step_times) + 1, time.perf_counter() - started, stopping.ci)
        # A step as a training loop runs it: its data, the step, reading the loss back and
        # a progress line. The stop decision below is the harness's own work: it stays out.
        t2 = time.perf_counter()
        step_times.append(t2 - t0)
        load_times.append(t1 - t0)
        reason = stopping.after_step(step_times, t2)
        if reason is not None:
            stopped_by = reason
            break
        t0 = time.perf_counter()
    progress.close()
    return StepLog(step_times, load_times, losses, stopped_by)


class StopRule:
    """Whether to stop after a step: the CI target (checked every CI_CHECK_EVERY_S), the time
    cap (after every step) or, by the loop's own condition, the step cap.

    Several ranks must stop after the same step, or one would wait forever in a gradient
    exchange the others never start. Rank 0 alone decides, at steps every rank knows in
    advance: at each check it sends its decision and the step of the next check, about
    CI_CHECK_EVERY_S on. Deciding at every step would add a collective to each.
    """

    def __init__(self, request: CalibrationRequest, group: Group, started: float) -> None:
        self.request, self.group, self.started = request, group, started
        self.checked = started
        self.ci: float | None = None  # the last CI computed, for the progress lines
        self.next_check = 1  # several ranks: the number of steps after which to decide

    def after_step(self, step_times: list[float], now: float) -> str | None:
        if self.group.size == 1:
            return self._decide(step_times, now, ci_due=now - self.checked >= CI_CHECK_EVERY_S)
        if len(step_times) < self.next_check:
            return None
        decision = None
        if self.group.is_main:
            reason = self._decide(step_times, now, ci_due=True)
            left = self.request.max_seconds - (now - self.started)
            gap = min(CI_CHECK_EVERY_S, max(left, 0.0))
            ahead = max(1, int(gap / max(step_times[-1], 1e-9)))
            decision = (reason, len(step_times) + ahead)
        reason, self.next_check = self.group.broadcast(decision, "rank 0's decision to stop")
        return reason

    def _decide(self, step_times: list[float], now: float, ci_due: bool) -> str | None:
        if ci_due:
            self.ci = ci_if_ready(step_times, self.request.min_steps)
            self.checked = time.perf_counter()
            if self.ci is not None and self.ci <= self.request.target_ci:
                return "ci_target"
        if now - self.started >= self.request.max_seconds and len(step_times) >= 2:
            return "time_cap"
        return None


def time_evaluation(
    workload: Workload, request: CalibrationRequest, sync: Callable[[], None], rank: int = 0
) -> tuple[float, float]:
    """Two evaluations as the run does them, after the steps, each rank its own held-out
    batches as jobs.train: (the first, the second). The first pays the forward-only kernels'
    first use (on an H200 679 ms against 278-323 ms for every evaluation of the run after
    it), the second is what the run's evaluations cost. (0.0, 0.0) when the spec asks for
    none."""
    if request.eval_batches <= 0:
        return 0.0, 0.0
    first = rank * request.eval_batches
    once, _loss = runtime.evaluate(workload, request.eval_batches, sync, first)
    again, _loss = runtime.evaluate(workload, request.eval_batches, sync, first)
    return once, again


def ci_if_ready(step_times: list[float], min_steps: int) -> float | None:
    """The steady CI, once it can be trusted: enough steady steps, and warm-up clearly over.

    MSER may cut at most half the series; a cut near that bound means the times are still
    trending, and a CI computed then would be spuriously narrow.
    """
    if len(step_times) < min_steps:
        return None
    est = steady_estimate(step_times)
    if est.n < min_steps or est.warmup_steps > len(step_times) // 2 - 5:
        return None
    return est.ci_relative


class LiveProgress:
    """Appends a JSON line per step so the CLI can show live progress; never fails the run."""

    def __init__(self, path: str | None) -> None:
        self._handle = None
        if path:
            try:
                self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115
            except OSError:
                self._handle = None

    def write(self, step: int, elapsed: float, ci: float | None) -> None:
        if self._handle is not None:
            line = {"step": step, "elapsed_s": round(elapsed, 4), "ci_rel": ci}
            self._handle.write(json.dumps(line) + "\n")
            self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
