"""The accuracy benchmark's arithmetic: one run's predicted and actual times, term by term,
from plan.yaml, progress.jsonl and sacct. Error % = (predicted - actual) / actual x 100."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.accuracy_slurm import JobRecord
from jobs.progress import read_progress
from planner.calibration.record import CalibrationRecord

METHODS = (("plan-job P50", "p50_s"), ("method 1", "method1_s"), ("FLOP estimate", "flops_s"))
# The plan with its steps term at the step time the run saw instead of the calibrated one:
# what is left of its error is the time model's (start-up, saves, evaluations, resumes, job
# overheads, warm-up), not the machine's drift between the calibration and the run.
AT_RUN_STEP = ("plan-job P50 at the run's step", "p50_at_run_step_s")


@dataclass(frozen=True)
class JobPart:
    """One Slurm job of the chain, as sacct and the progress file saw it."""

    job_id: str
    state: str
    elapsed_s: float
    timelimit_s: float | None
    steps: int  # optimizer steps it trained
    stop_reason: str | None
    training_s: float  # its start event to its stop event
    outside_s: float  # elapsed - training_s: script, srun, imports, build, load, exit


@dataclass(frozen=True)
class RunResult:
    name: str
    config: dict[str, Any]
    ok: bool
    error: str | None = None
    calibration_s: float = 0.0  # the calibrate command, submission to record
    step_s: float = 0.0  # calibrated P50 optimizer step
    startup_s: float = 0.0  # calibrated
    total_steps: int = 0
    segments_planned: int = 0
    time_limits_min: list[int] = field(default_factory=list)
    predicted: dict[str, float] = field(default_factory=dict)  # p50_s, p95_s, baselines, terms
    sacct_s: float = 0.0
    training_clock_s: float = 0.0
    actual_terms: dict[str, float] = field(default_factory=dict)
    jobs: list[JobPart] = field(default_factory=list)
    inside_time: bool = False
    errors_pct: dict[str, float] = field(default_factory=dict)  # method -> error % vs sacct
    # Step times, calibrated and seen by the run: a busy machine shows as a run mean far above
    # its median, the model's step term as a gap between the two medians.
    steps_ms: dict[str, float] = field(default_factory=dict)
    load_average: list[float] = field(default_factory=list)  # 1-minute, before and after

    @classmethod
    def failed(cls, name: str, config: dict[str, Any], error: str) -> RunResult:
        return cls(name, config, False, error)

    @property
    def in_band(self) -> bool:
        return self.predicted["p50_s"] <= self.sacct_s <= self.predicted["p95_s"]


def analyse(
    name: str,
    config: dict[str, Any],
    folder: Path,
    plan: dict[str, Any],
    record: CalibrationRecord,
    calibration_s: float,
    records: list[JobRecord],
    ended: bool,
    load_average: list[float],
) -> RunResult:
    events = read_progress(folder / "run" / "progress.jsonl")
    m = record.measurement
    run_steps = _steady_steps(events)
    steps_ms = {
        "calibrated_mean": m.step_mean_s * 1e3,
        "calibrated_median": m.step_median_s * 1e3,
        "run_mean": statistics.fmean(run_steps) * 1e3 if run_steps else 0.0,
        "run_median": statistics.median(run_steps) * 1e3 if run_steps else 0.0,
    }
    wall, base = plan["wall"], plan["baselines"]
    predicted = {
        "p50_s": wall["p50_s"],
        "p95_s": wall["p95_s"],
        "method1_s": base["method1_s"],
        "flops_s": base["flops_s"],
        **{f"term_{k}": wall.get(k, 0.0) for k in _TERMS},
    }
    add_at_run_step(predicted, steps_ms)
    jobs = [_job_part(r, _events_of(events, r.job_id)) for r in records]
    sacct_s = sum(r.elapsed_s for r in records)
    starts = [e["time"] for e in events if e["event"] == "start"]
    stops = [e for e in events if e["event"] == "stop"]
    clock = stops[-1]["time"] - starts[0] if starts and stops else 0.0
    actual = {
        "steps_s": _sum(events, "step", "step_s"),
        "checkpoints_s": _sum(events, "checkpoint", "save_s"),
        "evals_s": _sum(events, "eval", "eval_s"),
        "loads_s": _sum(events, "resume", "load_s"),
        "outside_s": sum(j.outside_s for j in jobs),
        "evals": float(sum(e["event"] == "eval" for e in events)),
        "saves": float(sum(e["event"] == "checkpoint" for e in events)),
        "jobs_training": float(sum(j.steps > 0 for j in jobs)),
    }
    done = bool(stops) and stops[-1].get("reason") == "done"
    inside = ended and done and all(r.state == "COMPLETED" for r in records)
    errors = {
        label: error_pct(predicted[key], sacct_s)
        for label, key in (*METHODS, AT_RUN_STEP)
        if key in predicted
    }
    return RunResult(
        name=name,
        config=config,
        ok=ended and done and len(records) == len(plan["segments"]),
        error=None if ended else "the chain did not end in time; cancelled",
        calibration_s=calibration_s,
        step_s=plan["step_s"],
        startup_s=record.measurement.startup_s,
        total_steps=plan["total_steps"],
        segments_planned=len(plan["segments"]),
        time_limits_min=[s["time_limit_minutes"] for s in plan["segments"]],
        predicted=predicted,
        sacct_s=sacct_s,
        training_clock_s=clock,
        actual_terms=actual,
        jobs=jobs,
        inside_time=inside,
        errors_pct=errors,
        steps_ms=steps_ms,
        load_average=load_average,
    )


_TERMS = (
    "startup_s",
    "warmup_s",
    "steps_s",
    "checkpoints_s",
    "evals_s",
    "resumes_s",
    "failures_s",
    "compile_s",
)


def _steady_steps(events: list[dict[str, Any]]) -> list[float]:
    """The step times the run saw, each job's first step left out: it holds the job's first
    use of the kernels and, compiling, its compile, which the plan counts as terms of their
    own (warm-up, compile), not in its step."""
    times, first = [], False
    for event in events:
        if event["event"] == "start":
            first = True
        elif event["event"] == "step" and event.get("step_s"):
            if not first:
                times.append(event["step_s"])
            first = False
    return times


def add_at_run_step(predicted: dict[str, float], steps_ms: dict[str, float]) -> None:
    """Put the P50 at the run's own mean step into ``predicted`` (when the run stepped)."""
    if steps_ms.get("run_mean") and steps_ms.get("calibrated_mean"):
        drift = steps_ms["run_mean"] / steps_ms["calibrated_mean"]
        predicted[AT_RUN_STEP[1]] = predicted["p50_s"] + predicted["term_steps_s"] * (drift - 1)


def error_pct(predicted: float, actual: float) -> float:
    return (predicted - actual) / actual * 100 if actual > 0 else float("nan")


def _events_of(events: list[dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
    """The events one job wrote: from its start line to the next job's."""
    mine, inside = [], False
    for event in events:
        if event["event"] == "start":
            inside = str(event.get("job_id")) == job_id
        if inside:
            mine.append(event)
    return mine


def _job_part(record: JobRecord, events: list[dict[str, Any]]) -> JobPart:
    start = next((e for e in events if e["event"] == "start"), None)
    stop = next((e for e in reversed(events) if e["event"] == "stop"), None)
    training = stop["time"] - start["time"] if start and stop else 0.0
    steps = stop["step"] - start["step"] if start and stop else 0
    return JobPart(
        job_id=record.job_id,
        state=record.state,
        elapsed_s=record.elapsed_s,
        timelimit_s=record.timelimit_s,
        steps=steps,
        stop_reason=stop.get("reason") if stop else None,
        training_s=training,
        outside_s=record.elapsed_s - training,
    )


def _sum(events: list[dict[str, Any]], kind: str, key: str) -> float:
    return float(sum(e.get(key) or 0.0 for e in events if e["event"] == kind))
