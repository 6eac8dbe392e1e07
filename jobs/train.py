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

Before it trains, rank 0 takes the run's trainer lock (jobs.node.trainer_lock), checks that
the chain's earlier segments made progress (jobs.node.chain_guard) and that the checkpoint
folder has room (jobs.node.space), and resumes from the newest checkpoint whose checksum
matches; when none loads although the run is past step 0 it refuses, unless told
``--restart-from-scratch``. With train.json's ``hang_timeouts`` every rank runs a hang
watchdog (jobs.node.watchdog). A failure writes a `failure` progress event naming its cause.

Exit status (jobs.contract.failure): 0 done or cleanly stopped; 1 the workload (or its
checkpoint, or another rank) failed; 2 refused to start (no checkpoint loads, another trainer
holds the lock, no room) or bad config file, arguments or launch environment; 3 the chain
stopped itself; 124 the hang watchdog expired. torch is imported only once training starts:
the login node imports this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path

from jobs.contract.failure import EXIT_REFUSED
from jobs.contract.train_config import TrainConfig
from jobs.node import threads
from jobs.node.signals import STOP_SIGNALS, StopRequest
from jobs.node.watchdog import make_watchdog
from jobs.node.world import detect

# The training itself (jobs.training); these names were defined here before, and stay
# importable from here (the planner reads RECENT_STEPS).
from jobs.training.builtin import EXIT_FAILED, EXIT_OK, train, train_rank
from jobs.training.loop import CHECKPOINT_FORMAT, QuietProgress, Run
from jobs.training.resume import RECENT_STEPS, JobStart, Resumed, newest_readable

EXIT_CONFIG = EXIT_REFUSED  # a bad config file, arguments or environment: nothing started
STOP_AT_ENV = "PLANJOB_STOP_AT"


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
    parser.add_argument(
        "--restart-from-scratch",
        action="store_true",
        help="start over from step 0 when no checkpoint loads although the run is past it "
        "(without it the job refuses, exit 2); as train.json's restart_from_scratch",
    )
    args = parser.parse_args(argv)  # exits 2 on bad arguments
    try:
        config = TrainConfig.from_json(args.config.read_text(encoding="utf-8"))
        stop_at = args.stop_at if args.stop_at is not None else _stop_at_from_env()
        if stop_at is not None and not math.isfinite(stop_at):
            raise ValueError(f"--stop-at {stop_at} is not Unix seconds")
    except (OSError, ValueError) as exc:
        print(f"plan-job train: bad config {args.config}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.restart_from_scratch:
        config = dataclasses.replace(config, restart_from_scratch=True)
    # torch's threads as the calibration chose them (jobs.node.threads): before torch is
    # imported here or in a user's command, or told where it is in already (a caller's
    # process): a run's jobs must all take the same count, or a resumed run's reductions
    # would not add up as an uninterrupted one's do.
    threads.apply(sys.modules.get("torch"))
    if config.work.command:  # the user's own training command: jobs.training.command runs it
        from jobs.training.command import run_training

        status = run_training(config, stop_at, signalled=stop.signal)
        stop.ignore_from_now()
        return status
    try:
        world = detect(os.environ)
    except ValueError as exc:
        print(f"plan-job train: bad launch environment: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # Armed before torch's import: a stuck filesystem hangs that too.
    watch = make_watchdog(config.hang_timeouts, config.progress_path, world.rank, world.size)
    watch.arm("startup", 0)
    status = train_rank(config, stop_at, stop, world, watch)
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


def _stop_at_from_env() -> float | None:
    text = os.environ.get(STOP_AT_ENV, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):  # "nan" and "inf" parse, and would never stop the run
        raise ValueError(f"${STOP_AT_ENV}={text!r} is not Unix seconds")
    return value


__all__ = [
    "CHECKPOINT_FORMAT",
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "RECENT_STEPS",
    "STOP_AT_ENV",
    "STOP_SIGNALS",
    "JobStart",
    "QuietProgress",
    "Resumed",
    "Run",
    "StopRequest",
    "main",
    "newest_readable",
    "train",
    "train_rank",
]

if __name__ == "__main__":
    sys.exit(main())
