"""Start-up, warm-up and exit as a training job pays them, timed on ``python -m jobs.train``.

The calibration's own process is not started the way a run's job is: submitit starts it,
imports itself and unpickles the request before the harness runs (the job's start-up then
holds submitit's work), and the process has the node to itself from a cold start. A segment
is ``srun python -m jobs.train train.json``. So the calibration, after its own steps and with
its model freed, runs the training entry itself on a train.json of its own: the same workload,
batch, precision and device, a few steps, into a scratch folder, as one process (the
launcher's rank variables removed) and with no stop time, so without the probe save that the
plan counts among the saves. Its progress file gives:

- start-up: the process's start (the spawn, here) to its first step's start (the first step
  line's time less that step's step_s): interpreter, imports, reading the progress file and
  the checkpoint folder, building the workload;
- warm-up: its first steps' time beyond its own steady steps' median, over as many steps as
  the calibration's MSER cut (at least the first): the first-use costs a new process pays,
  not those only a node's first process pays (cold page cache, drivers), which the
  calibration's own first steps hold; and, as a median of the same process, not a drift of
  the machine between the calibration and this;
- exit: its stop line (written after its last save) to its exit as seen here: the
  interpreter freeing the model and torch, which every job pays after its last save.

torch is not imported here: this runs in the calibration job before it reports.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.contract.failure import NodeError
from jobs.contract.measurement import CalibrationRequest
from jobs.contract.train_config import TrainConfig
from jobs.progress import read_progress

if TYPE_CHECKING:
    from jobs.node.group import Group

# Steps after the warm-up that give the fresh process's own steady reference.
TAIL_STEPS = 5
MAX_STEPS = 200
# The fresh process's steps may take this share of calibration.max_seconds (at least
# MIN_BUDGET_S): warm-up is a few steps on every machine measured so far.
BUDGET_SHARE, MIN_BUDGET_S = 0.05, 2.0
# Variables that would make the training entry a rank of the calibration's world (see
# jobs.node.world.detect) or give it a stop time (and so a probe save before its first step).
_LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_STEP_ID", "PLANJOB_STOP_AT")
# The training entry is given this long plus twice the calibration process's age (its own
# start-up and steps, of which the entry runs a few).
TIMEOUT_S = 120.0


@dataclass(frozen=True)
class FreshStart:
    startup_s: float  # process start to the first step's start
    warmup_steps: int  # the steps warmup_extra_s is over
    warmup_extra_s: float  # those steps' time beyond the process's steady median
    exit_s: float  # the last progress line to the process's exit
    step_times: tuple[float, ...]  # every step it ran


def plan_steps(warmup_steps: int, step_mean_s: float, max_seconds: float) -> tuple[int, int]:
    """(steps to run, warm-up steps to measure) for a calibration whose MSER cut is
    ``warmup_steps``: the cut (at least one step) and TAIL_STEPS after it, within the budget."""
    budget = max(MIN_BUDGET_S, BUDGET_SHARE * max_seconds)
    affordable = max(TAIL_STEPS + 1, int(budget / max(step_mean_s, 1e-9)))
    steps = min(max(warmup_steps, 1) + TAIL_STEPS, MAX_STEPS, affordable)
    return steps, min(max(warmup_steps, 1), steps - TAIL_STEPS)


def warmup_beyond(step_times: list[float], warmup: int) -> float:
    """The first ``warmup`` steps' time beyond the median of the rest (never negative)."""
    reference = statistics.median(step_times[warmup:])
    return max(sum(step_times[:warmup]) - warmup * reference, 0.0)


def on_rank_0(
    request: CalibrationRequest,
    warmup_steps: int,
    step_mean_s: float,
    group: Group,
    device: Any,
    torch: Any,
) -> FreshStart:
    """The calibration's side: rank 0, its own model freed by the caller (collected here,
    and CUDA's cache emptied: the entry builds its own on the same device), times the entry;
    the other ranks wait for its figures."""
    from jobs.calibration.host import process_age_s

    found = None
    if group.is_main:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        timeout = TIMEOUT_S + 2 * process_age_s()
        found = measure(request, warmup_steps, step_mean_s, timeout)
    return group.broadcast(found, "rank 0's timing of the training entry")


def measure(
    request: CalibrationRequest, warmup_steps: int, step_mean_s: float, timeout_s: float
) -> FreshStart:
    """Run ``python -m jobs.train`` for a few steps in a scratch folder and read it back."""
    steps, warmup = plan_steps(warmup_steps, step_mean_s, request.max_seconds)
    folder = Path(request.scratch_dir) / "fresh-start"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        config = _config(request, folder, steps)
        path = folder / "train.json"
        path.write_text(config.to_json(), encoding="utf-8")
        log = folder / "train.log"
        with open(log, "wb") as out:
            spawned = time.time()
            proc = subprocess.Popen(
                [sys.executable, "-m", "jobs.train", str(path)],
                env=_environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            try:
                status = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise _failed(f"did not end within {timeout_s:.0f} s", log) from None
            exited = time.time()
        if status != 0:
            raise _failed(f"exited with status {status}", log)
        return _read(read_progress(config.progress_path), spawned, exited, warmup, log)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _config(request: CalibrationRequest, folder: Path, steps: int) -> TrainConfig:
    return TrainConfig(
        # Eager, as before workload.compile: its cost is measured apart (Measurement.compile_s).
        work=dataclasses.replace(request.work, compile=False),
        total_steps=steps,
        checkpoint_dir=str(folder / "checkpoints"),
        checkpoint_interval_steps=steps,  # one save, after the last step: as a run's last
        keep_checkpoints=1,
        progress_path=str(folder / "progress.jsonl"),
    )


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARIABLES}
    # Whatever the calibration could import (a user's workload module included), the entry
    # can: the calibration's own search path, ahead of what the job was given.
    path = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join([*path, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _read(
    events: list[dict[str, object]], spawned: float, exited: float, warmup: int, log: Path
) -> FreshStart:
    steps = [e for e in events if e["event"] == "step"]
    stops = [e for e in events if e["event"] == "stop"]
    if not steps or not stops:
        raise _failed("wrote no step or no stop line", log)
    times = [float(e["step_s"]) for e in steps]  # type: ignore[arg-type]
    first_start = float(steps[0]["time"]) - times[0]  # type: ignore[arg-type]
    return FreshStart(
        startup_s=max(first_start - spawned, 0.0),
        warmup_steps=warmup,
        warmup_extra_s=warmup_beyond(times, warmup),
        exit_s=max(exited - float(stops[-1]["time"]), 0.0),  # type: ignore[arg-type]
        step_times=tuple(times),
    )


def _failed(what: str, log: Path) -> NodeError:
    try:
        tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-15:])
    except OSError:
        tail = ""
    return NodeError(
        "fresh_start",
        f"the training entry (python -m jobs.train), started by the calibration to time a "
        f"job's start-up, {what}; it is what every job of the run starts, so the run would "
        f"fail too. Its output:\n{tail}",
    )
