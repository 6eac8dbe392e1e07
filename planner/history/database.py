"""What plan-job predicted and what the jobs then did: a local SQLite database.

Tables: calibrations (one per record `plan-job calibrate` writes), plans (one per run folder
`plan-job emit` writes: predicted P50/P95, workload, partition, nodes, fingerprint, the step
correction it carried, and its kind: what sets its step, planner.model.kind) and outcomes
(one per attempt of an ended job of a run, read from sacct by `resubmit` or `history
--update`: a requeued job's every run, with Slurm's restart count; state, elapsed, steps done,
the time the run's plan predicted for exactly those steps, the job's own steady step time
beside the step the model gave, how it ended and why (planner.runs.diagnosis), and whether
its steps are learned from: only an attempt that stopped cleanly's are; a failed, hung or
killed one is kept and shown, not learned from). Since schema 4, each attempt's submit,
eligible and start times (sacct Submit, Eligible, Start) beside the wait its plan predicted
(planner.model.queue_forecast: the first job's from submit, a later one's from eligible; its
predicted start is its eligible time plus that wait) and each plan's queue forecast and P95
widening. The correction new plans learn from the outcomes: planner.history.correction; the
coverage of their P50 and P95: planner.history.coverage.

Several plan-job processes may write at once (a chain's watchers, scripts): each writer
takes the database's write lock before it reads what it is about to add (BEGIN IMMEDIATE),
and unique keys (outcomes: run folder, job id, attempt; plans: run folder, fingerprint,
source) make a second insert of the same row an update. Older databases are migrated in
place on first open (schema 1, 2 and 3 to 4: added columns are NULL in old rows). Torch-free.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from planner.calibration.record import CalibrationRecord
from planner.errors import HistoryError
from planner.model.kind import plan_kind
from planner.model.plan import Plan
from planner.model.queue_forecast import QueueForecast, forecast_of
from planner.model.timemodel import job_saves
from planner.runs.job_log import JobLog
from planner.slurm.partition import PartitionLimits
from planner.spec.run_spec import RunSpec

if TYPE_CHECKING:  # only for a type: calibrate and emit need not import the run readers
    from planner.followup.state import RunState

ENV = "PLANJOB_HISTORY"
MIN_STEPS_TIMED = 10  # a job's own step time from fewer steps is mostly its warm-up
SCHEMA_VERSION = 4
_OUTCOMES = """
CREATE TABLE IF NOT EXISTS outcomes (
    id INTEGER PRIMARY KEY, recorded REAL NOT NULL, run_dir TEXT NOT NULL,
    job_id TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, state TEXT, state_source TEXT,
    inferred INTEGER, start_time REAL, end_time REAL, elapsed_s REAL, time_limit_s REAL,
    from_step INTEGER, steps INTEGER, predicted_s REAL, plan_correction REAL,
    step_s REAL, model_step_s REAL, exit TEXT, cause TEXT, why TEXT,
    learned INTEGER NOT NULL DEFAULT 1, submit_time REAL, eligible_time REAL,
    predicted_start REAL, predicted_wait_s REAL, predicted_wait_p95_s REAL,
    UNIQUE (run_dir, job_id, attempt)
);
"""
_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS calibrations (
    id INTEGER PRIMARY KEY, recorded REAL NOT NULL, path TEXT NOT NULL, name TEXT,
    workload TEXT NOT NULL, fingerprint TEXT NOT NULL, host TEXT, device TEXT,
    step_mean_s REAL, step_ci_half_s REAL, startup_s REAL, save_s REAL
);
CREATE TABLE IF NOT EXISTS plans (
    id INTEGER PRIMARY KEY, recorded REAL NOT NULL, run_dir TEXT NOT NULL, name TEXT,
    workload TEXT NOT NULL, partition TEXT NOT NULL, nodes INTEGER, gpus INTEGER,
    fingerprint TEXT, total_steps INTEGER, step_s REAL, p50_s REAL, p95_s REAL,
    model_p50_s REAL, model_p95_s REAL, correction REAL, source TEXT, kind TEXT,
    first_wait_s REAL, first_wait_p95_s REAL, wait_p50_s REAL, wait_p95_s REAL,
    finish_p50_s REAL, finish_p95_s REAL, p95_widening REAL
);
CREATE INDEX IF NOT EXISTS plans_run ON plans (run_dir);
CREATE UNIQUE INDEX IF NOT EXISTS plans_unique ON plans (run_dir, fingerprint, source);
"""
    + _OUTCOMES
)
# Columns added since schema 1, with their types: ALTER TABLE adds them to older databases.
# Schema 4: each attempt's submit and eligible times and the wait its plan predicted; each
# plan's queue forecast (planner.model.queue_forecast) and its P95 widening.
_QUEUE_COLUMNS = ("first_wait_s", "first_wait_p95_s", "wait_p50_s", "wait_p95_s")
_FINISH_COLUMNS = ("finish_p50_s", "finish_p95_s")
_ADDED_COLUMNS = {
    "outcomes": {
        "step_s": "REAL",
        "model_step_s": "REAL",
        "submit_time": "REAL",
        "eligible_time": "REAL",
        "predicted_start": "REAL",
        "predicted_wait_s": "REAL",
        "predicted_wait_p95_s": "REAL",
    },
    "plans": {
        "kind": "TEXT",
        **dict.fromkeys((*_QUEUE_COLUMNS, *_FINISH_COLUMNS, "p95_widening"), "REAL"),
    },
}
# Schema 3 keys outcomes by attempt: the table is rebuilt, its rows kept. Rows from before
# carry no attempt (0) and no way to tell a clean stop: only COMPLETED jobs stay learned from
# (a segment that stopped at its signal or stop time ends COMPLETED).
_OUTCOME_COLUMNS = (
    "recorded, run_dir, job_id, state, state_source, inferred, start_time, end_time, elapsed_s,"
    " time_limit_s, from_step, steps, predicted_s, plan_correction, step_s, model_step_s"
)
_MIGRATE_OUTCOMES = f"""
ALTER TABLE outcomes RENAME TO outcomes_before_3;
{_OUTCOMES}
INSERT INTO outcomes ({_OUTCOME_COLUMNS}, attempt, learned)
    SELECT {_OUTCOME_COLUMNS}, 0, COALESCE(state, '') = 'COMPLETED' FROM outcomes_before_3;
DROP TABLE outcomes_before_3;
"""
# A plans row written twice (concurrent writers before schema 3): the newest stays.
_DEDUPE_PLANS = """
DELETE FROM plans WHERE id NOT IN (
    SELECT MAX(id) FROM plans GROUP BY run_dir, fingerprint, source
);
"""


