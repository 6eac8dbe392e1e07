"""The history database: what is recorded, predicted vs actual, and the correction new plans
get from recent outcomes (hand-computed ratios; no cluster needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from planner import history
from planner.history_report import history_text
from planner.planning import make_plan
from planner.record import save_record
from planner.run_state import inspect_run
from tests.cli_helpers import cli_env, run_cli, write_spec
from tests.run_folders import FakeSlurm, accounted, stopped_folder
from tests.test_planning import SPEC, plan_for, record_for, spec_with


def add_outcomes(
    db: Path, run_dir: str, ratios: list[float], correction: float | None = None
) -> None:
    """More ended jobs of ``run_dir``, each ``ratio`` x its 100 s prediction, newest last."""
    with history.connect(db) as conn:
        first = conn.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0]
        for index, ratio in enumerate(ratios, start=first):
            conn.execute(
                "INSERT INTO outcomes (recorded, run_dir, job_id, state, end_time, elapsed_s, "
                "steps, predicted_s, plan_correction) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    0.0,
                    run_dir,
                    str(index),
                    "TIMEOUT",
                    1e9 + index,
                    100 * ratio,
                    10,
                    100,
                    correction,
                ),
            )


def recorded_run(db: Path, tmp_path: Path, name: str) -> str:
    folder = tmp_path / name
    folder.mkdir()
    history.record_plan(plan_for(), folder, path=db)
    return str(folder.resolve())


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
    assert history.record_outcomes(state, db) == 5
    assert history.record_outcomes(state, db) == 5  # again: updated, not doubled
    with history.connect(db) as conn:
        plans = conn.execute("SELECT workload, partition, nodes, source FROM plans").fetchall()
        outcomes = conn.execute(
            "SELECT job_id, state, steps, elapsed_s, predicted_s FROM outcomes ORDER BY job_id"
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
    assert [o["predicted_s"] for o in outcomes[1:]] == [None] * 4  # never ran
    assert history.biases("jit:tiny", "gpu", db) == [pytest.approx((1567 / 1787, 1567 / 1787))]
    text = history_text(db)
    assert "950/3,907  26 min 07 s so far" in text
    assert "0.88" in text and "none (< 2 jobs)" in text and "plan-test" in text


def test_recent_outcomes_beat_old_ones(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    run = recorded_run(db, tmp_path, "a")
    add_outcomes(db, run, [0.5])
    assert history.correction_for("jit:tiny", "gpu", db) is None  # one job is not enough
    add_outcomes(db, run, [2.0, 1.2, 1.1, 1.3, 0.9])
    correction = history.correction_for("jit:tiny", "gpu", db)
    assert correction is not None
    assert correction.outcomes == 6 and correction.overall_median == pytest.approx(1.15)
    assert correction.factor == pytest.approx(1.2)  # median of the newest five
    assert history.correction_for("gpt:124M", "gpu", db) is None


def test_a_prediction_that_was_exceeded_raises_the_next(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    add_outcomes(db, recorded_run(db, tmp_path, "a"), [1.0, 1.0, 1.0, 1.4, 1.6])
    correction = history.correction_for("jit:tiny", "gpu", db)
    assert correction is not None
    # The median of the newest five is 1.0, but the newest ran 60% over: the mean of the last
    # two (Tsafrir, Etsion and Feitelson 2007).
    assert correction.recent_median == pytest.approx(1.0)
    assert correction.factor == pytest.approx(1.5) and "Tsafrir" in correction.rule


def test_the_bias_is_against_the_uncorrected_model(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    # A plan already scaled by 1.5 whose jobs then took exactly as long as it said.
    add_outcomes(db, recorded_run(db, tmp_path, "a"), [1.0, 1.0, 1.0], correction=1.5)
    correction = history.correction_for("jit:tiny", "gpu", db)
    assert correction is not None and correction.factor == pytest.approx(1.5)


def test_the_newest_jobs_spread_widens_the_band_only_past_the_specs(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    run = recorded_run(db, tmp_path, "a")
    add_outcomes(db, run, [1.0, 1.0])
    two = history.correction_for("jit:tiny", "gpu", db)
    assert two is not None and two.spread == 0.0  # two jobs: no spread learnt
    add_outcomes(db, run, [1.2, 0.8, 1.1, 0.9, 1.0])
    correction = history.correction_for("jit:tiny", "gpu", db)
    assert correction is not None and correction.factor == pytest.approx(1.0)
    # Newest five 1.2, 0.8, 1.1, 0.9, 1.0: sample sd sqrt(0.1 / 4) over the factor 1.0.
    assert correction.spread == pytest.approx(0.158114, rel=1e-5)
    spec = spec_with()
    assert spec.plan.run_to_run_spread < correction.spread
    widened = history.spec_with_spread(spec, correction)
    assert widened.plan.run_to_run_spread == pytest.approx(correction.spread)
    steady = spec_with(plan__run_to_run_spread=0.5)
    assert history.spec_with_spread(steady, correction) is steady


def test_a_corrected_record_slows_the_whole_plan() -> None:
    spec = spec_with(plan__max_nodes=1, checkpoint={"interval_steps": 100})
    record = record_for(spec, step_std_s=0.05, step_ci_half_s=0.01)
    scaled = history.corrected_record(record, 1.5)
    m, s = record.measurement, scaled.measurement
    assert (s.step_mean_s, s.step_std_s, s.startup_s) == pytest.approx(
        (1.5 * m.step_mean_s, 1.5 * m.step_std_s, 1.5 * m.startup_s)
    )
    assert s.checkpoint_save_s == pytest.approx(1.5 * m.checkpoint_save_s)
    assert scaled.fingerprint == record.fingerprint
    model = make_plan(spec, record, None, "cal.yaml")
    corrected = make_plan(spec, scaled, None, "cal.yaml")
    # The compute part of a step scales; the modelled all-reduce (0.06 s on 4 GPUs) does not.
    comm = next(o.comm_s for o in model.options if o.chosen)
    assert comm == pytest.approx(0.06, abs=0.01)
    assert corrected.step_s == pytest.approx(comm + 1.5 * (model.step_s - comm))
    # Saves every 100 steps as the spec fixes; only the all-reduce (234 s of 6740) stays.
    assert 1.45 * model.wall.p50_s < corrected.wall.p50_s < 1.5 * model.wall.p50_s


# -- the command line --------------------------------------------------------------------------


def no_slurm_env(db: Path) -> dict[str, str]:
    # Only the virtualenv on PATH: no Slurm client, so plan and emit plan without a partition.
    return cli_env({"PATH": str(Path(sys.executable).parent), "PLANJOB_HISTORY": str(db)})


@pytest.fixture
def planned(tmp_path: Path) -> tuple[Path, Path]:
    spec = write_spec(tmp_path, SPEC)
    save_record(record_for(spec_with()), tmp_path / "cal.yaml")
    return spec, tmp_path / "cal.yaml"


def test_plan_and_emit_print_and_apply_the_correction(
    planned: tuple[Path, Path], tmp_path: Path
) -> None:
    spec, cal = planned
    db = tmp_path / "h.sqlite"
    add_outcomes(db, recorded_run(db, tmp_path, "old"), [1.5, 1.5])
    env = no_slurm_env(db)
    proc = run_cli(["plan", str(spec), "--calibration", str(cal)], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "history correction x1.50 for jit:tiny on partition gpu" in proc.stdout
    plain = run_cli(
        ["plan", str(spec), "--calibration", str(cal), "--no-correction"], cwd=tmp_path, env=env
    )
    assert plain.returncode == 0 and "history correction" not in plain.stdout

    proc = run_cli(
        ["emit", str(spec), "--calibration", str(cal), "-o", "run"], cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "history correction x1.50" in proc.stdout
    settings = yaml.safe_load((tmp_path / "run" / "emit.yaml").read_text())
    assert settings["correction"] == pytest.approx(1.5)
    assert settings["workdir"] == str(tmp_path.resolve())
    with history.connect(db) as conn:
        row = conn.execute(
            "SELECT correction, p50_s, model_p50_s FROM plans WHERE run_dir = ?",
            (str((tmp_path / "run").resolve()),),
        ).fetchone()
    assert row["correction"] == pytest.approx(1.5) and row["p50_s"] > 1.4 * row["model_p50_s"]
    proc = run_cli(["history"], cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "(x1.50)" in proc.stdout and "x1.50" in proc.stdout


def test_a_drifting_history_widens_the_plans_p95(
    planned: tuple[Path, Path], tmp_path: Path
) -> None:
    spec, cal = planned
    db = tmp_path / "h.sqlite"
    add_outcomes(db, recorded_run(db, tmp_path, "old"), [1.2, 0.8, 1.1, 0.9, 1.0])
    env = no_slurm_env(db)

    def band(*extra: str) -> tuple[float, float, str]:
        proc = run_cli(
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
    proc = run_cli(["history"], cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "x1.00, spread 15.8%" in proc.stdout


def test_an_unwritable_history_only_warns(planned: tuple[Path, Path], tmp_path: Path) -> None:
    spec, cal = planned
    (tmp_path / "not-a-folder").write_text("")
    env = no_slurm_env(tmp_path / "not-a-folder" / "h.sqlite")
    proc = run_cli(
        ["emit", str(spec), "--calibration", str(cal), "-o", "run"], cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "warning: history" in proc.stderr and "nothing recorded" in proc.stderr
    proc = run_cli(["history"], cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "cannot open" in proc.stderr
