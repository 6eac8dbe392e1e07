"""plan-job history's tables: predicted vs actual per run, the bias per workload and
partition (and the correction a new plan gets), the newest calibrations."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from planner.history.correction import step_biases_by_nodes
from planner.history.coverage_report import (
    COVERAGE_HEADERS,
    START_HEADERS,
    coverage_json,
    coverage_rows,
    kind_coverage,
    run_times_table,
    start_rows,
)
from planner.history.database import connect, history_path
from planner.model.correction import (
    MAX_SPREAD,
    MIN_OUTCOMES,
    RECENT,
    Correction,
    correction_from,
)
from planner.model.coverage import MIN_JOBS
from planner.model.kind import describe
from planner.model.plan import Plan
from planner.model.plan_json import dumps
from planner.textwidth import fit_table, wrap_text
from planner.units import fmt_duration

HISTORY_SCHEMA = "plan-job.history/1"

_RUNS = """
SELECT p.run_dir, p.name, p.workload, p.partition, p.nodes, p.total_steps, p.p50_s, p.p95_s,
       p.correction, COUNT(o.id) AS jobs, SUM(o.elapsed_s) AS elapsed,
       SUM(CASE WHEN o.predicted_s > 0 AND o.elapsed_s > 0 THEN o.elapsed_s END) AS timed,
       SUM(o.predicted_s) AS predicted, MAX(o.from_step + o.steps) AS reached