def history_path(explicit: Path | None = None) -> Path:
    """--history, else $PLANJOB_HISTORY, else ~/.local/share/plan-job/history.sqlite."""
    if explicit is not None:
        return explicit.expanduser()
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path("~/.local/share").expanduser())
    return Path(data) / "plan-job" / "history.sqlite"


@contextlib.contextmanager
def connect(path: Path | None = None, write: bool = False) -> Iterator[sqlite3.Connection]:
    """A connection with the schema in place; commits on success (one transaction).
    ``write``: take the write lock first (BEGIN IMMEDIATE), so that what the transaction
    reads stays true until it commits: two writers never both see a row missing."""
    where = history_path(path)
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(where, timeout=30)
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
        if version < SCHEMA_VERSION:
            _migrate(db)
        with db:
            if write:
                db.execute("BEGIN IMMEDIATE")
            yield db
    except sqlite3.Error as exc:
        raise HistoryError(f"history {where}: {exc}") from exc
    finally:
        db.close()


def _migrate(db: sqlite3.Connection) -> None:
    """Bring the schema to SCHEMA_VERSION under the write lock (another process may be
    migrating the same file: the version is read again once the lock is held)."""
    previous = db.isolation_level
    db.isolation_level = None  # statements as written: the transaction below is explicit
    try:
        db.execute("BEGIN IMMEDIATE")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version < SCHEMA_VERSION:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            if "outcomes" in tables or "plans" in tables:
                _add_columns(db, tables)
            if "outcomes" in tables and version < 3:
                for statement in _MIGRATE_OUTCOMES.split(";"):
                    if statement.strip():
                        db.execute(statement)
            if "plans" in tables and version < 3:
                db.execute(_DEDUPE_PLANS)
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    finally:
        db.isolation_level = previous


