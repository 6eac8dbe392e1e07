"""What plan-job predicted and what the jobs then did: a local SQLite database, and the
correction new plans learn from it.

Tables: calibrations (one per record `plan-job calibrate` writes), plans (one per run folder
`plan-job emit` writes: predicted P50/P95, workload, partition, nodes, fingerprint) and
outcomes (one per ended job of a run, read from sacct by `resubmit` or `history --update`:
state, elapsed, steps done, and the time the run's plan predicted for exactly those steps).

Correction. Each outcome's bias is its elapsed time over the model's prediction for the work
it did (start-up or resume, its steps, its saves); a plan that already carried a correction
is divided by it first, so the bias is always against the uncorrected model. A new plan of
the same workload on the same partition is scaled by the median bias of the newest RECENT
outcomes: recent beats global, as the machine, the data and the software drift. When the
newest job ran over its own prediction, the factor is at least the mean of the last two
(Tsafrir, Etsion and Feitelson, "Backfilling using system-generated predictions rather than
user runtime estimates", IEEE TPDS 18(6), 2007: the average of a user's last two jobs, and a
prediction that was exceeded raises the next). The same newest outcomes give the run-to-run
spread a plan's P95 uses when the spec's is smaller: a machine that drifts from run to run
widens the band its plans promise. Torch-free.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from planner.errors import BadInputError
from planner.plan import Plan
from planner.record import CalibrationRecord
from planner.spec import RunSpec
from planner.timemodel import job_saves

if TYPE_CHECKING:  # only for a type: calibrate and emit need not import the run readers
    from planner.run_state import RunState

ENV = "PLANJOB_HISTORY"
RECENT = 5
MIN_OUTCOMES = 2
MIN_SPREAD_OUTCOMES = 3  # a standard deviation of two jobs says little
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS calibrations (
    id INTEGER PRIMARY KEY, recorded REAL NOT NULL, path TEXT NOT NULL, name TEXT,
    workload TEXT NOT NULL, fingerprint TEXT NOT NULL, host TEXT, device TEXT,
    step_mean_s REAL, step_ci_half_s REAL, startup_s REAL, save_s REAL
);
CREATE TABLE IF NOT EXISTS plans (
    id INTEGER PRIMARY KEY, recorded REAL NOT NULL, run_dir TEXT NOT NULL, name TEXT,
    workload TEXT NOT NULL, partition TEXT NOT NULL, nodes INTEGER, gpus INTEGER,
    fingerprint TEXT, total_steps INTEGER, step_s REAL, p50_s REAL, p95_s REAL,
    model_p50_s REAL, model_p95_s REAL, correction REAL, source TEXT
);
CREATE INDEX IF NOT EXISTS plans_run ON plans (run_dir);
CREATE TABLE IF NOT EXISTS outcomes (
    id INTEGER PRIMARY KEY, recorded REAL NOT NULL, run_dir TEXT NOT NULL,
    job_id TEXT NOT NULL, state TEXT, state_source TEXT, inferred INTEGER,
    start_time REAL, end_time REAL, elapsed_s REAL, time_limit_s REAL,
    from_step INTEGER, steps INTEGER, predicted_s REAL, plan_correction REAL,
    UNIQUE (run_dir, job_id)
);
"""


class HistoryError(BadInputError):
    """The history database cannot be opened, created or written."""


@dataclass(frozen=True)
class Correction:
    workload: str
    partition: str
    factor: float  # multiply the model's times by this
    outcomes: int  # jobs it rests on
    recent_median: float
    overall_median: float
    latest: float  # the newest job's bias
    rule: str  # how the factor was chosen, in words
    # Sample standard deviation of the newest jobs' biases over the factor: how far one run
    # strays from the corrected pace (0.0 with fewer than MIN_SPREAD_OUTCOMES jobs). A plan
    # whose plan.run_to_run_spread is below it takes it for its P95.
    spread: float = 0.0


def history_path(explicit: Path | None = None) -> Path:
    """--history, else $PLANJOB_HISTORY, else ~/.local/share/plan-job/history.sqlite."""
    if explicit is not None:
        return explicit.expanduser()
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path("~/.local/share").expanduser())
    return Path(data) / "plan-job" / "history.sqlite"