FROM plans p LEFT JOIN outcomes o ON o.run_dir = p.run_dir
WHERE p.id IN (SELECT MAX(id) FROM plans GROUP BY run_dir)
GROUP BY p.id ORDER BY p.recorded
"""


_NOT_LEARNED_HEADERS = ("run", "job", "ended", "at step", "why")
_NOT_LEARNED = """
SELECT o.run_dir, o.job_id, o.attempt, o.state, o.exit, o.cause, o.why, o.steps, o.from_step
FROM outcomes o WHERE o.learned = 0 AND o.why IS NOT NULL
ORDER BY COALESCE(o.end_time, o.recorded) DESC, o.id DESC LIMIT ?
"""


def history_text(path: Path | None = None, limit: int = 20, width: int | None = None) -> str:
    where = history_path(path)
    runs, pairs, calibrations, unlearned = _read(path, limit)
    parts = [wrap_text(f"history: {where}", width)]
    if runs:
        parts.append("runs: predicted (as emitted) vs actual (the jobs' elapsed time)")
        rows = [_run_row(r) for r in runs]
        # The names, the prediction and the actual time wrap; the counts stay whole.
        wrap = {0: 12, 1: 12, 4: 12, 7: 10, 8: 9}
        parts.append(fit_table(rows, _RUN_HEADERS, wrap=wrap, width=width))
    else:
        parts.append("no runs recorded yet: `plan-job emit` records one")
    bias_rows = [_bias_row(bias) for bias in _biases(pairs, path)]
    if bias_rows:
        title = (
            f"step bias (a job's steady step / the model's step, per node count; newest "
            f"{RECENT} beat the rest): the next plan's steps at that node count are scaled"
        )
        parts.append(wrap_text(title, width))
        parts.append(fit_table(bias_rows, _BIAS_HEADERS, wrap={0: 16, -1: 16}, width=width))
    starts = run_times_table(path, limit)
    if starts:
        parts.append(
            wrap_text(
                "starts and finishes: predicted (a job's eligible time + the wait its plan "
                "predicted; the first submit + the plan's time to result) vs actual "
                "(+ later, - earlier than predicted)",
                width,
            )
        )
        parts.append(
            fit_table(
                start_rows(starts),
                START_HEADERS,
                wrap={0: 12, 1: 10, 2: 10, 3: 12, 4: 12, 5: 12},
                width=width,
            )
        )
    kinds = kind_coverage(path)
    if kinds:
        parts.append(
            wrap_text(
                "coverage: the share of jobs whose actual time stayed within their P50 and "
                f"their P95, run time and queue wait apart (a P95 that covered under 90% of "
                f"{MIN_JOBS}+ jobs is widened in the next plan)",
                width,
            )
        )
        parts.append(
            fit_table(
                coverage_rows(kinds),
                COVERAGE_HEADERS,
                wrap={0: 14, 1: 9, 2: 10, 3: 10, 4: 11, 5: 10, 6: 12},
                width=width,
            )
        )
    if unlearned:
        parts.append(
            "attempts not learned from (failed, hung or killed; newest first): kept, shown, "
            "never in a correction"
        )
        rows = [
            (
                Path(row["run_dir"]).name,
                row["job_id"] + (f" (restart {row['attempt']})" if row["attempt"] else ""),
                " ".join(filter(None, (row["state"], row["exit"] and f"({row['exit']})"))),
                f"{(row['from_step'] or 0) + (row['steps'] or 0):,}",
                row["why"],
            )
            for row in unlearned
        ]
        parts.append(fit_table(rows, _NOT_LEARNED_HEADERS, wrap={0: 12, -1: 30}, width=width))
    if calibrations:
        parts.append("newest calibrations")
        rows = [
            (
                _when(c["recorded"]),
                c["name"],
                c["workload"],
                c["device"],
                fmt_duration(c["step_mean_s"]),
                c["path"],
            )
            for c in calibrations
        ]
        headers = ("recorded", "name", "workload", "device", "step", "record")
        wrap = {1: 12, 2: 12, 3: 12, -1: 16}
        parts.append(fit_table(rows, headers, wrap=wrap, width=width))
    return "\n\n".join(parts)


def history_json(path: Path | None = None, limit: int = 20) -> str:
    """The same tables as JSON (README "JSON output"): runs oldest first, the step bias
    and next correction per workload, partition and node count, the newest calibrations first."""
    runs, pairs, calibrations, unlearned = _read(path, limit)
    biases = [
        {
            "workload": b.workload,
            "kind": json.loads(b.kind) if b.kind else None,
            "partition": b.partition,
            "nodes": b.nodes,
            "jobs": len(b.model),
            "recent_median": statistics.median(b.model[-RECENT:]),
            "median": statistics.median(b.model),
            "newest": b.model[-1],
            "next_factor": b.correction.factor if b.correction else None,
            "learned_factor": b.correction.learned if b.correction else None,
            "next_spread": b.correction.spread if b.correction else None,
            "applied": b.correction.applied if b.correction else None,
        }
        for b in _biases(pairs, path)
    ]
    out_runs = []
    for row in runs:
        run = dict(row)
        run["actual_over_predicted"] = (
            row["timed"] / row["predicted"] if row["timed"] and row["predicted"] else None
        )
        out_runs.append(run)
    return dumps(
        {
            "schema": HISTORY_SCHEMA,
            "history": str(history_path(path)),
            "runs": out_runs,
            "biases": biases,
            "starts": [dataclasses.asdict(r) for r in run_times_table(path, limit)],
            "coverage": coverage_json(kind_coverage(path)),
            "calibrations": [dict(row) for row in calibrations],
            "not_learned": [dict(row) for row in unlearned],
        }
    )


def _read(
    path: Path | None, limit: int
) -> tuple[list[sqlite3.Row], list[sqlite3.Row], list[sqlite3.Row], list[sqlite3.Row]]:
    with connect(path) as db:
        runs = db.execute(_RUNS).fetchall()[-limit:]
        pairs = db.execute(
            "SELECT DISTINCT p.workload, p.kind, p.partition FROM outcomes o JOIN plans p"
            " ON p.id = (SELECT MAX(id) FROM plans WHERE run_dir = o.run_dir)"
            " WHERE p.kind IS NOT NULL ORDER BY p.workload, p.kind, p.partition"
        ).fetchall()
        calibrations = db.execute(
            "SELECT recorded, name, workload, device, step_mean_s, path FROM calibrations"
            " ORDER BY id DESC LIMIT 5"
        ).fetchall()
        unlearned = db.execute(_NOT_LEARNED, (min(limit, 10),)).fetchall()
    return runs, pairs, calibrations, unlearned


_RUN_HEADERS = (
    "run",
    "workload",
    "partition",
    "nodes",
    "predicted P50 / P95",
    "jobs",
    "steps",
    "actual",
    "actual / predicted",
)


def _run_row(row: sqlite3.Row) -> tuple[object, ...]:
    reached, total = row["reached"] or 0, row["total_steps"] or 0
    actual = fmt_duration(row["elapsed"]) if row["elapsed"] else "-"
    if row["elapsed"] and reached < total:
        actual += " so far"
    ratio = "-"
    if row["timed"] and row["predicted"]:
        ratio = f"{row['timed'] / row['predicted']:.2f}"
    predicted = f"{fmt_duration(row['p50_s'])} / {fmt_duration(row['p95_s'])}"
    if row["correction"]:
        predicted += f" (x{row['correction']:.2f})"
    return (
        Path(row["run_dir"]).name,
        row["workload"],
        row["partition"],
        row["nodes"],
        predicted,
        row["jobs"],
        f"{reached:,}/{total:,}",
        actual,
        ratio,
    )


_BIAS_HEADERS = (
    "kind",
    "partition",
    "nodes",
    "jobs",
    f"newest {RECENT}",
    "all",
    "newest",
    "next plan",
)


@dataclass(frozen=True)
class _Bias:
    workload: str
    kind: str
    partition: str
    nodes: int
    model: list[float]  # each job's step bias against the model, oldest first
    correction: Correction | None  # what the next plan at ``nodes`` gets


def _biases(pairs: Sequence[sqlite3.Row], path: Path | None) -> list[_Bias]:
    """Every kind, partition and node count with learned jobs: one query per pair."""
    found = []
    for workload, kind, partition in pairs:
        for nodes, biases in step_biases_by_nodes(kind, partition, path).items():
            correction = correction_from(workload, partition, nodes, biases, kind)
            model = [b.bias for b in biases]
            found.append(_Bias(workload, kind, partition, nodes, model, correction))
    return found


def _bias_row(bias: _Bias) -> tuple[object, ...]:
    correction, model = bias.correction, bias.model
    factor = f"x{correction.factor:.2f}" if correction else f"none (< {MIN_OUTCOMES} jobs)"
    if correction and not correction.applied:
        factor = (
            f"none: the newest disagree (spread {correction.spread:.1%} > {MAX_SPREAD:.0%}; "
            f"x{correction.learned:.2f})"
        )
    elif correction:
        if correction.capped:
            factor += f" (capped; learned x{correction.learned:.2f})"
        if correction.spread:
            factor += f", spread {correction.spread:.1%}"
    return (
        describe(bias.kind),
        bias.partition,
        bias.nodes,
        len(model),
        f"{statistics.median(model[-RECENT:]):.2f}",
        f"{statistics.median(model):.2f}",
        f"{model[-1]:.2f}",
        factor,
    )


def _when(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment).astimezone().strftime("%Y-%m-%d %H:%M")


def correction_text(model: Plan, plan: Plan, width: int | None = None) -> str:
    """What the history's correction moved, said plainly (its source is in the plan's notes)."""
    moved = []
    if plan.step_correction != 1.0:
        moved.append(f"steps x{plan.step_correction:.2f} at {plan.nodes} node(s)")
    if plan.p95_widening != 1.0:
        moved.append(f"P95 x{plan.p95_widening:.2f}")
    what = ", ".join(moved) or "the run-to-run spread"
    text = (
        f"history correction ({what}): P50 {fmt_duration(model.wall.p50_s)} -> "
        f"{fmt_duration(plan.wall.p50_s)}, P95 {fmt_duration(model.wall.p95_s)} -> "
        f"{fmt_duration(plan.wall.p95_s)}, {len(model.segments)} -> {len(plan.segments)} "
        "job(s); start-up, saves and loads are as calibrated. --no-correction plans without it."
    )
    return wrap_text(text, width)