def _add_columns(db: sqlite3.Connection, tables: set[str]) -> None:
    for table, columns in _ADDED_COLUMNS.items():
        if table not in tables:
            continue
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns.items():
            if name not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


def workload_key(spec: RunSpec) -> str:
    """The workload a correction is learned for: a user function or command, or
    built-in:preset."""
    if spec.command is not None:
        return f"command:{spec.command.run}"
    return spec.workload.function or f"{spec.workload.name}:{spec.workload.preset}"


def partition_key(plan: Plan) -> str:
    return stored_partition_name(plan.spec, plan.partition)


def stored_partition_name(spec: RunSpec, partition: PartitionLimits | None) -> str:
    """The partition as the database keys it: its name, or "(default)" (not
    planner.model.node_choice.partition_name, which words it for a message)."""
    name = spec.cluster.partition or (partition.name if partition else None)
    return name or "(default)"


def record_calibration(
    record: CalibrationRecord, record_path: Path, path: Path | None = None
) -> None:
    m = record.measurement
    with connect(path, write=True) as db:
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
    model: Plan | None = None,
    path: Path | None = None,
    source: str = "emit",
    record: CalibrationRecord | None = None,
    queue: QueueForecast | None = None,
) -> None:
    """A run folder's plan; ``model`` is the uncorrected plan when a correction applied;
    ``record``: the calibration it was made from, which says the device and where it ran
    (the plan's kind, planner.model.kind: what its jobs' biases are learned for); ``queue``:
    what the plan predicted about the queue (None: nothing), kept beside its jobs' actual
    waits when they are recorded."""
    base = model or plan
    factor = plan.step_correction if plan.step_correction != 1.0 else None
    with connect(path, write=True) as db:
        kind = plan_kind(plan, record)
        _insert_plan(db, plan, base, run_dir, factor, source, kind, queue)


def record_outcomes(
    state: RunState, path: Path | None = None, record: CalibrationRecord | None = None
) -> int:
    """Every attempt of the run's ended jobs, as sacct (or the fallbacks) told, with how it
    ended (its diagnosis); returns how many. A state read without Slurm (RunState.unread: a
    preview took every job as ended) records none: jobs taken as ended without Slurm's word
    are not outcomes. ``record``: the run's calibration record, for a run folder whose plan
    is not in the history yet (plan.yaml's record is read when it is not given)."""
    if state.unread:
        return 0
    run_dir = str(state.run_dir.resolve())
    plan = state.plan
    count = 0
    with connect(path, write=True) as db:
        row = db.execute(
            "SELECT * FROM plans WHERE run_dir = ? ORDER BY id DESC LIMIT 1", (run_dir,)
        ).fetchone()
        if row is None:
            kind = plan_kind(plan, record or _plans_record(state))
            _insert_plan(db, plan, plan, state.run_dir, None, "plan.yaml", kind, forecast_of(plan))
        correction = row["correction"] if row is not None else None
        # A run folder emitted without a history: plan.yaml still says what it predicted.
        forecast = _forecast(row) if row is not None else forecast_of(plan)
        # The step the model gave before any correction: what a step bias is measured on.
        model_step = plan.step_s / (correction or 1.0)
        for index, attempt in enumerate(state.attempts):
            outcome, log, found = attempt.outcome, attempt.log, attempt.diagnosis
            from_step, done = attempt.from_step, attempt.steps
            step_s = job_step_s(log) if log is not None else None
            # The run's first job waited from its submit; every other attempt (a later
            # segment, a requeue) from when it became eligible again.
            wait_p50, wait_p95 = forecast.job_wait(index == 0 and attempt.restarts == 0)
            eligible = outcome.eligible_time
            predicted_start = None
            if eligible is not None and wait_p50 is not None:
                predicted_start = eligible + wait_p50
            db.execute(
                "INSERT INTO outcomes (recorded, run_dir, job_id, attempt, state, state_source,"
                " inferred, start_time, end_time, elapsed_s, time_limit_s, from_step, steps,"
                " predicted_s, plan_correction, step_s, model_step_s, exit, cause, why, learned,"
                " submit_time, eligible_time, predicted_start, predicted_wait_s,"
                " predicted_wait_p95_s)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " ?, ?, ?, ?, ?)"
                " ON CONFLICT (run_dir, job_id, attempt) DO UPDATE SET"
                " recorded = excluded.recorded, state = excluded.state,"
                " state_source = excluded.state_source, inferred = excluded.inferred,"
                " start_time = excluded.start_time, end_time = excluded.end_time,"
                " elapsed_s = excluded.elapsed_s, time_limit_s = excluded.time_limit_s,"
                " from_step = excluded.from_step, steps = excluded.steps,"
                " predicted_s = excluded.predicted_s, step_s = excluded.step_s,"
                " model_step_s = excluded.model_step_s, exit = excluded.exit,"
                " cause = excluded.cause, why = excluded.why, learned = excluded.learned,"
                " submit_time = excluded.submit_time, eligible_time = excluded.eligible_time,"
                " predicted_start = excluded.predicted_start,"
                " predicted_wait_s = excluded.predicted_wait_s,"
                " predicted_wait_p95_s = excluded.predicted_wait_p95_s",
                (
                    time.time(),
                    run_dir,
                    attempt.job_id,
                    attempt.restarts,
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
                    step_s,
                    model_step if step_s is not None else None,
                    found.exit,
                    found.cause,
                    found.why if found.failed or found.cause else None,
                    int(attempt.learnable),
                    outcome.submit_time,
                    eligible,
                    predicted_start,
                    wait_p50,
                    wait_p95,
                ),
            )
            count += 1
    return count


