"""How long plan-job takes to read a long run's progress file, against `wc -l` on the same file.

    .venv/bin/python bench/long_log.py [--steps 100000 1000000] [--runs 5] [--work DIR]
                                       [--commands eta eta-run resubmit tighten history]

Writes a synthetic progress.jsonl (as jobs.progress writes it: one line a step, a checkpoint
every 1,000 steps, a restart every 200,000 with its stop, start and resume lines; the run is
half done) into a run folder made by `emit` from a synthetic calibration record (the reading
is what is measured, not the plan), then times each command (a fresh process each time,
median of --runs) and reports it as a ratio to `wc -l` on the same file, with the peak RSS
of its process:

- `eta FILE` (the progress file alone) and `eta RUN` (the run folder, with its plan);
- `resubmit RUN --dry-run`, `tighten RUN` and `history --update RUN` (a private history);
- `node`: what a segment reads at its start on the compute node (jobs.progress.read_progress
  with the last few steps, as jobs.training.preflight does: the chain guard, the checkpoints,
  the previous jobs' recent steps).

resubmit, tighten and history ask Slurm: they run with stand-ins for squeue, sacct, scontrol
and sinfo first on PATH that know no job (every job reads as ended, its state inferred from
the files) and one partition of 2 nodes and a 2-day MaxTime, so the figures are plan-job's own
work. Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PLAN_JOB = Path(sys.executable).parent / "plan-job"
CHECKPOINT_EVERY = 1000
RESTART_EVERY = 200_000
COMMANDS = ("eta", "eta-run", "resubmit", "tighten", "history", "node")
# Slurm stand-ins that know no job (squeue lists none, sacct finds none, scontrol forgets it)
# and one partition, gpu: 2 nodes of 2 GPUs, MaxTime 2 days.
PARTITION = (
    "PartitionName=gpu Default=YES MaxNodes=UNLIMITED MaxTime=2-00:00:00 Nodes=n[1-2] "
    "State=UP TotalCPUs=4 TotalNodes=2"
)
FAKE_SLURM = {
    "squeue": "#!/bin/sh\nexit 0\n",
    "sacct": "#!/bin/sh\nexit 0\n",
    "sinfo": "#!/bin/sh\nprintf 'n1 2 gpu:2\\nn2 2 gpu:2\\n'\n",
    "scontrol": (
        '#!/bin/sh\ncase "$*" in\n'
        f"  *partition*) echo '{PARTITION}' ;;\n"
        "  *) echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1 ;;\nesac\n"
    ),
}


def write_progress(path: Path, steps: int, seed: int = 0) -> None:
    """ProgressWriter's lines for ``steps`` steps of a run of twice as many."""
    rnd = random.Random(seed)
    t = 1_700_000_000.0
    restart = 0
    with open(path, "w", encoding="utf-8") as out:

        def write(event: str, **fields: object) -> None:
            out.write(json.dumps({"event": event, "time": t, **fields}) + "\n")

        def start(step: int) -> None:
            write(
                "start",
                step=step,
                total_steps=2 * steps,
                restart=restart,
                job_id=str(1000 + restart),
                host="n1",
                pid=4242,
            )
            if step:
                write("resume", step=step, load_s=0.8, path=f"/ckpt/ckpt-{step:09d}.pt")

        start(0)
        for step in range(1, steps + 1):
            warm = 0.4 if step % RESTART_EVERY < 5 else 0.0  # each job's first steps
            step_s = 0.1 + 0.01 * rnd.random() + warm
            t += step_s
            write(
                "step",
                step=step,
                samples=step * 256,
                tokens=step * 131072,
                step_s=step_s,
                loss=2.0 + rnd.random(),
            )
            if step % CHECKPOINT_EVERY == 0:
                t += 0.25
                path_ = f"/ckpt/ckpt-{step:09d}.pt"
                write("checkpoint", step=step, save_s=0.25, path=path_, bytes=1 << 20)
            if step % RESTART_EVERY == 0 or step == steps:
                write("stop", step=step, reason="time_limit", signal=None)
                if step < steps:
                    restart += 1
                    t += 30.0
                    start(step)


