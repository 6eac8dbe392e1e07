"""The history of issue 20: one row per attempt (a requeued job's every run, with Slurm's
restart count), failed and hung attempts kept but not learned from, corrections only from
jobs of the same kind and only where they agree, the line a correction rests on, schema 2
databases migrated, and concurrent writers (real processes) that cannot duplicate a row."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from planner.calibration.record import save_record
from planner.followup.state import inspect_run
from planner.history import correction as history_correction
from planner.history import database as history
from planner.history.report import history_json, history_text
from planner.model.correction import MAX_SPREAD
from planner.model.kind import kind_key
from tests.builders import (
    MODEL_STEP_S,
    SPEC,
    add_outcomes,
    record_for,
    recorded_run,
    spec_with,
    write_spec,
)
from tests.in_process import invoke
from tests.paths import REPO
from tests.processes import venv_only_env
from tests.progress_logs import STEP_S, T0, Log
from tests.run_folders import FakeSlurm, chain_folder, sacct_line

# The issue's 13 drill jobs: a paced jit:tiny at x3.22 its model's step, spread 47.6%.
DRILL_BIASES = [1.6, 2.4, 5.0, 3.3, 1.9, 3.22, 4.4, 1.7, 3.9, 5.3, 2.0, 3.22, 4.8]


def requeued_folder(tmp_path: Path) -> Path:
    """Job 11 ran, its node failed at step 420 (no stop line), Slurm requeued it, and the
    second run resumed from 400 and stopped cleanly at its time limit at step 900."""
    folder = chain_folder(tmp_path)
    log = Log(folder / "progress.jsonl", total=3907)
    log.job(0, [STEP_S] * 420, job_id="11", save_every=100, save_s=60.0)
    log.wait(60).job(400, [STEP_S] * 500, job_id="11", load_s=5.0, save_every=100, save_s=60.0)
    log.events.append({"time": log.t, "event": "stop", "step": 900, "reason": "time_limit"})
    log.write()
    return folder


def requeued_slurm() -> FakeSlurm:
    """sacct -D: job 11's two attempts, each with its batch step (as the test cluster lists
    them), the other segments cancelled before they ran."""
    lines = [
        sacct_line("11", "NODE_FAIL", T0 - 20, 500),
        "11.batch|CANCELLED|0:9|||500||1",
        sacct_line("11", "COMPLETED", T0 + 560, 1100),
        "11.batch|COMPLETED|0:0|||1100||1",
        *(sacct_line(str(i), "CANCELLED by 0", None, 0) for i in range(12, 16)),
    ]
    return FakeSlurm(sacct="\n".join(lines) + "\n")


def test_a_requeued_job_is_one_row_per_attempt_and_only_the_clean_one_is_learned(
    tmp_path: Path,
) -> None:
    folder = requeued_folder(tmp_path)
    db = tmp_path / "h.sqlite"
    state = inspect_run(str(folder), requeued_slurm())
    spec = spec_with(plan__max_nodes=1, checkpoint={"interval_steps": 100})
    assert history.record_outcomes(state, db, record_for(spec)) == 6
    assert history.record_outcomes(state, db, record_for(spec)) == 6  # again: no new rows
    with history.connect(db) as conn:
        rows = conn.execute(
            "SELECT job_id, attempt, state, exit, cause, why, from_step, steps, learned, step_s"
            " FROM outcomes WHERE job_id = '11' ORDER BY attempt"
        ).fetchall()
    first, second = (dict(row) for row in rows)
    assert (first["attempt"], first["state"], first["exit"], first["learned"]) == (
        0,
        "NODE_FAIL",
        None,  # Slurm's own SIGKILL of a failed node's job says nothing the state does not
        0,
    )
    assert (first["from_step"], first["steps"], first["cause"]) == (0, 420, "NODE_FAIL")
    assert (second["attempt"], second["state"], second["learned"]) == (1, "COMPLETED", 1)
    assert (second["from_step"], second["steps"], second["why"]) == (400, 500, None)
    assert second["step_s"] == pytest.approx(STEP_S)
    kind = kind_key(spec, record_for(spec))
    biases = history_correction.step_biases(kind, "gpu", 1, db)
    assert [(b.job_id, b.bias) for b in biases] == [("11", pytest.approx(1.0))]
    text = history_text(db, width=200)
    assert "11 (restart 0)" not in text  # restart 0 is the first run: not marked
    assert "its node failed (NODE_FAIL)" in text
    out = json.loads(history_json(db))
    assert [row["attempt"] for row in out["not_learned"]] == [0]


def test_hung_and_failed_attempts_are_kept_not_learned(tmp_path: Path) -> None:
    folder = chain_folder(tmp_path)
    log = Log(folder / "progress.jsonl", total=3907)
    log.job(0, [STEP_S * 3] * 300, job_id="11")  # slow and then hung: not the run's pace
    log.events.append(
        {
            "time": log.t,
            "event": "hang",
            "step": 300,
            "phase": "step",
            "waited_s": 300.0,
            "timeout_s": 300.0,
            "rank": 1,
            "job_id": "11",
        }
    )
    log.write()
    lines = [sacct_line("11", "FAILED", T0 - 20, 1300, "124:0")]
    lines += [sacct_line(str(i), "CANCELLED by 0", None, 0) for i in range(12, 16)]
    db = tmp_path / "h.sqlite"
    spec = spec_with(plan__max_nodes=1, checkpoint={"interval_steps": 100})
    state = inspect_run(str(folder), FakeSlurm(sacct="\n".join(lines) + "\n"))
    history.record_outcomes(state, db, record_for(spec))
    with history.connect(db) as conn:
        row = conn.execute("SELECT * FROM outcomes WHERE job_id = '11'").fetchone()
    assert (row["cause"], row["learned"]) == ("hang", 0)
    assert row["why"].startswith("hung in step 301 for 5 min 00 s on rank 1")
    assert row["step_s"] == pytest.approx(3 * STEP_S)  # kept, shown
    assert history_correction.step_biases(kind_key(spec, record_for(spec)), "gpu", 1, db) == []


def test_the_issues_drill_jobs_do_not_double_a_local_plan(tmp_path: Path) -> None:
    """13 jobs of a paced jit:tiny calibrated and run on the test cluster's partition gpu
    (x3.22 its model's step, spread 47.6%) in the history; a fresh plan of jit:tiny with a
    local calibration, same partition name. Keyed by workload, partition and node count, the
    drills doubled it (the cap); a local plan is another kind, and is left as calibrated."""
    db = tmp_path / "h.sqlite"
    drills = spec_with(plan__max_nodes=8, calibration__executor="slurm")
    run = recorded_run(db, tmp_path, "drills", spec=drills)
    add_outcomes(db, run, DRILL_BIASES)
    spec = write_spec(tmp_path, {**SPEC, "plan": {**SPEC["plan"], "max_nodes": 1}})
    save_record(record_for(spec_with()), tmp_path / "cal.yaml")  # executor local
    env = venv_only_env(db)
    args = ["plan", str(spec), "--calibration", "cal.yaml", "--json"]
    planned = json.loads(invoke(args, cwd=tmp_path, env=env).stdout)
    plain = json.loads(invoke([*args, "--no-correction"], cwd=tmp_path, env=env).stdout)
    assert planned["correction"] is None
    assert planned["wall_p50_s"] == pytest.approx(plain["wall_p50_s"])
    assert not any(note.startswith("history") for note in planned["notes"])
    # The drills' own kind: their biases disagree (spread far above MAX_SPREAD), so a plan of
    # that kind gets no factor either, and says why and what they rest on.
    corrections = history_correction.corrections_for(drills, None, db, record=record_for(drills))
    found = corrections[1]
    assert found.spread > MAX_SPREAD and not found.applied
    from tests.builders import plan_for

    plan = plan_for(
        spec_with(plan__max_nodes=1, calibration__executor="slurm"), corrections=corrections
    )
    assert plan.step_correction == 1.0
    (note,) = [n for n in plan.notes if n.startswith("history")]
    assert "history: not applied: the newest 5 job(s) of this kind at 1 node(s) disagree" in note
    assert "the newest 5 of 13 job(s) of this kind" in note and "run(s) drills" in note


@pytest.mark.parametrize(
    "other",
    [
        {"calibration__executor": "slurm"},  # calibrated (and so run) elsewhere
        {"batch__micro_batch": 16},
        {"precision": "fp32"},
        {"workload__overrides": {"depth": 2}},
    ],
)
def test_a_correction_comes_only_from_jobs_of_the_same_kind(
    tmp_path: Path, other: dict[str, object]
) -> None:
    """Agreeing jobs (x1.5 each) of another kind: no correction; of the same kind: x1.5."""
    db = tmp_path / "h.sqlite"
    theirs = spec_with(plan__max_nodes=8, **other)
    add_outcomes(db, recorded_run(db, tmp_path, "theirs", spec=theirs), [1.5, 1.5, 1.5])
    ours = spec_with(plan__max_nodes=1)
    assert history_correction.corrections_for(ours, None, db, record=record_for(ours)) == {}
    same = history_correction.corrections_for(theirs, None, db, record=record_for(theirs))
    assert same[1].factor == pytest.approx(1.5) and same[1].applied


def test_an_applied_correction_says_what_it_rests_on(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    add_outcomes(db, recorded_run(db, tmp_path, "first"), [1.5])
    add_outcomes(db, recorded_run(db, tmp_path, "second"), [1.5])
    spec = spec_with(plan__max_nodes=1)
    corrections = history_correction.corrections_for(spec, None, db, record=record_for(spec))
    from tests.builders import plan_for

    plan = plan_for(spec, corrections=corrections)
    (note,) = [n for n in plan.notes if n.startswith("history")]
    day = time.strftime("%Y-%m-%d", time.localtime(1e9))  # add_outcomes' end times
    assert (
        f"it rests on the newest 2 of 2 job(s) of this kind at 1 node(s) on partition gpu, "
        f"ended {day}, run(s) first, second; kind: jit:tiny, micro-batch 8 of 256, bf16"
    ) in note


V2_SCHEMA = """
CREATE TABLE calibrations (
    id INTEGER PRIMARY KEY, recorded REAL NOT NULL, path TEXT NOT NULL, name TEXT,
    workload TEXT NOT NULL, fingerprint TEXT NOT NULL, host TEXT, device TEXT,
    step_mean_s REAL, step_ci_half_s REAL, startup_s REAL, save_s REAL
);
CREATE TABLE plans (
    id INTEGER PRIMARY KEY, recorded REAL NOT NULL, run_dir TEXT NOT NULL, name TEXT,
    workload TEXT NOT NULL, partition TEXT NOT NULL, nodes INTEGER, gpus INTEGER,
    fingerprint TEXT, total_steps INTEGER, step_s REAL, p50_s REAL, p95_s REAL,
    model_p50_s REAL, model_p95_s REAL, correction REAL, source TEXT
);
CREATE INDEX plans_run ON plans (run_dir);
CREATE TABLE outcomes (
    id INTEGER PRIMARY KEY, recorded REAL NOT NULL, run_dir TEXT NOT NULL,
    job_id TEXT NOT NULL, state TEXT, state_source TEXT, inferred INTEGER,
    start_time REAL, end_time REAL, elapsed_s REAL, time_limit_s REAL,
    from_step INTEGER, steps INTEGER, predicted_s REAL, plan_correction REAL,
    step_s REAL, model_step_s REAL,
    UNIQUE (run_dir, job_id)
);
PRAGMA user_version = 2;
"""


def schema_2_database(path: Path) -> None:
    """A history as plan-job wrote it before attempts (main at a6fc4cf): a plans row
    duplicated by two concurrent writers, a COMPLETED and a TIMEOUT job."""
    with sqlite3.connect(path) as db:
        db.executescript(V2_SCHEMA)
        plan = ("/runs/a", "a", "jit:tiny", "gpu", 1, 4, "f00", 3907, 1.06, 5000.0, 5200.0)
        for recorded in (1.0, 1.5):
            db.execute(
                "INSERT INTO plans (recorded, run_dir, name, workload, partition, nodes, gpus,"
                " fingerprint, total_steps, step_s, p50_s, p95_s, source)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'plan.yaml')",
                (recorded, *plan),
            )
        for job_id, state in (("11", "COMPLETED"), ("12", "TIMEOUT")):
            db.execute(
                "INSERT INTO outcomes (recorded, run_dir, job_id, state, steps, step_s,"
                " model_step_s) VALUES (2.0, '/runs/a', ?, ?, 100, 1.2, 1.06)",
                (job_id, state),
            )


def test_a_schema_2_database_is_migrated_in_place(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    schema_2_database(db)
    with history.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == history.SCHEMA_VERSION
        outcomes = [
            tuple(row)
            for row in conn.execute(
                "SELECT job_id, attempt, state, steps, step_s, learned FROM outcomes"
                " ORDER BY job_id"
            )
        ]
        plans = conn.execute("SELECT recorded, kind FROM plans").fetchall()
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(plans)")}
    # Every row kept; only a COMPLETED job (a clean stop) stays learned from.
    assert outcomes == [("11", 0, "COMPLETED", 100, 1.2, 1), ("12", 0, "TIMEOUT", 100, 1.2, 0)]
    assert [tuple(p) for p in plans] == [(1.5, None)]  # the duplicate gone, the newest kept
    assert "plans_unique" in indexes
    # Old plans carry no kind: shown in history, never a correction for a plan of a kind.
    assert "no runs recorded yet" not in history_text(db, width=200)


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from planner.followup.state import inspect_run
    from planner.history import database as history
    from tests.test_history_attempts import requeued_slurm
    from tests.builders import record_for, spec_with

    folder, db, ready = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    state = inspect_run(str(folder), requeued_slurm())
    record = record_for(spec_with(plan__max_nodes=1, checkpoint={{"interval_steps": 100}}))
    ready.touch()
    history.record_outcomes(state, db, record)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("old", [False, True], ids=["new", "schema-2"])
def test_concurrent_writers_leave_one_row_each(tmp_path: Path, old: bool) -> None:
    """Eight processes record the same run's outcomes at once, into an empty database (each
    finds the run's plan missing and adds it: the race that duplicated a plans row) or a
    schema 2 one (each also migrates it): one plans row for the run, one outcomes row per
    attempt. The test holds the database's write lock until every writer is waiting on it, so
    that all of them go at the same moment."""
    folder = requeued_folder(tmp_path)
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(repo=str(REPO)))
    db = tmp_path / "h.sqlite"
    if old:
        schema_2_database(db)
    else:
        with history.connect(db):
            pass  # the schema in place: the writers race on the rows alone
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    argv = [sys.executable, str(script), str(folder), str(db)]
    writers = [subprocess.Popen([*argv, str(tmp_path / f"ready{i}")]) for i in range(8)]
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("ready*"))) < 8:  # every writer past its imports
            assert time.monotonic() < deadline and all(w.poll() is None for w in writers)
            time.sleep(0.01)
        time.sleep(1.0)  # each reads, or waits for the lock, within milliseconds of ready
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert [w.wait(timeout=120) for w in writers] == [0] * 8
    with history.connect(db) as conn:
        run_dir = str(folder.resolve())
        plans = conn.execute("SELECT COUNT(*) FROM plans WHERE run_dir = ?", (run_dir,))
        assert plans.fetchone()[0] == 1
        rows = conn.execute(
            "SELECT job_id, attempt, COUNT(*) FROM outcomes WHERE run_dir = ?"
            " GROUP BY job_id, attempt",
            (run_dir,),
        ).fetchall()
    assert sorted((r[0], r[1], r[2]) for r in rows) == [
        ("11", 0, 1),
        ("11", 1, 1),
        *((str(i), 0, 1) for i in range(12, 16)),
    ]


def test_emit_records_the_plans_kind(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, SPEC)
    save_record(record_for(spec_with()), tmp_path / "cal.yaml")
    db = tmp_path / "h.sqlite"
    env = venv_only_env(db)
    proc = invoke(["emit", str(spec), "--calibration", "cal.yaml", "-o", "run"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    with history.connect(db) as conn:
        (kind,) = conn.execute("SELECT kind FROM plans").fetchone()
    assert json.loads(kind) == json.loads(kind_key(spec_with(), record_for(spec_with())))
    assert json.loads(kind)["executor"].startswith("local:")
    assert yaml.safe_load((tmp_path / "run" / "plan.yaml").read_text())["spec"]["name"]
    assert MODEL_STEP_S  # the reference model step the biases are measured against
