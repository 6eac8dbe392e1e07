"""Issue 23 item 5 and test (e): each job's submit, eligible and start times beside the wait
its plan predicted, the coverage of the P50 and P95 (run time and queue wait apart), the P95
widening a P95 that covered too few jobs gets, and schema 3 databases migrated. Hand-made
histories and recorded sacct lines; no cluster needed (tests/test_history_slurm.py checks the
times against the real sacct)."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest
import yaml

from planner.calibration.record import save_record
from planner.followup.state import inspect_run
from planner.history import coverage as history_coverage
from planner.history import database as history
from planner.history.corrected_plan import corrected_plan
from planner.history.report import history_json, history_text
from planner.model.coverage import (
    Check,
    Widening,
    coverage,
    nearest_rank,
    widen,
    widening_from,
)
from planner.model.kind import kind_key
from planner.model.queue_forecast import QueueForecast
from planner.slurm.accounting import outcome_from_scontrol, parse_sacct_attempts
from tests.builders import SPEC, partition, plan_for, record_for, recorded_run, spec_with
from tests.cli_helpers import run_cli, write_spec
from tests.processes import venv_only_env
from tests.progress_logs import STEP_S, T0, Log, slurm_time
from tests.run_folders import FakeSlurm, chain_folder

# -- the arithmetic ---------------------------------------------------------------------------


def test_the_95_percent_quantile_is_the_least_ratio_covering_95_percent() -> None:
    tenths = [i / 10 for i in range(20, 0, -1)]  # 2.0, 1.9, ..., 0.1: order does not matter
    # 0.95 x 20 = 19: the 19th smallest (1.9); 19 of the 20 ratios are at or below it.
    assert nearest_rank(tenths, 0.95) == (pytest.approx(1.9), 19)
    # 0.95 x 12 = 11.4, rounded up: the 12th, the largest.
    assert nearest_rank([1.0] * 11 + [1.5], 0.95) == (1.5, 12)
    assert nearest_rank([3.0, 1.0, 2.0], 0.5) == (2.0, 2)  # 1.5 rounded up
    with pytest.raises(ValueError):
        nearest_rank([], 0.95)


def test_coverage_counts_the_jobs_within_their_p50_and_their_p95() -> None:
    checks = [
        Check(90.0, 100.0, 150.0),  # within both
        Check(100.0, 100.0, 150.0),  # at the P50: within both
        Check(120.0, 100.0, 150.0),  # within the P95 only
        Check(200.0, 100.0, 150.0),  # within neither
        Check(30.0, 60.0, None),  # a P50 and no P95: counted for the P50 only
    ]
    found = coverage(checks)
    assert (found.jobs_p50, found.within_p50, found.jobs_p95, found.within_p95) == (5, 3, 4, 3)
    assert (found.p50_share, found.p95_share) == (pytest.approx(0.6), pytest.approx(0.75))
    assert coverage([]).p95_share is None


def test_the_p95_widens_from_10_jobs_when_it_covered_under_90_percent() -> None:
    assert widening_from([1.3] * 9) is None  # 9 jobs: too few to say
    assert widening_from([0.9] * 9 + [1.3]) is None  # 9 of 10 covered: 90%, not under
    widening = widening_from([0.9] * 8 + [1.2, 1.4], "gpu")  # 8 of 10: 80%
    assert widening is not None
    # 0.95 x 10 = 9.5, rounded up: the 10th smallest of the ten ratios, 1.4.
    assert (widening.factor, widening.jobs, widening.covered, widening.rank) == (1.4, 10, 8, 10)
    line = widening.line(1000.0, 1400.0)
    assert "P95 widened x1.40" in line and "covered 8 of the newest 10 job(s)" in line
    assert "on partition gpu (80%, under 90%)" in line and "the 10th smallest of 10" in line
    # Only the newest 20 jobs count: five old misses before twenty covered jobs widen nothing.
    assert widening_from([2.0] * 5 + [0.9] * 20) is None


# -- test (e): a history of 12 jobs that ran 1.3x their P95 ------------------------------------

RATIO = 1.3
JOBS = 12
PREDICTED_S = 1000.0  # each job's P50: what its plan predicted for the steps it ran


def add_jobs_over_p95(db: Path, run_dir: str, ratio: float, jobs: int) -> float:
    """``jobs`` learned jobs of ``run_dir`` whose elapsed time is ``ratio`` x their P95
    (P50 PREDICTED_S x the plan's P95 / P50); no step times, so no step correction applies.
    Returns that per-job P95."""
    with history.connect(db, write=True) as conn:
        plan = conn.execute("SELECT p50_s, p95_s FROM plans WHERE run_dir = ?", (run_dir,))
        p50_s, p95_s = plan.fetchone()
        job_p95 = PREDICTED_S * p95_s / p50_s
        for index in range(jobs):
            conn.execute(
                "INSERT INTO outcomes (recorded, run_dir, job_id, state, end_time, elapsed_s,"
                " steps, predicted_s) VALUES (0, ?, ?, 'COMPLETED', ?, ?, 100, ?)",
                (run_dir, str(100 + index), 1e9 + index, ratio * job_p95, PREDICTED_S),
            )
    return float(job_p95)


@pytest.fixture
def planned(tmp_path: Path) -> tuple[Path, Path]:
    spec = write_spec(tmp_path, {**SPEC, "plan": {**SPEC["plan"], "max_nodes": 1}})
    save_record(record_for(spec_with()), tmp_path / "cal.yaml")
    return spec, tmp_path / "cal.yaml"


def test_e_twelve_jobs_at_1_3x_their_p95_widen_the_next_p95_by_1_3(
    planned: tuple[Path, Path], tmp_path: Path
) -> None:
    spec_path, cal = planned
    db = tmp_path / "h.sqlite"
    spec = spec_with(plan__max_nodes=1)
    run = recorded_run(db, tmp_path, "old", spec=spec)
    job_p95 = add_jobs_over_p95(db, run, RATIO, JOBS)
    # Every job ran 1.3 x its P95: 0 of 12 covered (0% < 90%, and 12 >= 10 jobs), each
    # actual / P95 is 1.3, and the 95% quantile of twelve 1.3s (the 12th smallest) is 1.3.
    kind = kind_key(spec, record_for(spec))
    jobs = history_coverage.run_times(kind, "gpu", db)
    assert [j.check.actual_s / j.check.p95_s for j in jobs] == [pytest.approx(RATIO)] * JOBS
    assert jobs[0].check.p95_s == pytest.approx(job_p95)

    made = corrected_plan(spec, record_for(spec), None, str(cal), history=db)
    model_p95 = plan_for(spec).wall.p95_s  # the same spec and calibration, no history
    assert made.model.wall.p95_s == pytest.approx(model_p95)
    assert made.plan.wall.p95_s == pytest.approx(RATIO * model_p95)
    assert made.plan.wall.p50_s == pytest.approx(made.model.wall.p50_s)  # the P50 stays
    assert made.plan.p95_widening == pytest.approx(RATIO)
    chosen = next(o for o in made.plan.options if o.chosen)
    assert chosen.wall_p95_s == pytest.approx(RATIO * model_p95)
    # The one segment's --time grows by the P95's 0.3 x model_p95, in whole minutes up.
    (before,), (after,) = made.model.segments, made.plan.segments
    grown = math.ceil((RATIO - 1) * model_p95 / 60)
    assert after.time_limit_minutes == before.time_limit_minutes + grown
    assert after.time_min_minutes == before.time_min_minutes  # the P50 stays

    # The plan says so in one line; emit records the widening; history shows the coverage.
    env = venv_only_env(db)
    proc = run_cli(["plan", str(spec_path), "--calibration", str(cal)], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    flat = " ".join(proc.stdout.split())
    assert "P95 widened x1.30" in flat, proc.stdout
    assert "it covered 0 of the newest 12 job(s) of this kind on partition gpu" in flat
    assert "the 95% quantile of their actual / P95 (the 12th smallest of 12)" in flat
    proc = run_cli(
        ["emit", str(spec_path), "--calibration", str(cal), "-o", "run"], cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    wall = yaml.safe_load((tmp_path / "run" / "plan.yaml").read_text())["wall"]
    assert wall["p95_s"] == pytest.approx(RATIO * model_p95)
    script = (tmp_path / "run" / "segment-01.sbatch").read_text()
    minutes = after.time_limit_minutes
    assert f"--time={minutes // 60:02d}:{minutes % 60:02d}:00" in script
    with history.connect(db) as conn:
        row = conn.execute(
            "SELECT p95_s, model_p95_s, p95_widening FROM plans WHERE run_dir = ?",
            (str((tmp_path / "run").resolve()),),
        ).fetchone()
    assert row["p95_widening"] == pytest.approx(RATIO)
    assert row["p95_s"] == pytest.approx(RATIO * row["model_p95_s"])
    text = " ".join(history_text(db, width=250).split())
    assert "0% (0/12)" in text and "x1.30 (covered 0/12)" in text
    assert "no predictions yet" in text  # no job has a predicted queue wait
    out = json.loads(history_json(db))["coverage"]
    assert [c["next_p95_widening"] for c in out] == [pytest.approx(RATIO)]
    assert out[0]["run_time"]["within_p95"] == 0 and out[0]["run_time"]["jobs_p95"] == JOBS


def test_a_widened_plans_jobs_are_measured_against_its_p95_before_the_widening(
    tmp_path: Path,
) -> None:
    """Jobs of a plan widened x1.3 that again ran 1.3x its model P95 (1.0x the widened one)
    keep the widening at x1.3: the factor is not applied on top of itself (x1.69)."""
    db = tmp_path / "h.sqlite"
    spec = spec_with(plan__max_nodes=1)
    add_jobs_over_p95(db, recorded_run(db, tmp_path, "old", spec=spec), RATIO, JOBS)
    widened = corrected_plan(spec, record_for(spec), None, "cal.yaml", history=db).plan
    folder = tmp_path / "widened"
    folder.mkdir()
    history.record_plan(widened, folder, path=db, record=record_for(spec))
    run = str(folder.resolve())
    add_jobs_over_p95(db, run, 1.0, JOBS)  # 1.0 x the widened P95: covered, barely
    again = corrected_plan(spec, record_for(spec), None, "cal.yaml", history=db).plan
    assert again.p95_widening == pytest.approx(RATIO)


def test_a_widened_chains_last_segment_grows_up_to_the_partitions_max_time() -> None:
    chain = plan_for(spec_with(plan__max_nodes=1), partition(1800))  # 30-minute segments
    assert len(chain.segments) > 1 and chain.segments[-1].time_limit_minutes < 30
    widened = widen(chain, Widening(3.0, 12, 0, 12, "gpu"))  # x3: far more than 30 minutes
    assert widened.segments[:-1] == chain.segments[:-1]
    assert widened.segments[-1].time_limit_minutes == 30  # MaxTime, not beyond
    assert widened.wall.p95_s == pytest.approx(3.0 * chain.wall.p95_s)


# -- submit, eligible and start beside the predicted wait ---------------------------------------


def sacct_attempt(
    job_id: str, state: str, submit: float, eligible: float, start: float, elapsed: int
) -> str:
    """A line of `sacct -D -n -P -o SACCT_FIELDS` (Submit and Eligible last)."""
    return (
        f"{job_id}|{state}|0:0|{slurm_time(start)}|{slurm_time(start + elapsed)}|{elapsed}|"
        f"00:30:00|1|{slurm_time(submit)}|{slurm_time(eligible)}"
    )


def test_sacct_and_scontrol_give_submit_and_eligible_times() -> None:
    line = sacct_attempt("11", "COMPLETED", T0 - 300, T0 - 200, T0 - 20, 600)
    (outcome,) = parse_sacct_attempts(line + "\n")["11"]
    assert (outcome.submit_time, outcome.eligible_time, outcome.start_time) == (
        T0 - 300,
        T0 - 200,
        T0 - 20,
    )
    # A line as sacct wrote it before Submit and Eligible were asked for still parses.
    old = "11|COMPLETED|0:0|2026-11-24T00:40:14|2026-11-24T00:41:01|47|00:01:00|1"
    (before,) = parse_sacct_attempts(old)["11"]
    assert before.submit_time is None and before.elapsed_s == 47
    text = (
        f"JobId=11 JobName=x JobState=COMPLETED Restarts=0 SubmitTime={slurm_time(T0 - 300)} "
        f"EligibleTime={slurm_time(T0 - 200)} StartTime={slurm_time(T0 - 20)} NumNodes=1"
    )
    found = outcome_from_scontrol(text)
    assert found is not None
    assert (found.submit_time, found.eligible_time) == (T0 - 300, T0 - 200)


FORECAST = QueueForecast(
    first_wait_s=60.0,
    first_wait_p95_s=300.0,
    wait_p50_s=30.0,
    wait_p95_s=120.0,
    finish_p50_s=5000.0,
    finish_p95_s=6000.0,
)


def test_each_job_is_recorded_beside_its_predicted_wait_and_start(tmp_path: Path) -> None:
    """Job 11 (the first) waited 180 s from its submit (P50 60 s, P95 300 s: within the P95
    only); job 12 waited 25 s after job 11 ended made it eligible (P50 30 s: within both)."""
    folder = chain_folder(tmp_path)
    log = Log(folder / "progress.jsonl", total=3907)  # the chain's plan: 3907 steps
    log.job(0, [STEP_S] * 2000, job_id="11", stop="signal")
    log.wait(25).job(2000, [STEP_S] * 1907, job_id="12", load_s=5.0, stop="done")
    log.write()
    submit, end_11 = T0 - 200, T0 + 600
    lines = [
        sacct_attempt("11", "COMPLETED", submit, submit, submit + 180, 620),
        sacct_attempt("12", "COMPLETED", submit, end_11, end_11 + 25, 560),
    ]
    db = tmp_path / "h.sqlite"
    spec = spec_with(plan__max_nodes=1, checkpoint={"interval_steps": 100})
    history.record_plan(
        inspect_run(str(folder), FakeSlurm(sacct="")).plan,
        folder,
        path=db,
        record=record_for(spec),
        queue=FORECAST,
    )
    state = inspect_run(str(folder), FakeSlurm(sacct="\n".join(lines) + "\n"))
    assert history.record_outcomes(state, db, record_for(spec)) >= 2
    with history.connect(db) as conn:
        rows = {
            row["job_id"]: dict(row)
            for row in conn.execute(
                "SELECT job_id, submit_time, eligible_time, start_time, predicted_start,"
                " predicted_wait_s, predicted_wait_p95_s FROM outcomes"
                " WHERE job_id IN ('11', '12')"
            )
        }
    assert rows["11"] == {
        "job_id": "11",
        "submit_time": submit,
        "eligible_time": submit,
        "start_time": submit + 180,
        "predicted_start": submit + 60,  # eligible (its submit) + the first job's P50 wait
        "predicted_wait_s": 60.0,
        "predicted_wait_p95_s": 300.0,
    }
    assert (rows["12"]["eligible_time"], rows["12"]["predicted_start"]) == (end_11, end_11 + 30)
    assert (rows["12"]["predicted_wait_s"], rows["12"]["predicted_wait_p95_s"]) == (30.0, 120.0)

    kind = kind_key(spec, record_for(spec))
    waits = coverage(history_coverage.queue_waits(kind, "gpu", db))
    assert (waits.jobs_p50, waits.within_p50, waits.jobs_p95, waits.within_p95) == (2, 1, 2, 2)
    text = " ".join(history_text(db, width=250).split())
    assert "50% (1/2)" in text and "100% (2/2)" in text  # queue wait: P50 1 of 2, P95 2 of 2
    # The run: first job predicted to start 60 s after its submit, started 180 s after it
    # (+2 minutes); its finish predicted at submit + 5000 s (P50) and 6000 s (P95).
    starts = json.loads(history_json(db))["starts"]
    assert len(starts) == 1
    run = starts[0]
    assert (run["submitted"], run["predicted_start"], run["started"]) == (
        submit,
        submit + 60,
        submit + 180,
    )
    assert (run["finish_p50"], run["finish_p95"]) == (submit + 5000, submit + 6000)
    assert run["finished"] == end_11 + 25 + 560
    assert "(+2 min 00 s)" in text, text  # the first job started 2 minutes late


# -- schema 3 databases --------------------------------------------------------------------------

KIND = kind_key(spec_with(), record_for(spec_with()))
V3_SCHEMA = """
CREATE TABLE plans (
    id INTEGER PRIMARY KEY, recorded REAL NOT NULL, run_dir TEXT NOT NULL, name TEXT,
    workload TEXT NOT NULL, partition TEXT NOT NULL, nodes INTEGER, gpus INTEGER,
    fingerprint TEXT, total_steps INTEGER, step_s REAL, p50_s REAL, p95_s REAL,
    model_p50_s REAL, model_p95_s REAL, correction REAL, source TEXT, kind TEXT
);
CREATE TABLE outcomes (
    id INTEGER PRIMARY KEY, recorded REAL NOT NULL, run_dir TEXT NOT NULL,
    job_id TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, state TEXT, state_source TEXT,
    inferred INTEGER, start_time REAL, end_time REAL, elapsed_s REAL, time_limit_s REAL,
    from_step INTEGER, steps INTEGER, predicted_s REAL, plan_correction REAL,
    step_s REAL, model_step_s REAL, exit TEXT, cause TEXT, why TEXT,
    learned INTEGER NOT NULL DEFAULT 1,
    UNIQUE (run_dir, job_id, attempt)
);
PRAGMA user_version = 3;
"""


def test_a_schema_3_database_is_read_and_gains_the_queue_columns(tmp_path: Path) -> None:
    """A history as plan-job wrote it before issue 23 (schema 3): every row stays, the new
    columns are empty, its jobs count for the run-time coverage and none for the queue's."""
    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as conn:
        conn.executescript(V3_SCHEMA)
        conn.execute(
            "INSERT INTO plans (recorded, run_dir, name, workload, partition, nodes, gpus,"
            " fingerprint, total_steps, step_s, p50_s, p95_s, source, kind) VALUES"
            " (1.0, '/runs/a', 'a', 'jit:tiny', 'gpu', 1, 4, 'f00', 3907, 1.06, 5000.0,"
            " 6000.0, 'emit', ?)",
            (KIND,),
        )
        conn.execute(
            "INSERT INTO outcomes (recorded, run_dir, job_id, state, start_time, end_time,"
            " elapsed_s, steps, predicted_s) VALUES (2.0, '/runs/a', '11', 'COMPLETED', 10.0,"
            " 1110.0, 1100.0, 100, 1000.0)"
        )
    with history.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == history.SCHEMA_VERSION == 4
        row = dict(conn.execute("SELECT * FROM outcomes").fetchone())
        plan = dict(conn.execute("SELECT * FROM plans").fetchone())
    assert (row["job_id"], row["elapsed_s"], row["predicted_s"]) == ("11", 1100.0, 1000.0)
    assert row["submit_time"] is None and row["eligible_time"] is None
    assert row["predicted_start"] is None and row["predicted_wait_s"] is None
    assert plan["p95_s"] == 6000.0 and plan["wait_p50_s"] is None and plan["p95_widening"] is None
    # 1100 s against a P50 of 1000 s and a P95 of 1000 x 6000 / 5000 = 1200 s.
    jobs = history_coverage.run_times(KIND, "gpu", db)
    assert [(j.check.p50_s, j.check.p95_s) for j in jobs] == [(1000.0, pytest.approx(1200.0))]
    text = " ".join(history_text(db, width=250).split())
    assert "0% (0/1)" in text and "100% (1/1)" in text and "no predictions yet" in text
    # An old database opened again is not migrated twice (the version says 4).
    with history.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0] == 1