@contextlib.contextmanager
def connect(path: Path | None = None) -> Iterator[sqlite3.Connection]:
    """A connection with the schema in place; commits on success (one transaction)."""
    where = history_path(path)
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(where, timeout=10)
    except (OSError, sqlite3.Error) as exc:
        raise HistoryError(f"history {where}: cannot open ({exc}); pass --history PATH") from exc
    try:
        db.row_factory = sqlite3.Row
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise HistoryError(
                f"history {where}: written by a newer plan-job (schema {version}); pass "
                f"--history PATH for another file"
            )
        with db:
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        with db:
            yield db
    except sqlite3.Error as exc:
        raise HistoryError(f"history {where}: {exc}") from exc
    finally:
        db.close()


def workload_key(spec: RunSpec) -> str:
    """The workload a correction is learned for: a user function or command, or
    built-in:preset."""
    if spec.command is not None:
        return f"command:{spec.command.run}"
    return spec.workload.function or f"{spec.workload.name}:{spec.workload.preset}"


def partition_key(plan: Plan) -> str:
    name = plan.spec.cluster.partition or (plan.partition.name if plan.partition else None)
    return name or "(default)"


def record_calibration(
    record: CalibrationRecord, record_path: Path, path: Path | None = None
) -> None:
    m = record.measurement
    with connect(path) as db:
        db.execute(
            "INSERT INTO calibrations (recorded, path, name, workload, fingerprint, host, "
            "device, step_mean_s, step_ci_half_s, startup_s, save_s) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                str(record_path.resolve()),
                record.spec.name,
                workload_key(record.spec),
                record.fingerprint,
                m.host,
                m.device_name,
                m.step_mean_s,
                m.step_ci_half_s,
                m.startup_s,
                m.checkpoint_save_s,
            ),
        )


def record_plan(
    plan: Plan,
    run_dir: Path,
    correction: Correction | None = None,
    model: Plan | None = None,
    path: Path | None = None,
    source: str = "emit",
) -> None:
    """A run folder's plan; ``model`` is the uncorrected plan when ``correction`` applied."""
    base = model or plan
    with connect(path) as db:
        _insert_plan(db, plan, base, run_dir, correction.factor if correction else None, source)


def record_outcomes(state: RunState, path: Path | None = None) -> int:
    """The ended jobs of a run, as sacct (or the fallbacks) told; returns how many."""
    run_dir = str(state.run_dir.resolve())
    plan = state.plan
    count = 0
    with connect(path) as db:
        row = db.execute(
            "SELECT correction FROM plans WHERE run_dir = ? ORDER BY id DESC LIMIT 1", (run_dir,)
        ).fetchone()
        if row is None:
            _insert_plan(db, plan, plan, state.run_dir, None, "plan.yaml")
        correction = row["correction"] if row is not None else None
        for job_id, outcome in state.accounting.outcomes.items():
            steps = state.job_steps.get(job_id)
            from_step, done = (steps.from_step, steps.steps) if steps else (0, 0)
            db.execute(
                "INSERT INTO outcomes (recorded, run_dir, job_id, state, state_source, inferred,"
                " start_time, end_time, elapsed_s, time_limit_s, from_step, steps, predicted_s,"
                " plan_correction) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (run_dir, job_id) DO UPDATE SET recorded = excluded.recorded,"
                " state = excluded.state, state_source = excluded.state_source,"
                " inferred = excluded.inferred, start_time = excluded.start_time,"
                " end_time = excluded.end_time, elapsed_s = excluded.elapsed_s,"
                " time_limit_s = excluded.time_limit_s, from_step = excluded.from_step,"
                " steps = excluded.steps, predicted_s = excluded.predicted_s",
                (
                    time.time(),
                    run_dir,
                    job_id,
                    outcome.state,
                    outcome.source,
                    int(outcome.inferred),
                    outcome.start_time,
                    outcome.end_time,
                    outcome.elapsed_s,
                    outcome.time_limit_s,
                    from_step,
                    done,
                    predicted_job_s(plan, from_step, from_step + done) if done else None,
                    correction,
                ),
            )
            count += 1
    return count


