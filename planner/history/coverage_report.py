"""plan-job history's queue and coverage tables: each run's predicted vs actual start and
finish, and per kind and partition the share of jobs within their P50 and P95, run time and
queue wait apart, with the P95 widening the next plan gets (planner.history.coverage)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from planner.history.correction import step_biases_by_nodes
from planner.history.coverage import queue_waits, run_times, widening_ratios
from planner.history.database import connect
from planner.model.correction import correction_from
from planner.model.coverage import MIN_JOBS, Coverage, Widening, coverage, widening_from
from planner.model.kind import describe
from planner.units import fmt_duration

_JOBS = """
SELECT p.run_dir, p.total_steps, p.finish_p50_s, p.finish_p95_s, o.submit_time,
       o.start_time, o.end_time, o.predicted_start, o.from_step, o.steps
FROM plans p JOIN outcomes o ON o.run_dir = p.run_dir
WHERE p.id IN (SELECT MAX(id) FROM plans GROUP BY run_dir)
ORDER BY p.recorded, o.submit_time, o.attempt
"""
_PAIRS = """
SELECT DISTINCT p.workload, p.kind, p.partition FROM outcomes o JOIN plans p
ON p.id = (SELECT MAX(id) FROM plans WHERE run_dir = o.run_dir)
WHERE p.kind IS NOT NULL ORDER BY p.workload, p.kind, p.partition
"""

START_HEADERS = (
    "run",
    "submitted",
    "start: predicted",
    "actual",
    "finish: predicted P50 / P95",
    "actual",
)
COVERAGE_HEADERS = (
    "kind",
    "partition",
    "run time within P50",
    "within P95",
    "queue wait within P50",
    "within P95",
    "next plan's P95",
)


@dataclass(frozen=True)
class RunTimes:
    """A run's first submit and start, what its plan predicted for them, and its finish."""

    run_dir: str
    submitted: float | None
    predicted_start: float | None  # its first job's eligible time + the predicted wait
    started: float | None
    finish_p50: float | None  # submitted + the plan's time to result
    finish_p95: float | None
    finished: float | None  # its last job's end, once it reached its last step


@dataclass(frozen=True)
class KindCoverage:
    workload: str
    kind: str
    partition: str
    run_time: Coverage
    queue_wait: Coverage
    widening: Widening | None  # what the next plan's P95 gets


def run_times_table(path: Path | None, limit: int) -> list[RunTimes]:
    """The newest ``limit`` runs with a submitted job, oldest first."""
    with connect(path) as db:
        rows = db.execute(_JOBS).fetchall()
    by_run: dict[str, list[sqlite3.Row]] = {}
    for row in rows:
        by_run.setdefault(row["run_dir"], []).append(row)
    found = [_run_times(jobs) for jobs in by_run.values()]
    return [r for r in found if r.submitted is not None][-limit:]


def _run_times(jobs: Sequence[sqlite3.Row]) -> RunTimes:
    submitted = [j for j in jobs if j["submit_time"] is not None]
    first = min(submitted, key=lambda j: j["submit_time"]) if submitted else jobs[0]
    begin = first["submit_time"]
    reached = max((j["from_step"] or 0) + (j["steps"] or 0) for j in jobs)
    ends = [j["end_time"] for j in jobs if j["end_time"] is not None]
    total = jobs[0]["total_steps"] or 0
    p50, p95 = jobs[0]["finish_p50_s"], jobs[0]["finish_p95_s"]
    return RunTimes(
        run_dir=jobs[0]["run_dir"],
        submitted=begin,
        predicted_start=first["predicted_start"],
        started=first["start_time"],
        finish_p50=begin + p50 if begin is not None and p50 is not None else None,
        finish_p95=begin + p95 if begin is not None and p95 is not None else None,
        finished=max(ends) if ends and total and reached >= total else None,
    )


def start_rows(runs: Sequence[RunTimes]) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for run in runs:
        predicted = "-"
        if run.finish_p50 is not None:
            predicted = f"{_when(run.finish_p50)} / {_when(run.finish_p95)}"
        rows.append(
            (
                Path(run.run_dir).name,
                _when(run.submitted),
                _when(run.predicted_start),
                _off(run.started, run.predicted_start),
                predicted,
                _off(run.finished, run.finish_p50) if run.finished else "not yet",
            )
        )
    return rows


def kind_coverage(path: Path | None) -> list[KindCoverage]:
    """Every kind and partition with jobs in the history."""
    with connect(path) as db:
        pairs = db.execute(_PAIRS).fetchall()
    found = []
    for workload, kind, partition in pairs:
        jobs = run_times(kind, partition, path)
        waits = queue_waits(kind, partition, path)
        # As a new plan gets it: against the P95 after the step corrections it applies.
        by_nodes = step_biases_by_nodes(kind, partition, path)
        corrections = {
            n: c
            for n, biases in by_nodes.items()
            if (c := correction_from(workload, partition, n, biases, kind)) is not None
        }
        widening = widening_from(widening_ratios(jobs, corrections), partition)
        found.append(
            KindCoverage(
                workload,
                kind,
                partition,
                coverage([j.check for j in jobs]),
                coverage(waits),
                widening,
            )
        )
    return found


def coverage_rows(found: Sequence[KindCoverage]) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for c in found:
        run, wait = c.run_time, c.queue_wait
        if wait.jobs_p50 or wait.jobs_p95:
            waits: tuple[object, ...] = (_share(wait, 50), _share(wait, 95))
        else:
            waits = ("no predictions yet", "-")
        if c.widening is not None:
            next_p95 = f"x{c.widening.factor:.2f} (covered {c.widening.covered}/{c.widening.jobs})"
        elif run.jobs_p95 < MIN_JOBS:
            next_p95 = f"as modelled (< {MIN_JOBS} jobs)"
        else:
            next_p95 = "as modelled"
        rows.append(
            (
                describe(c.kind),
                c.partition,
                _share(run, 50),
                _share(run, 95),
                *waits,
                next_p95,
            )
        )
    return rows


def coverage_json(found: Sequence[KindCoverage]) -> list[dict[str, object]]:
    return [
        {
            "workload": c.workload,
            "partition": c.partition,
            "run_time": _coverage_json(c.run_time),
            "queue_wait": _coverage_json(c.queue_wait),
            "next_p95_widening": c.widening.factor if c.widening else None,
        }
        for c in found
    ]


def _coverage_json(c: Coverage) -> dict[str, object]:
    return {
        "jobs_p50": c.jobs_p50,
        "within_p50": c.within_p50,
        "p50_share": c.p50_share,
        "jobs_p95": c.jobs_p95,
        "within_p95": c.within_p95,
        "p95_share": c.p95_share,
    }


def _share(c: Coverage, which: int) -> str:
    jobs, within = (c.jobs_p50, c.within_p50) if which == 50 else (c.jobs_p95, c.within_p95)
    return f"{within / jobs:.0%} ({within}/{jobs})" if jobs else "-"


def _off(actual: float | None, predicted: float | None) -> str:
    """The actual time, and how far from the prediction (+ later, - earlier)."""
    if actual is None:
        return "-"
    if predicted is None:
        return _when(actual)
    delta = actual - predicted
    sign = "+" if delta >= 0 else "-"
    return f"{_when(actual)} ({sign}{fmt_duration(abs(delta))})"


def _when(moment: float | None) -> str:
    if moment is None:
        return "-"
    return dt.datetime.fromtimestamp(moment).astimezone().strftime("%Y-%m-%d %H:%M")
