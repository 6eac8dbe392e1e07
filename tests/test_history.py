"""The history database: what is recorded, predicted vs actual, and the correction new plans
get from recent outcomes (hand-computed ratios; no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from planner.calibration.record import save_record
from planner.followup.state import inspect_run
from planner.history import correction as history_correction
from planner.history import database as history
from planner.history.report import history_text
from planner.model.correction import MAX_FACTOR
from planner.model.kind import kind_key
from tests.builders import (
    SPEC,
    add_outcomes,
    plan_for,
    record_for,
    recorded_run,
    spec_with,
    write_spec,
)
from tests.in_process import invoke
from tests.processes import venv_only_env
from tests.progress_logs import Log
from tests.run_folders import FakeSlurm, accounted, stopped_folder

# The reference spec's kind (planner.model.kind), calibrated by the reference record.
KIND = kind_key(spec_with(), record_for(spec_with()))


def test_the_database_lives_where_it_is_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    explicit = tmp_path / "a" / "b" / "h.sqlite"
    assert history.history_path(explicit) == explicit
    monkeypatch.setenv("PLANJOB_HISTORY", str(tmp_path / "env.sqlite"))
    assert history.history_path() == tmp_path / "env.sqlite"
    monkeypatch.delenv("PLANJOB_HISTORY")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert history.history_path() == tmp_path / "data" / "plan-job" / "history.sqlite"
    with history.connect(explicit) as db:  # parent folders are made
        assert db.execute("PRAGMA user_version").fetchone()[0] == history.SCHEMA_VERSION
    (tmp_path / "file").write_text("")
    with (
        pytest.raises(history.HistoryError, match="cannot open"),
        history.connect(tmp_path / "file" / "h.sqlite"),
    ):
        pass


def test_calibration_plan_and_outcomes_round_trip(tmp_path: Path) -> None:
    stopped = stopped_folder(tmp_path)
    db = tmp_path / "h.sqlite"
    spec = spec_with(plan__max_nodes=1, checkpoint={"interval_steps": 100})
    history.record_calibration(record_for(spec), tmp_path / "cal.yaml", db)
    state = inspect_run(str(stopped), FakeSlurm(sacct=accounted()))
    assert history.record_outcomes(state, db, record_for(spec)) == 5
    assert history.record_outcomes(state, db, record_for(spec)) == 5  # updated, not doubled
    with history.connect(db) as conn:
        plans = conn.execute("SELECT workload, partition, nodes, source FROM plans").fetchall()
        outcomes = conn.execute(
            "SELECT job_id, state, steps, elapsed_s, predicted_s, step_s, model_step_s,"
            " learned, why FROM outcomes ORDER BY job_id"
        ).fetchall()
        calibrations = conn.execute("SELECT name, workload FROM calibrations").fetchall()
    # No plan was recorded at emit: the run folder's plan.yaml stands in for it.
    assert [tuple(p) for p in plans] == [("jit:tiny", "gpu", 1, "plan.yaml")]
    assert [tuple(c) for c in calibrations] == [("plan-test", "jit:tiny")]
    assert len(outcomes) == 5
    first = outcomes[0]
    # Job 11: start-up 100 s and warm-up 20 s, 950 steps of 1.06 s, saves at 100..900, its
    # stop save at 950 and, being the first job, its probe save (11 x 60 s): 1787 s
    # predicted, 1567 s elapsed.
    assert (first["job_id"], first["state"], first["steps"]) == ("11", "NODE_FAIL", 950)
    assert first["predicted_s"] == pytest.approx(100 + 20 + 950 * 1.06 + 11 * 60)
    # Its steps, from its progress lines: 1.06 s each, the model's 1.06 s step.
    assert (first["step_s"], first["model_step_s"]) == pytest.approx((1.06, 1.06))
    assert [o["predicted_s"] for o in outcomes[1:]] == [None] * 4  # never ran
    assert [o["step_s"] for o in outcomes[1:]] == [None] * 4
    # Job 11 died at step 950 (NODE_FAIL, no stop line): kept, not learned from.
    assert first["learned"] == 0 and first["why"] == "its node failed (NODE_FAIL)"
    assert history_correction.step_biases(KIND, "gpu", 1, db) == []
    text = history_text(db, width=200)  # wide: the row on one line (tests/test_table_width.py)
    assert "950/3,907  26 min 07 s so far" in text and "0.88" in text and "plan-test" in text
    assert "attempts not learned from" in text and "its node failed (NODE_FAIL)" in text
    # A job of the run that stopped cleanly at its time limit is learned from.
    Log(stopped / "progress.jsonl", total=3907).job(
        0, [1.06] * 950, job_id="11", save_every=100, save_s=60.0, stop="time_limit"
    ).write()
    clean = inspect_run(str(stopped), FakeSlurm(sacct=accounted("COMPLETED")))
    history.record_outcomes(clean, db, record_for(spec))
    biases = history_correction.step_biases(KIND, "gpu", 1, db)
    assert [(b.bias, b.planned, b.job_id) for b in biases] == [pytest.approx((1, 1, "11"))]
    assert history_correction.step_biases(KIND, "gpu", 2, db) == []


def test_recent_outcomes_beat_old_ones(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    run = recorded_run(db, tmp_path, "a")
    add_outcomes(db, run, [0.5])
    assert history_correction.correction_for(KIND, "gpu", 1, db) is None  # one job
    add_outcomes(db, run, [2.0, 1.2, 1.1, 1.3, 0.9])
    correction = history_correction.correction_for(KIND, "gpu", 1, db)
    assert correction is not None
    assert correction.outcomes == 6 and correction.overall_median == pytest.approx(1.15)
    assert correction.factor == pytest.approx(1.2)  # median of the newest five
    assert (
        history_correction.correction_for(
            kind_key(spec_with(workload__preset="micro"), record_for(spec_with())), "gpu", 1, db
        )
        is None
    )


def test_a_prediction_that_was_exceeded_raises_the_next(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    add_outcomes(db, recorded_run(db, tmp_path, "a"), [1.0, 1.0, 1.0, 1.4, 1.6])
    correction = history_correction.correction_for(KIND, "gpu", 1, db)
    assert correction is not None
    # The median of the newest five is 1.0, but the newest ran 60% over: the mean of the last
    # two (Tsafrir, Etsion and Feitelson 2007).
    assert correction.recent_median == pytest.approx(1.0)
    assert correction.factor == pytest.approx(1.5) and "Tsafrir" in correction.rule


def test_the_bias_is_against_the_uncorrected_model(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    # A plan whose steps were already scaled by 1.5, and whose jobs then ran exactly that.
    add_outcomes(db, recorded_run(db, tmp_path, "a"), [1.0, 1.0, 1.0], correction=1.5)
    correction = history_correction.correction_for(KIND, "gpu", 1, db)
    assert correction is not None and correction.factor == pytest.approx(1.5)


def test_a_correction_applies_only_at_the_node_count_it_was_learned_at(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    add_outcomes(db, recorded_run(db, tmp_path, "two", nodes=2), [1.3, 1.3])
    spec = spec_with(plan__max_nodes=1)
    corrections = history_correction.corrections_for(spec, None, db, record=record_for(spec))
    assert list(corrections) == [2] and corrections[2].factor == pytest.approx(1.3)
    # A 1-node plan: nothing learnt at 1 node, so nothing changes.
    assert plan_for(spec, corrections=corrections) == plan_for(spec)
    # A 2-node plan: only its step time moves, by 1.3.
    spec2 = spec_with(plan__max_nodes=2)
    model = plan_for(spec2, nodes=2)
    corrected = plan_for(spec2, nodes=2, corrections=corrections)
    assert corrected.step_s == pytest.approx(1.3 * model.step_s)
    assert corrected.step_correction == pytest.approx(1.3)
    assert corrected.wall.startup_s == model.wall.startup_s
    assert corrected.wall.warmup_s == model.wall.warmup_s
    assert corrected.checkpoint.save_s == model.checkpoint.save_s
    assert corrected.resume_s == model.resume_s
    assert any("steps x1.30 at 2 node(s)" in note for note in corrected.notes)


def test_a_large_factor_is_capped_and_said(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    # The mis-scaled 2-node run of the issue: planned 9.93 ms steps, ran 59.6 ms (x6.0).
    add_outcomes(db, recorded_run(db, tmp_path, "two", nodes=2), [6.0, 6.0])
    corrections = history_correction.corrections_for(
        spec_with(), None, db, record=record_for(spec_with())
    )
    assert corrections[2].learned == pytest.approx(6.0)
    assert corrections[2].factor == MAX_FACTOR and corrections[2].capped
    spec = spec_with(plan__max_nodes=2)
    model = plan_for(spec, nodes=2)
    corrected = plan_for(spec, nodes=2, corrections=corrections)
    assert corrected.step_s == pytest.approx(2.0 * model.step_s)
    note = next(n for n in corrected.notes if n.startswith("history:"))
    assert "capped at x2.00: those jobs ran x6.00" in note


def test_the_newest_jobs_spread_widens_the_band_only_past_the_specs(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    run = recorded_run(db, tmp_path, "a")
    add_outcomes(db, run, [1.0, 1.0])
    two = history_correction.correction_for(KIND, "gpu", 1, db)
    assert two is not None and two.spread == 0.0  # two jobs: no spread learnt
    add_outcomes(db, run, [1.2, 0.8, 1.1, 0.9, 1.0])
    correction = history_correction.correction_for(KIND, "gpu", 1, db)
    assert correction is not None and correction.factor == pytest.approx(1.0)
    # Newest five 1.2, 0.8, 1.1, 0.9, 1.0: sample sd sqrt(0.1 / 4) over the factor 1.0.
    assert correction.spread == pytest.approx(0.158114, rel=1e-5)
    corrections = {1: correction}
    spec = spec_with(plan__max_nodes=1)
    assert spec.plan.run_to_run_spread < correction.spread
    model, widened = plan_for(spec), plan_for(spec, corrections=corrections)
    assert widened.wall.p50_s == pytest.approx(model.wall.p50_s)
    assert widened.wall.p95_s - widened.wall.p50_s > 3 * (model.wall.p95_s - model.wall.p50_s)
    steady = spec_with(plan__max_nodes=1, plan__run_to_run_spread=0.5)
    # A spread below the spec's changes nothing: the same times, only the plan's note.
    assert plan_for(steady, corrections=corrections).wall == plan_for(steady).wall


# -- the command line --------------------------------------------------------------------------


@pytest.fixture
def planned(tmp_path: Path) -> tuple[Path, Path]:
    # One node: the history's outcomes below were recorded at one node.
    spec = write_spec(tmp_path, {**SPEC, "plan": {**SPEC["plan"], "max_nodes": 1}})
    save_record(record_for(spec_with()), tmp_path / "cal.yaml")
    return spec, tmp_path / "cal.yaml"


def test_plan_and_emit_print_and_apply_the_correction(
    planned: tuple[Path, Path], tmp_path: Path
) -> None:
    spec, cal = planned
    db = tmp_path / "h.sqlite"
    add_outcomes(db, recorded_run(db, tmp_path, "old"), [1.5, 1.5])
    env = venv_only_env(db)
    proc = invoke(["plan", str(spec), "--calibration", str(cal)], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "history: steps x1.50 at 1 node(s), learned from 2 job(s) of jit:tiny" in proc.stdout
    assert "history correction (steps x1.50 at 1 node(s)): P50" in proc.stdout
    plain = invoke(
        ["plan", str(spec), "--calibration", str(cal), "--no-correction"], cwd=tmp_path, env=env
    )
    assert plain.returncode == 0 and "history correction" not in plain.stdout

    proc = invoke(
        ["emit", str(spec), "--calibration", str(cal), "-o", "run"], cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "history correction (steps x1.50 at 1 node(s))" in proc.stdout
    settings = yaml.safe_load((tmp_path / "run" / "emit.yaml").read_text())
    assert settings["correction"] == pytest.approx(1.5)
    assert settings["workdir"] == str(tmp_path.resolve())
    with history.connect(db) as conn:
        row = conn.execute(
            "SELECT correction, p50_s, model_p50_s FROM plans WHERE run_dir = ?",
            (str((tmp_path / "run").resolve()),),
        ).fetchone()
    assert row["correction"] == pytest.approx(1.5) and row["p50_s"] > row["model_p50_s"]
    # Only the steps move: 3907 steps of 1.06 s x 1.5; start-up and saves as calibrated.
    wall = yaml.safe_load((tmp_path / "run" / "plan.yaml").read_text())["wall"]
    assert wall["steps_s"] == pytest.approx(3907 * 1.06 * 1.5)
    assert (wall["startup_s"], wall["warmup_s"]) == pytest.approx((100.0, 20.0))
    proc = invoke(["history"], cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "(x1.50)" in proc.stdout and "x1.50" in proc.stdout


def test_a_drifting_history_widens_the_plans_p95(
    planned: tuple[Path, Path], tmp_path: Path
) -> None:
    spec, cal = planned
    db = tmp_path / "h.sqlite"
    add_outcomes(db, recorded_run(db, tmp_path, "old"), [1.2, 0.8, 1.1, 0.9, 1.0])
    env = venv_only_env(db)

    def band(*extra: str) -> tuple[float, float, str]:
        proc = invoke(
            ["emit", str(spec), "--calibration", str(cal), "-o", f"run{len(extra)}", *extra],
            cwd=tmp_path,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        wall = yaml.safe_load((tmp_path / f"run{len(extra)}" / "plan.yaml").read_text())["wall"]
        return wall["p50_s"], wall["p95_s"], proc.stdout

    p50, p95, out = band()
    plain_p50, plain_p95, _ = band("--no-correction")
    assert "strayed 15.8% (standard deviation)" in out and "the P95 uses 15.8%" in out
    assert p50 == pytest.approx(plain_p50)  # the factor is 1.0: only the band moves
    assert p95 - p50 > 3 * (plain_p95 - plain_p50)
    proc = invoke(["history"], cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "x1.00, spread 15.8%" in proc.stdout


def test_an_unwritable_history_only_warns(planned: tuple[Path, Path], tmp_path: Path) -> None:
    spec, cal = planned
    (tmp_path / "not-a-folder").write_text("")
    env = venv_only_env(tmp_path / "not-a-folder" / "h.sqlite")
    proc = invoke(
        ["emit", str(spec), "--calibration", str(cal), "-o", "run"], cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "warning: history" in proc.stderr and "nothing recorded" in proc.stderr
    proc = invoke(["history"], cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "cannot open" in proc.stderr


def test_a_schema_1_database_gains_the_step_columns(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as conn:  # the outcomes table as schema 1 made it
        conn.execute(
            "CREATE TABLE outcomes (id INTEGER PRIMARY KEY, recorded REAL NOT NULL, run_dir TEXT"
            " NOT NULL, job_id TEXT NOT NULL, state TEXT, state_source TEXT, inferred INTEGER,"
            " start_time REAL, end_time REAL, elapsed_s REAL, time_limit_s REAL, from_step"
            " INTEGER, steps INTEGER, predicted_s REAL, plan_correction REAL,"
            " UNIQUE (run_dir, job_id))"
        )
        conn.execute("PRAGMA user_version = 1")
    with history.connect(db) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(outcomes)")}
        assert {"step_s", "model_step_s"} <= columns
        assert conn.execute("PRAGMA user_version").fetchone()[0] == history.SCHEMA_VERSION
