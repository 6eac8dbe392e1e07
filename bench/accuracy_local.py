"""Benchmark without Slurm: predicted vs actual wall time of real training runs on this machine.

    python bench/accuracy_local.py --out FOLDER [--set gpu|cpu] [--only NAME ...]
                                   [--budget-s 470] [--threads N]

The sibling of bench/accuracy.py for one machine, a GPU box without Slurm included: for each
configuration it runs what a user runs, with the local executor,

    plan-job calibrate calibrate.yaml -o cal.yaml          (calibration.executor: local)
    plan-job plan / emit run.yaml --calibration cal.yaml -o run

and then the emitted run/train.json directly, ``python -m jobs.train run/train.json --stop-at T``,
where run.yaml sizes the data so that the steps take the configuration's target seconds at the
calibrated step time. plan and emit run with no Slurm client on PATH, so the plan is one job
with no partition limits, as on a machine without Slurm.

Like with like. The plan models a Slurm segment: its script and srun (0 here: a local
calibration measures none), the process's start-up, warm-up, steps, saves (the first job's
probe save included, made because a segment has a stop time), evaluations and exit. So the run
is started as a segment's srun starts it: one process, given the stop time a segment's
prologue sets (its --time from now, less the same margin), which makes it probe a save before
its first step as a segment does; without one it would not, and the plan would count one save
too many. Actual time = the process's wall clock from its spawn to its exit (a segment's sacct
Elapsed less the script's own few milliseconds). A workload.compile configuration points
TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR at a fresh folder for each process, so the run
compiles from nothing as the calibration did: a job on a node that never compiled the model.

Output: a table per run (the plan's terms against the run's, from progress.jsonl), a summary
table and the median and max |error| of each method, printed and written to FOLDER/
accuracy-local.txt, and FOLDER/accuracy-local.json; the run folders are kept in FOLDER/runs.
--budget-s (default 470 s) skips a configuration that would not finish within it, judged by
the longest one so far (a compiled one: a minute more), and lists it: the command ends within
8 minutes wherever it runs. The GPU set is sized for that from the issue's H200 figures; it has
not run on a GPU yet.
Targets on a GPU (the issue): plan-job median |error| <= 2%, max <= 5%. Figures only:
nothing is asserted.

--set gpu (the default where torch sees CUDA): JiT-B/4 and GPT-2 124M in bf16, the seed's
measured cases, and JiT-B/4 compiled. --set cpu: tiny presets in fp32 with --threads torch
threads (default 1), ~6 minutes on two cores: the same script, run where there is no GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: the bench package

from bench.accuracy_analysis import RunResult, analyse  # noqa: E402
from bench.accuracy_report import report  # noqa: E402
from bench.accuracy_slurm import JobRecord  # noqa: E402

CLI_TIMEOUT_S = 600
# A segment's prologue sets its stop time this long before the job's end (planner.runs.emit).
STOP_MARGIN_S = 20
TARGETS = "targets on a GPU: plan-job median |error| <= 2%, max <= 5%; every run inside its --time"


@dataclass(frozen=True)
class LocalConfig:
    """One run. Its data size follows from target_s and the calibrated step."""

    name: str
    workload: str  # jit | gpt
    preset: str
    micro_batch: int
    target_s: float  # seconds of optimizer steps at the calibrated step time
    grad_accum: int = 1
    precision: str = "bf16"
    checkpoints: int | None = None  # saves over the run (checkpoint.interval_steps)
    evaluations: int = 0  # evaluations over the run (plan.eval_interval_steps)
    eval_batches: int = 10
    max_seconds: float = 10.0  # calibration.max_seconds
    compile: bool = False  # workload.compile


# 35 s of steps each, so that four eager runs and a compiled one may fit --budget-s on an
# H200: an estimate (each calibration ~30 s with ~10 s of steps; a compile ~30 s in the
# calibration and again in the run, as hand-timed there), not a measurement.
GPU = (
    LocalConfig("jit-B4-mb64", "jit", "B/4", 64, target_s=35),
    LocalConfig("gpt2-124M-mb16x4-eval", "gpt", "124M", 16, 35, 4, checkpoints=4, evaluations=6),
    LocalConfig("jit-B4-mb32x2-save", "jit", "B/4", 32, 35, 2, checkpoints=3),
    LocalConfig("gpt2-124M-mb8x8", "gpt", "124M", 8, 35, 8),
    LocalConfig("jit-B4-mb64-compile", "jit", "B/4", 64, 35, compile=True),
)
_CPU = {"precision": "fp32", "max_seconds": 10.0}
CPU = (
    LocalConfig("cpu-jit-tiny-mb8", "jit", "tiny", 8, 40, **_CPU),
    LocalConfig(
        "cpu-jit-micro-mb4x2-eval", "jit", "micro", 4, 40, 2, checkpoints=4, evaluations=4, **_CPU
    ),
    LocalConfig("cpu-gpt-tiny-mb8-save", "gpt", "tiny", 8, 40, checkpoints=3, **_CPU),
    LocalConfig("cpu-gpt-tiny-mb16x2-eval", "gpt", "tiny", 16, 40, 2, evaluations=4, **_CPU),
    LocalConfig("cpu-jit-tiny-mb8-compile", "jit", "tiny", 8, 40, compile=True, **_CPU),
)


def spec_for(config: LocalConfig, gpu: bool, samples: int, steps: int | None = None) -> dict:
    """The run spec; ``steps`` (the planned run's) turns the counts into intervals."""
    workload: dict[str, Any] = {"name": config.workload, "preset": config.preset}
    if config.compile:
        workload["compile"] = True
    spec: dict[str, Any] = {
        "name": config.name,
        "workload": workload,
        "data": {"samples": samples},
        "batch": {"micro_batch": config.micro_batch, "grad_accum": config.grad_accum},
        "precision": config.precision,
        "cluster": {"gpus_per_node": 1 if gpu else 0},
        "checkpoint": {"dir": "ck", "keep": 2},
        "calibration": {
            "executor": "local",
            "device": "cuda" if gpu else "cpu",
            "max_steps": 1_000_000,  # the time cap or the CI ends it, not a step count
            "max_seconds": config.max_seconds,
            "target_ci": 0.01,
        },
        "plan": {"max_nodes": 1},
    }
    if config.evaluations:
        every = max(1, (steps or config.evaluations) // config.evaluations)
        spec["plan"].update(eval_interval_steps=every, eval_batches=config.eval_batches)
    if config.checkpoints and steps:
        spec["checkpoint"]["interval_steps"] = max(1, steps // config.checkpoints)
    return spec


def run_config(config: LocalConfig, gpu: bool, folder: Path, env: dict[str, str]) -> RunResult:
    """calibrate -> plan -> emit -> python -m jobs.train with a stop time, in ``folder``."""
    from planner.calibration.record import load_record

    folder.mkdir(parents=True)
    # A history of its own: corrections learnt from earlier runs must not change this plan.
    env = {**env, "PLANJOB_HISTORY": str(folder / "history.sqlite")}
    print(f"\n=== {config.name} ===", flush=True)
    load_before = os.getloadavg()[0]
    (folder / "calibrate.yaml").write_text(yaml.safe_dump(spec_for(config, gpu, samples=1000)))
    start = time.monotonic()
    _cli(
        ["calibrate", "calibrate.yaml", "-o", "cal.yaml"],
        folder,
        _caches(config, folder, "cal", env),
    )
    calibration_s = time.monotonic() - start
    record = load_record(folder / "cal.yaml")
    m = record.measurement
    steps = max(1, round(config.target_s / m.step_mean_s))
    global_batch = config.micro_batch * config.grad_accum
    run_spec = spec_for(config, gpu, steps * global_batch, steps)
    (folder / "run.yaml").write_text(yaml.safe_dump(run_spec))
    print(
        f"calibrated in {calibration_s:.1f} s: step {m.step_mean_s * 1e3:.2f} ms "
        f"(±{m.step_ci_relative:.1%}), start-up {m.startup_s:.2f} s (its own process "
        f"{m.harness_startup_s:.2f} s), warm-up {m.warmup_extra_s:.3f} s (its own "
        f"{m.harness_warmup_extra_s:.3f} s), eval {m.eval_s:.3f} s (first {m.eval_first_s:.3f} "
        f"s), exit {m.job_end_s:.2f} s, compile {m.compile_s:.1f} s; run: {steps} steps",
        flush=True,
    )
    no_slurm = {**env, "PATH": tempfile.mkdtemp(prefix="no-slurm-")}
    print(_cli(["plan", "run.yaml", "--calibration", "cal.yaml"], folder, no_slurm).stdout)
    _cli(["emit", "run.yaml", "--calibration", "cal.yaml", "-o", "run"], folder, no_slurm)
    plan = yaml.safe_load((folder / "run" / "plan.yaml").read_text())
    limit_s = plan["segments"][0]["time_limit_minutes"] * 60
    run_env = _caches(config, folder, "run", env)
    spawned = time.time()
    stop_at = spawned + limit_s - STOP_MARGIN_S
    argv = [sys.executable, "-m", "jobs.train", "run/train.json", "--stop-at", f"{stop_at:.3f}"]
    with open(folder / "run" / "train.log", "wb") as log:
        proc = subprocess.Popen(argv, cwd=folder, env=run_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            status = proc.wait(timeout=limit_s + 120)
        except subprocess.TimeoutExpired:
            proc.kill()
            status = proc.wait()
        wall_s = time.time() - spawned
    state = "COMPLETED" if status == 0 else "FAILED"
    if wall_s > limit_s:
        state = "TIMEOUT"
    # The progress file's start line names no job (no $SLURM_JOB_ID): "None" is its id.
    job = JobRecord("None", state, wall_s, float(limit_s))
    load = [load_before, os.getloadavg()[0]]
    return analyse(
        config.name, asdict(config), folder, plan, record, calibration_s, [job], True, load
    )


def _caches(config: LocalConfig, folder: Path, who: str, env: dict[str, str]) -> dict[str, str]:
    if not config.compile:
        return env
    return {
        **env,
        "TORCHINDUCTOR_CACHE_DIR": str(folder / f"inductor-{who}"),
        "TRITON_CACHE_DIR": str(folder / f"triton-{who}"),
    }


def _cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "planner.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"plan-job {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        )
    return proc


def base_env(threads: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PLANJOB_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


class _Tee:
    """stdout, and a copy in a file."""

    def __init__(self, stream: TextIO, copy: TextIO) -> None:
        self.stream, self.copy = stream, copy

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.copy.flush()
        self.stream.flush()


def device_line(gpu: bool) -> str:
    import torch

    if gpu:
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    from jobs.calibration.host import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} CPUs (torch {torch.__version__})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    parser.add_argument(
        "--set", choices=("gpu", "cpu"), dest="which", help="default: gpu with CUDA"
    )
    parser.add_argument("--only", action="append", default=[], metavar="NAME")
    parser.add_argument("--budget-s", type=float, default=470.0)
    parser.add_argument("--threads", type=int, help="torch threads (default: 1 on the CPU set)")
    args = parser.parse_args()
    import torch

    gpu = (args.which or ("gpu" if torch.cuda.is_available() else "cpu")) == "gpu"
    configs = list(GPU if gpu else CPU)
    if args.only:
        known = {c.name: c for c in (*GPU, *CPU)}
        unknown = [n for n in args.only if n not in known]
        if unknown:
            raise SystemExit(f"unknown configuration(s) {unknown}; known: {', '.join(known)}")
        configs = [known[n] for n in args.only]
    threads = args.threads if args.threads is not None else (None if gpu else 1)
    out = args.out.resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    with open(out / "accuracy-local.txt", "w", encoding="utf-8") as text:
        sys.stdout = _Tee(sys.__stdout__, text)  # type: ignore[assignment]
        try:
            document = _run(configs, gpu, out, threads, args.budget_s)
        finally:
            sys.stdout = sys.__stdout__
    (out / "accuracy-local.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {out / 'accuracy-local.json'} and accuracy-local.txt")


def _run(
    configs: list[LocalConfig], gpu: bool, out: Path, threads: int | None, budget_s: float
) -> dict[str, Any]:
    started = time.monotonic()
    print(f"host {platform.node()}, {device_line(gpu)}; {len(configs)} configuration(s)")
    env = base_env(threads)
    results: list[RunResult] = []
    took: list[float] = []
    skipped: list[str] = []
    for config in configs:
        elapsed = time.monotonic() - started
        # The next one is taken to last as long as the longest so far (a compiled one more).
        need = (max(took) if took else 60.0) + (60.0 if config.compile else 0.0)
        if elapsed + need > budget_s:
            print(
                f"\n{config.name}: skipped ({elapsed:.0f} s spent, ~{need:.0f} s more "
                f"would pass --budget-s {budget_s:g})",
                flush=True,
            )
            skipped.append(config.name)
            continue
        begun = time.monotonic()
        try:
            results.append(run_config(config, gpu, out / "runs" / config.name, env))
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
            print(f"{config.name}: FAILED: {exc}", flush=True)
            results.append(RunResult.failed(config.name, asdict(config), str(exc)))
        took.append(time.monotonic() - begun)
    summary = report(results, actual="wall", targets=TARGETS)
    if skipped:
        print(f"skipped for the budget: {', '.join(skipped)}")
    wall = time.monotonic() - started
    print(f"{wall / 60:.1f} min in all")
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "host": platform.node(),
        "device": device_line(gpu),
        "cpus": os.cpu_count(),
        "threads": threads,
        "load_average": os.getloadavg(),
        "wall_s": wall,
        "summary": summary,
        "skipped": skipped,
        "config_wall_s": dict(zip([r.name for r in results], took, strict=False)),
        "median_config_wall_s": statistics.median(took) if took else 0.0,
        "runs": [asdict(r) for r in results],
    }


if __name__ == "__main__":
    main()
