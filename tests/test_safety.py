"""What plan-job must never do to a user's files, and bad input it must name, not trip over.

Each test here fails on the code before the fix it guards (issue 13: data loss with
`emit -o . --force`, a spec name that wrote outside the project, an unwritable checkpoint
folder found only after the calibration's steps, typos reported as missing fields, and
hand-edited calibration records giving negative plans or tracebacks).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import yaml

from planner.calibration.record import load_record, save_record
from planner.errors import RecordFieldError
from planner.runs.run_folder import MARKER, read_marker
from tests.builders import SPEC, TINY_JIT, record_for, spec_with, write_spec
from tests.in_process import invoke
from tests.processes import cli_env


def no_slurm_env(**extra: str) -> dict[str, str]:
    # Only the virtualenv on PATH: plan and emit plan without a partition.
    return cli_env({"PATH": str(Path(sys.executable).parent), **extra})


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project folder: their spec, their calibration record, their train.py."""
    folder = tmp_path / "my project"
    folder.mkdir()
    write_spec(folder, SPEC, "spec.yaml")
    save_record(record_for(spec_with()), folder / "cal.yaml")
    (folder / "train.py").write_text("print('the user's own script')\n")
    return folder


def emit(project: Path, out: str, *extra: str, env: dict[str, str] | None = None) -> object:
    args = ["emit", "spec.yaml", "--calibration", "cal.yaml", "-o", out, *extra]
    return invoke(args, cwd=project, env=env or no_slurm_env())


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- 1. emit --force replaces only what emit wrote ------------------------------------------


@pytest.mark.parametrize("out", [".", "..", "../.."])
def test_force_never_replaces_the_working_directory_or_above(project: Path, out: str) -> None:
    before = listing(project.parent)
    proc = emit(project, out, "--force")
    assert proc.returncode == 2, proc.stderr
    assert "current directory" in proc.stderr and "Traceback" not in proc.stderr
    assert listing(project.parent) == before  # nothing deleted, nothing half-written