def predicted_job_s(plan: Plan, from_step: int, to_step: int) -> float:
    """What the plan predicts for one job going from ``from_step`` to ``to_step``: its
    start-up (and warm-up) or resume, the steps and the saves it makes (timemodel.job_saves:
    those due on the way, its stop save unless it stopped on one, the first job's probe)."""
    wall = plan.wall
    first = wall.startup_s + plan.compile_s + wall.warmup_s
    overhead = first if from_step == 0 else plan.resume_s
    interval = plan.checkpoint_interval_steps
    saves = job_saves(from_step, to_step, interval, first_job=from_step == 0)
    steps = to_step - from_step
    evals = 0.0
    every = plan.spec.plan.eval_interval_steps
    if every:
        evals = (to_step // every - from_step // every) * plan.eval_s
    return overhead + steps * plan.step_s + saves * plan.checkpoint.save_s + evals


def biases(workload: str, partition: str, path: Path | None = None) -> list[tuple[float, float]]:
    """(bias against the model, ratio against the plan as emitted) per ended job, oldest
    first, of jobs that ran steps."""
    if not history_path(path).exists():
        return []  # a plan only reads: it creates no database
    with connect(path) as db:
        rows = db.execute(
            "SELECT o.elapsed_s, o.predicted_s, o.plan_correction FROM outcomes o"
            " JOIN plans p ON p.id = (SELECT MAX(id) FROM plans WHERE run_dir = o.run_dir)"
            " WHERE p.workload = ? AND p.partition = ? AND o.steps > 0"
            " AND o.elapsed_s > 0 AND o.predicted_s > 0"
            " ORDER BY COALESCE(o.end_time, o.recorded), o.id",
            (workload, partition),
        ).fetchall()
    out = []
    for row in rows:
        ratio = row["elapsed_s"] / row["predicted_s"]
        out.append((ratio * (row["plan_correction"] or 1.0), ratio))
    return out


def correction_for(workload: str, partition: str, path: Path | None = None) -> Correction | None:
    """The factor a new plan of ``workload`` on ``partition`` is scaled by; None with fewer
    than MIN_OUTCOMES jobs to learn from."""
    pairs = biases(workload, partition, path)
    if len(pairs) < MIN_OUTCOMES:
        return None
    model = [bias for bias, _ in pairs]
    recent = model[-RECENT:]
    factor = statistics.median(recent)
    rule = f"median actual/predicted of the newest {len(recent)} jobs"
    if pairs[-1][1] > 1:
        last_two = statistics.fmean(model[-2:])
        if last_two > factor:
            factor = last_two
            rule = (
                "the newest job ran over its prediction: the mean actual/predicted of the last "
                "two jobs (Tsafrir, Etsion and Feitelson 2007), above the median of the newest "
                f"{len(recent)}"
            )
    spread = statistics.stdev(recent) / factor if len(recent) >= MIN_SPREAD_OUTCOMES else 0.0
    return Correction(
        spread=spread,
        workload=workload,
        partition=partition,
        factor=factor,
        outcomes=len(model),
        recent_median=statistics.median(recent),
        overall_median=statistics.median(model),
        latest=model[-1],
        rule=rule,
    )


def spec_with_spread(spec: RunSpec, correction: Correction) -> RunSpec:
    """The spec with the history's run-to-run spread when it is wider than the spec's."""
    if correction.spread <= spec.plan.run_to_run_spread:
        return spec
    plan = dataclasses.replace(spec.plan, run_to_run_spread=correction.spread)
    return dataclasses.replace(spec, plan=plan)


def corrected_record(record: CalibrationRecord, factor: float) -> CalibrationRecord:
    """The calibration with every time a plan is made of scaled, so that make_plan sizes
    steps, saves, segments and the reserve at the corrected pace. The bias is measured on
    whole jobs, so it cannot tell slow steps from slow saves: all of them move together.
    (The modelled all-reduce of multi-GPU steps is not in the record and stays as it is.)"""
    m = record.measurement
    scaled = {
        name: getattr(m, name) * factor
        for name in (
            "step_mean_s",
            "step_median_s",
            "step_std_s",
            "step_ci_half_s",
            "step_p90_s",
            "startup_s",
            "import_s",
            "build_s",
            "warmup_extra_s",
            "checkpoint_save_s",
            "checkpoint_load_s",
            "eval_s",
            "compile_s",
            "eager_step_s",
        )
        if hasattr(m, name)
    }
    return dataclasses.replace(record, measurement=dataclasses.replace(m, **scaled))


def _insert_plan(
    db: sqlite3.Connection,
    plan: Plan,
    model: Plan,
    run_dir: Path,
    correction: float | None,
    source: str,
) -> None:
    db.execute(
        "INSERT INTO plans (recorded, run_dir, name, workload, partition, nodes, gpus, "
        "fingerprint, total_steps, step_s, p50_s, p95_s, model_p50_s, model_p95_s, correction, "
        "source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            time.time(),
            str(run_dir.resolve()),
            plan.spec.name,
            workload_key(plan.spec),
            partition_key(plan),
            plan.nodes,
            plan.gpus,
            plan.fingerprint,
            plan.total_steps,
            plan.step_s,
            plan.wall.p50_s,
            plan.wall.p95_s,
            model.wall.p50_s,
            model.wall.p95_s,
            correction,
            source,
        ),
    )
