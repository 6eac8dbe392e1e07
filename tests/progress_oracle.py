"""The progress file as plan-job read it before the streaming reader (main at a6fc4cf): every
line parsed (jobs.progress.read_progress), every event kept, each job's every step time. Kept
here as the oracle that planner.runs.progress_reader's summaries are checked against."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.calibration.stats import mean_ci, warmup_cut
from jobs.progress import read_progress
from jobs.training.resume import RECENT_STEPS
from planner.eta.steps import MIN_JOB_STEPS, WINDOW, WINSOR, SteadyStepTime, winsorize


@dataclass(frozen=True)
class FullJob:
    index: int
    job_id: str | None
    start_time: float | None
    start_step: int
    load_s: float | None
    step_times: tuple[float, ...]
    last_step: int
    last_time: float | None
    saves: tuple[tuple[int, float], ...]
    stop_reason: str | None
    resumed: bool
    first_step_begin: float | None


@dataclass(frozen=True)
class FullRead:
    jobs: tuple[FullJob, ...]
    events: int
    total_steps: int | None
    evals: tuple[float, ...]
    checkpoint_lines: tuple[tuple[int | None, str], ...]


def full_read(path: Path) -> FullRead:
    events = read_progress(path)
    groups: list[list[Mapping[str, Any]]] = []
    for event in events:
        if event.get("event") == "start" or not groups:
            groups.append([])
        groups[-1].append(event)
    logged = next((e["total_steps"] for e in reversed(events) if e.get("total_steps")), None)
    saved = [e for e in events if e.get("event") == "checkpoint" and e.get("path")]
    evals = [e for e in events if e.get("event") == "eval" and e.get("eval_s")]
    return FullRead(
        jobs=tuple(_job(index, group) for index, group in enumerate(groups)),
        events=len(events),
        total_steps=int(logged) if logged is not None else None,
        evals=tuple(float(e["eval_s"]) for e in evals),
        checkpoint_lines=tuple((_int(e.get("step")), str(e["path"])) for e in saved),
    )


def _job(index: int, events: Sequence[Mapping[str, Any]]) -> FullJob:
    """planner.runs.progress._job_log and planner.followup.pace.job_timings as they were."""
    start = events[0] if events[0].get("event") == "start" else {}
    timed = [
        e
        for e in events
        if e.get("event") == "step" and _finite(e.get("step_s")) and _int(e.get("step")) is not None
    ]
    steps = [int(e["step"]) for e in events if _int(e.get("step")) is not None]
    resume = next((e for e in events if e.get("event") == "resume"), None)
    stop = next((e for e in reversed(events) if e.get("event") == "stop"), None)
    times = [float(e["time"]) for e in events if _finite(e.get("time"))]
    first = next((e for e in events if e.get("event") == "step" and _finite(e.get("step_s"))), None)
    begin = None
    if first is not None and _finite(first.get("time")):
        begin = float(first["time"]) - float(first["step_s"])
    return FullJob(
        index=index,
        job_id=str(start["job_id"]) if start.get("job_id") else None,
        start_time=_float(start.get("time")),
        start_step=_int(start.get("step")) or 0,
        load_s=_float(resume.get("load_s")) if resume else None,
        step_times=tuple(float(e["step_s"]) for e in timed),
        last_step=max(steps, default=_int(start.get("step")) or 0),
        last_time=max(times, default=None),
        saves=tuple(
            (int(e["step"]), float(e["save_s"]))
            for e in events
            if e.get("event") == "checkpoint"
            and _finite(e.get("save_s"))
            and _int(e.get("step")) is not None
        ),
        stop_reason=str(stop.get("reason")) if stop is not None else None,
        resumed=resume is not None,
        first_step_begin=begin,
    )


def observed_interval(jobs: Sequence[FullJob]) -> int | None:
    gaps = [b - a for job in jobs for (a, _), (b, _) in itertools.pairwise(job.saves) if b > a]
    return statistics.mode(gaps) if gaps else None


def steady_step_time(jobs: Sequence[FullJob]) -> SteadyStepTime | None:
    """planner.eta.steps.steady_step_time as it was, on every step time."""
    pools: list[list[float]] = []
    cuts: list[int] = []
    excess: list[float] = []
    for job in jobs:
        xs = list(job.step_times)
        if len(xs) < MIN_JOB_STEPS:
            cuts.append(0)
            pools.append([])
            continue
        cut = warmup_cut(xs)
        steady = xs[cut:]
        cuts.append(cut)
        if job.index > 0:
            excess.append(max(sum(xs[:cut]) - cut * statistics.fmean(steady), 0.0))
        pools.append(steady)
    window = [x for pool in pools for x in pool][-WINDOW:]
    provisional = len(window) < 2
    if provisional:
        window = [x for job in jobs for x in job.step_times][-WINDOW:]
    if len(window) < 2:
        return None
    clipped, share = winsorize(window, WINSOR)
    mean, half = mean_ci(clipped)
    half /= 1 - 2 * share
    deciles = statistics.quantiles(window, n=10, method="inclusive")
    return SteadyStepTime(
        mean_s=mean,
        ci_low_s=max(mean - half, 0.0),
        ci_high_s=mean + half,
        median_s=statistics.median(window),
        p10_s=deciles[0],
        p90_s=deciles[-1],
        sd_s=statistics.stdev(clipped),
        slowest_recent_s=max(window[-RECENT_STEPS:]),
        window=len(window),
        warmup_cut=tuple(cuts),
        warmup_excess_s=statistics.median(excess) if excess else 0.0,
        provisional=provisional,
    )


def _int(value: Any) -> int | None:
    # int() of a NaN or an infinity raised here before; the oracle reads them as no number.
    return int(value) if _finite(value) else None


def _float(value: Any) -> float | None:
    return float(value) if _finite(value) else None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