def _forecast(row: sqlite3.Row | None) -> QueueForecast:
    """The queue forecast a plans row keeps (all None for a plan that made none)."""
    if row is None:
        return QueueForecast()
    return QueueForecast(**{name: row[name] for name in (*_QUEUE_COLUMNS, *_FINISH_COLUMNS)})


def _plans_record(state: RunState) -> CalibrationRecord | None:
    """The calibration record plan.yaml names, where it can still be read."""
    from planner.calibration.record import load_record
    from planner.errors import PlanJobError
    from planner.runs.run_folder import load_emit_settings, segment_scripts

    try:
        where = Path(state.plan.calibration_path)
        if not where.is_absolute():
            where = (
                load_emit_settings(state.run_dir, segment_scripts(state.run_dir)).workdir / where
            )
        return load_record(where)
    except PlanJobError:
        return None


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


def job_step_s(job: JobLog) -> float | None:
    """A job's steady step time (its warm-up cut), from at least MIN_STEPS_TIMED steps."""
    if job.timed < MIN_STEPS_TIMED:
        return None
    return job.steady_mean(job.warmup_steps)


def _insert_plan(
    db: sqlite3.Connection,
    plan: Plan,
    model: Plan,
    run_dir: Path,
    correction: float | None,
    source: str,
    kind: str,
    queue: QueueForecast | None = None,
) -> None:
    """One plans row; the same run folder, plan and source again replaces it (a new id: it
    is the newest), so that concurrent writers leave one row."""
    queue = queue or QueueForecast()
    db.execute(
        "INSERT OR REPLACE INTO plans (recorded, run_dir, name, workload, partition, nodes, "
        "gpus, fingerprint, total_steps, step_s, p50_s, p95_s, model_p50_s, model_p95_s, "
        "correction, source, kind, first_wait_s, first_wait_p95_s, wait_p50_s, wait_p95_s, "
        "finish_p50_s, finish_p95_s, p95_widening) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            kind,
            queue.first_wait_s,
            queue.first_wait_p95_s,
            queue.wait_p50_s,
            queue.wait_p95_s,
            queue.finish_p50_s,
            queue.finish_p95_s,
            plan.p95_widening if plan.p95_widening != 1.0 else None,
        ),
    )