def test_a_run_folder_without_a_plans_row_records_plan_yamls_forecast(tmp_path: Path) -> None:
    """A run emitted with the history off: its first outcomes bring plan.yaml's plan into
    the history, with the queue forecast plan.yaml carries (Slurm asked at T0 - 300, the
    first segment's start at T0 - 240: a 60 s wait; the waits between segments median 30 s,
    P95 120 s; the finish at T0 + 4700)."""
    folder = chain_folder(tmp_path)
    plan = yaml.safe_load((folder / "plan.yaml").read_text())
    plan.update(
        queue_checked_at=T0 - 300, start_time=T0 - 240, finish_p50=T0 + 4700,
        finish_p95=T0 + 5700, wait_median_s=30.0, wait_p90_s=90.0, wait_p95_s=120.0,
        wait_jobs=12,
    )  # fmt: skip
    (folder / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    log = Log(folder / "progress.jsonl", total=3907)
    log.job(0, [STEP_S] * 2000, job_id="11", stop="signal")
    log.write()
    submit = T0 - 300
    line = sacct_attempt("11", "COMPLETED", submit, submit, submit + 180, 620)
    db = tmp_path / "h.sqlite"
    spec = spec_with(plan__max_nodes=1, checkpoint={"interval_steps": 100})
    state = inspect_run(str(folder), FakeSlurm(sacct=line + "\n"))
    assert history.record_outcomes(state, db, record_for(spec)) >= 1
    with history.connect(db) as conn:
        row = conn.execute(
            "SELECT first_wait_s, first_wait_p95_s, wait_p50_s, wait_p95_s, finish_p50_s FROM plans"
        ).fetchone()
        job = conn.execute(
            "SELECT predicted_wait_s, predicted_start FROM outcomes WHERE job_id = '11'"
        ).fetchone()
    assert tuple(row) == (60.0, None, 30.0, 120.0, 5000.0)
    assert tuple(job) == (60.0, submit + 60.0)