def make_run(folder: Path, steps: int) -> Path:
    """A run folder (`emit`) of 2 x ``steps`` steps with the synthetic progress file in it."""
    from planner.runs.emit import EmitOptions, emit
    from tests.builders import plan_for, spec_with

    run = folder / "run"
    spec = spec_with(
        data__samples=2 * steps * 256,
        checkpoint__dir=str(folder / "ckpt"),
        checkpoint__interval_steps=CHECKPOINT_EVERY,
    )
    emit(plan_for(spec), EmitOptions(out_dir=run, workdir=folder))
    write_progress(run / "progress.jsonl", steps)
    return run


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, int, int, float]:
    """Wall seconds, peak RSS in KiB, exit code and CPU seconds (user + system) of one
    process: on a shared machine the CPU time is what the command costs, the wall time
    what it took among the others."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode() if process.stderr else ""
    if process.returncode not in (0, 1, 2):
        raise SystemExit(f"{' '.join(argv)}: exit {process.returncode}\n{stderr}")
    return elapsed, usage.ru_maxrss, process.returncode, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--work", type=Path, help="keep the files here (default: a temp dir)")
    parser.add_argument("--commands", nargs="+", choices=COMMANDS, default=list(COMMANDS))
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="long_log-"))
    bin_dir = work / "fake-slurm"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, text in FAKE_SLURM.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PLANJOB_HISTORY": str(work / "history.sqlite"), "COLUMNS": "100"}
    slurm_env = {**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}
    print(f"work folder: {work}; load average before: {os.getloadavg()[0]:.2f}")
    for steps in args.steps:
        folder = work / f"steps-{steps}"
        run = folder / "run"
        progress = run / "progress.jsonl"
        if not progress.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            make_run(folder, steps)
            print(f"wrote {progress} in {time.perf_counter() - started:.1f} s")
        size = progress.stat().st_size
        with open(progress, "rb") as handle:
            lines = sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
        wc = [timed(["wc", "-l", str(progress)], env)[0] for _ in range(args.runs)]
        base = statistics.median(wc)
        print(
            f"\n{steps:,} steps: {size / 1e6:.0f} MB, {lines:,} "
            f"lines; wc -l median {base * 1e3:.0f} ms over {args.runs} runs"
        )
        labels = {
            "eta": "eta FILE",
            "eta-run": "eta RUN",
            "resubmit": "resubmit RUN --dry-run",
            "tighten": "tighten RUN",
            "history": "history --update RUN",
            "node": "node: a segment's start",
        }
        node_read = (
            "from jobs.progress import read_progress; import sys; "
            "read_progress(sys.argv[1], keep_steps=5)"
        )
        argvs = {
            "eta": ([str(PLAN_JOB), "eta", str(progress)], env),
            "eta-run": ([str(PLAN_JOB), "eta", str(run)], env),
            "resubmit": ([str(PLAN_JOB), "resubmit", str(run), "--dry-run"], slurm_env),
            "tighten": ([str(PLAN_JOB), "tighten", str(run)], slurm_env),
            "history": ([str(PLAN_JOB), "history", "--update", str(run)], slurm_env),
            "node": ([sys.executable, "-c", node_read, str(progress)], env),
        }
        print(
            f"{'command':<26} {'median s':>9} {'min s':>7} {'x wc -l':>8} {'CPU s':>6} "
            f"{'RSS MB':>7}  exit"
        )
        for name in args.commands:
            argv, command_env = argvs[name]
            results = [timed(argv, command_env) for _ in range(args.runs)]
            seconds = [r[0] for r in results]
            rss = max(r[1] for r in results) / 1024
            median = statistics.median(seconds)
            cpu = statistics.median(r[3] for r in results)
            label = labels[name]
            print(
                f"{label:<26} {median:>9.2f} {min(seconds):>7.2f} {median / base:>8.1f} "
                f"{cpu:>6.2f} {rss:>7.0f}  {results[-1][2]}"
            )
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