def test_force_never_replaces_home(project: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("export KEEP=1\n")
    proc = emit(project, str(home), "--force", env=no_slurm_env(HOME=str(home)))
    assert proc.returncode == 2 and "home directory" in proc.stderr, proc.stderr
    assert (home / ".bashrc").read_text() == "export KEEP=1\n"


def test_force_refuses_a_folder_emit_did_not_write(project: Path) -> None:
    data = project / "data"
    data.mkdir()
    (data / "shard-0.bin").write_bytes(b"\0" * 16)
    proc = emit(project, "data", "--force")
    assert proc.returncode == 2, proc.stderr
    assert str(data) in proc.stderr and MARKER in proc.stderr
    assert listing(data) == ["shard-0.bin"]


def test_force_refuses_a_run_folder_holding_files_of_the_users(project: Path) -> None:
    assert emit(project, "run").returncode == 0
    (project / "run" / "ckpt").mkdir()
    (project / "run" / "ckpt" / "ckpt-000000100.pt").write_bytes(b"weights")
    proc = emit(project, "run", "--force")
    assert proc.returncode == 2 and "ckpt" in proc.stderr, proc.stderr
    assert (project / "run" / "ckpt" / "ckpt-000000100.pt").read_bytes() == b"weights"


def test_force_replaces_a_run_folder_emit_wrote(project: Path) -> None:
    assert emit(project, "run").returncode == 0
    first = read_marker(project / "run")
    (project / "run" / "progress.jsonl").write_text("")  # what a run adds is plan-job's too
    proc = emit(project, "run", "--force")
    assert proc.returncode == 0, proc.stderr
    second = read_marker(project / "run")
    assert first is not None and second is not None and first.run_id != second.run_id
    assert not (project / "run" / "progress.jsonl").exists()
    # emit.yaml is written with the folder, not after it.
    assert (project / "run" / "emit.yaml").is_file()
    assert sorted(p.name for p in project.iterdir()) == [
        "cal.yaml",
        "run",
        "spec.yaml",
        "train.py",
    ]


# -- 3. names become file names only when they are one file name ----------------------------


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", ".", "line\nbreak", "back\\slash"])
def test_a_name_that_is_not_one_file_name_is_refused(tmp_path: Path, name: str) -> None:
    spec = copy.deepcopy(TINY_JIT)
    spec["name"] = name
    project = tmp_path / "project"
    project.mkdir()
    proc = invoke(["calibrate", str(write_spec(project, spec))], cwd=project)
    assert proc.returncode == 2, proc.stderr
    assert "name: got" in proc.stderr and "one file name" in proc.stderr
    assert listing(tmp_path) == ["project", "project/run.yaml"]  # no record, no job folder


# -- 9. checkpoint.dir is checked before anything is submitted ------------------------------


def test_an_unwritable_checkpoint_dir_fails_calibrate_before_the_job(tmp_path: Path) -> None:
    spec = copy.deepcopy(TINY_JIT)
    spec["checkpoint"] = {"dir": "/proc/x"}
    proc = invoke(["calibrate", str(write_spec(tmp_path, spec))], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "checkpoint.dir: got '/proc/x'; cannot write there" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / ".plan-job").exists()  # no job was started


def test_an_unwritable_checkpoint_dir_fails_emit(project: Path) -> None:
    proc = emit(project, "run", "--set", "checkpoint.dir=/proc/x")
    assert proc.returncode == 2 and "checkpoint.dir" in proc.stderr, proc.stderr
    assert not (project / "run").exists()


def test_the_writability_check_leaves_no_folder_behind(project: Path) -> None:
    proc = emit(project, "run", "--set", "checkpoint.dir=deep/new/ck")
    assert proc.returncode == 0, proc.stderr
    assert not (project / "deep").exists()  # created for the test, removed again


# -- 10. typos, and records edited by hand --------------------------------------------------


def test_a_misspelt_required_key_is_named_with_the_fix(tmp_path: Path) -> None:
    spec = copy.deepcopy(TINY_JIT)
    spec["batch"] = {"micro_bach": 8}
    proc = invoke(["calibrate", str(write_spec(tmp_path, spec))], cwd=tmp_path)
    assert proc.returncode == 2
    assert "batch.micro_bach: got 8; unknown key; did you mean 'micro_batch'?" in proc.stderr


def test_a_misspelt_optional_key_suggests_the_close_one(tmp_path: Path) -> None:
    spec = copy.deepcopy(TINY_JIT)
    spec["calibration"]["max_secnds"] = 10
    proc = invoke(["calibrate", str(write_spec(tmp_path, spec))], cwd=tmp_path)
    assert proc.returncode == 2
    assert "calibration.max_secnds" in proc.stderr and "did you mean 'max_seconds'?" in proc.stderr


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("step_mean_s", -0.5, "measurement.step_mean_s: got -0.5; must be > 0"),
        ("step_mean_s", 0, "measurement.step_mean_s: got 0; must be > 0"),
        ("startup_s", "fast", "measurement.startup_s: got 'fast'; must be a number"),
        ("checkpoint_save_s", -3.0, "measurement.checkpoint_save_s: got -3.0; must be >= 0"),
        ("samples_per_step", 2.5, "measurement.samples_per_step: got 2.5; must be a whole"),
        ("stopped_by", "luck", "measurement.stopped_by: got 'luck'; allowed: ci_target"),
        ("step_times_s", [0.1, -1.0], "measurement.step_times_s: got -1.0; every entry"),
    ],
)
def test_a_hand_edited_record_is_refused_naming_the_field(
    project: Path, field: str, value: object, message: str
) -> None:
    raw = yaml.safe_load((project / "cal.yaml").read_text())
    raw["measurement"][field] = value
    (project / "cal.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(RecordFieldError, match="calibrate again"):
        load_record(project / "cal.yaml")
    proc = invoke(
        ["plan", "spec.yaml", "--calibration", "cal.yaml"], cwd=project, env=no_slurm_env()
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


# -- 7. a slowdown is shown as noise --------------------------------------------------------


def test_a_recorded_slowdown_is_shown_as_noise(tmp_path: Path) -> None:
    from planner.calibration.report import calibration_table

    record = record_for(spec_with(), slowdowns=((41, 85, 1.99),))
    save_record(record, tmp_path / "cal.yaml")
    loaded = load_record(tmp_path / "cal.yaml")
    assert loaded.measurement.slowdowns == ((41, 85, 1.99),)
    table = calibration_table(loaded)
    assert "steps 41-85 ran x1.99 the median (noise such as a load spike, not warm-up)" in table


# -- 4. no unmeasured multi-node plan unless asked ------------------------------------------


def test_a_one_node_calibration_plans_one_node() -> None:
    from tests.builders import plan_for

    spec = spec_with(plan__allow_unmeasured_scaling=False)  # partitionless, max_nodes 8
    plan = plan_for(spec)
    assert plan.nodes == 1 and [o.nodes for o in plan.options] == [1]
    (note,) = plan.notes
    assert note.startswith("planned on the calibrated 1 node(s) only: scaling to more (up to 8)")
    assert "--nodes 1,2 --executor slurm" in note and "allow_unmeasured_scaling" in note
    # Asked for: the model may choose (the reference case picks more than one node).
    allowed = plan_for(spec_with(plan__allow_unmeasured_scaling=True))
    assert allowed.nodes > 1 and len(allowed.options) == 8
    forced = plan_for(spec, nodes=2)
    assert forced.nodes == 2
    assert any(n.startswith("--nodes 2: scaling beyond the calibrated 1") for n in forced.notes)


def test_the_cli_says_the_plan_kept_to_the_calibrated_nodes(project: Path) -> None:
    args = ["plan", "spec.yaml", "--calibration", "cal.yaml"]
    proc = invoke(
        [*args, "--set", "plan.allow_unmeasured_scaling=false"], cwd=project, env=no_slurm_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert "planned on the calibrated 1 node(s) only" in proc.stdout


# -- 8. a weak calibration is said, and widens the P95 --------------------------------------


def test_a_calibration_far_off_its_ci_target_widens_the_p95() -> None:
    import math

    from planner.calibration.report import calibration_table
    from tests.builders import plan_for

    spec = spec_with(plan__max_nodes=1, plan__run_to_run_spread=0.02)
    # ±30.9% against a 2% target: 15x it. The P95 takes 30.9% as the run-to-run spread.
    weak = record_for(spec, step_ci_half_s=0.309)
    plan = plan_for(spec, record=weak)
    (note,) = plan.notes
    assert note.startswith("weak calibration: the step time is known to ±30.9%, more than 2x")
    assert "spread of 30.9% (not 2%)" in note
    steps_s = plan.wall.steps_s
    # sigma = hypot(the mean's sigma 0.309 / 1.96, spread 0.309) x the steps' time (no noise).
    assert plan.wall.sigma_s == pytest.approx(math.hypot(0.309 / 1.96, 0.309) * steps_s)
    assert "warning" in calibration_table(weak) and "±30.9%" in calibration_table(weak)
    # Within 2x of the target (±3.9% against 2%): no note, the spec's spread.
    fair = plan_for(spec, record=record_for(spec, step_ci_half_s=0.039))
    assert fair.notes == ()
    assert fair.wall.sigma_s == pytest.approx(math.hypot(0.039 / 1.96, 0.02) * fair.wall.steps_s)
    assert "warning" not in calibration_table(record_for(spec, step_ci_half_s=0.039))


def test_many_slowdowns_are_summed_up_and_one_at_the_start_is_not_called_a_spike() -> None:
    from planner.calibration.report import calibration_table

    stretches = ((1, 20, 6.1), (26, 40, 2.69), (56, 65, 7.84), (151, 160, 4.67), (246, 255, 13.9))
    table = " ".join(calibration_table(record_for(spec_with(), slowdowns=stretches)).split())
    assert "steps 1-20 ran x6.10 the median (at the start, not told apart" in table
    assert "steps 26-40 ran x2.69 the median (noise such as a load spike" in table
    assert "steps 151-160" not in table  # past the third: summed up
    assert "2 more slow stretch(es), steps 151-255, up to x13.90 the median" in table
