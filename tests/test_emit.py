"""The sbatch scripts plan-job writes: their exact text, their quoting, the run folder.

The scripts' behaviour on a real cluster is in tests/test_chain_slurm.py; here is what can be
checked without one. The golden files are regenerated only on request:

    PLANJOB_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/test_emit.py
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from planner.errors import NotARunFolderError, RunFolderExistsError, SpecError
from planner.model.plan import Plan, PlanFacts
from planner.runs.chain import planned_commands
from planner.runs.emit import EmitOptions, emit, render, sbatch_options
from planner.runs.run_folder import checkpoint_interval, load_plan, plan_facts, read_train_json
from planner.slurm.submission import make_executor
from tests.builders import HOSTILE, partition, plan_for, spec_with
from tests.in_process import invoke

GOLDEN = Path(__file__).parent / "golden"


def chained_plan(**changes: object) -> Plan:
    # Five segments under a 30-minute MaxTime (see test_planning's segment test).
    spec = spec_with(plan__max_nodes=1, checkpoint={"interval_steps": 100}, **changes)
    return plan_for(spec, partition(1800))


@pytest.mark.parametrize("index", [1, 5])
def test_script_matches_the_golden_file(index: int) -> None:
    plan = chained_plan()
    options = EmitOptions(Path("/runs"), Path("/work/project"), "/opt/venv/bin/python")
    text = render(plan, plan.segments[index - 1], options, Path("/runs/plan-test"))
    golden = GOLDEN / f"segment-{index:02d}.sbatch"
    if os.environ.get("PLANJOB_REGENERATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
        pytest.fail(f"regenerated {golden}: review `git diff` and commit it")
    assert text == golden.read_text(), (
        "the generated script changed; if on purpose, regenerate with "
        "PLANJOB_REGENERATE_GOLDEN=1 and review the diff"
    )


@pytest.mark.slow
def test_hostile_names_and_paths_are_quoted(tmp_path: Path) -> None:
    plan = chained_plan(name=HOSTILE, cluster__account="acct; rm -rf ~")
    workdir = tmp_path / HOSTILE
    run_dir = workdir / f"runs {HOSTILE}"
    options = EmitOptions(run_dir, workdir, str(tmp_path / "my venv" / "bin" / "python"))
    workdir.mkdir()
    run = emit(plan, options)
    for script in run.scripts:
        text = script.read_text()
        subprocess.run(["bash", "-n", str(script)], check=True)
        # sbatch reads #SBATCH values as the shell reads words (checked on Slurm 22.05 in
        # tests/test_chain_slurm.py): each line must come back as exactly one option.
        header = [line.removeprefix("#SBATCH ") for line in text.splitlines() if "#SBATCH" in line]
        parsed = [shlex.split(line) for line in header if line.startswith("--")]
        assert all(len(words) == 1 for words in parsed), parsed
        values = dict(word[2:].partition("=")[::2] for (word,) in parsed)
        assert values["job-name"] == f"plan-job-{HOSTILE}"
        assert values["account"] == "acct; rm -rf ~"
        assert values["output"].startswith(str(run_dir / "logs"))
        launch = next(line for line in text.splitlines() if line.startswith("srun "))
        assert shlex.split(launch.removesuffix(" &")) == [
            "srun",
            "--kill-on-bad-exit=1",
            options.python,
            "-m",
            "jobs.train",
            str(run.train_config_path),
        ]
    assert not list(tmp_path.rglob("pwned*"))


def test_options_follow_the_plan() -> None:
    plan = chained_plan(cluster__mem="64G", cluster__qos="high")
    options = dict(sbatch_options(plan, plan.segments[-1], Path("/r")))
    assert options["time"] == "00:13:00"
    assert options["time-min"] <= options["time"]
    assert options["signal"] == "B:USR2@72"
    assert options["gres"] == "gpu:4"
    assert options["ntasks-per-node"] == "4"  # one process per GPU
    assert (options["mem"], options["qos"], options["partition"]) == ("64G", "high", "gpu")
    assert "requeue" in options and options["requeue"] is None


def test_constraint_and_reservation_reach_sbatch_lines_and_submitit_alike(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Both ways of asking Slurm for a job read planner.slurm.options: the calibration's
    submitit executor gets the same cluster settings as the run's #SBATCH lines."""
    settings = {"constraint": "a100&ib", "reservation": "big-run", "account": "ml", "qos": "hi"}
    changes = {f"cluster__{key}": value for key, value in settings.items()}
    plan = chained_plan(**changes)
    lines = dict(sbatch_options(plan, plan.segments[0], Path("/r")))
    assert {key: lines[key] for key in settings} == settings
    keys = [key for key, _ in sbatch_options(plan, plan.segments[0], Path("/r"))]
    assert keys[:6] == ["partition", "account", "qos", "constraint", "reservation", "nodes"]
    text = render(plan, plan.segments[0], EmitOptions(Path("/r"), Path("/w")), Path("/r"))
    assert "#SBATCH --constraint='a100&ib'\n" in text
    assert "#SBATCH --reservation=big-run\n" in text

    fake = tmp_path / "bin"  # submitit's Slurm executor wants an srun on PATH; never run
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    calibration = spec_with(calibration__executor="slurm", **changes)
    executor = make_executor(calibration, tmp_path / "cal", "cal")
    params = executor.parameters
    assert (params["constraint"], params["account"], params["qos"]) == ("a100&ib", "ml", "hi")
    assert params["additional_parameters"] == {"reservation": "big-run"}
    # submitit writes them into its own #SBATCH lines, quoted as ours are.
    from submitit.slurm.slurm import _make_sbatch_string

    script = _make_sbatch_string(command="true", folder=tmp_path / "cal", **params)
    assert "#SBATCH --constraint='a100&ib'" in script.splitlines()
    assert "#SBATCH --reservation=big-run" in script.splitlines()


def test_emit_writes_a_whole_folder_and_refuses_to_overwrite(tmp_path: Path) -> None:
    plan = chained_plan()
    out = tmp_path / "run"
    run = emit(plan, EmitOptions(out, tmp_path))
    assert [p.name for p in run.scripts] == [f"segment-{i:02d}.sbatch" for i in range(1, 6)]
    assert (out / "logs").is_dir() and run.plan_path.is_file()
    assert all(os.access(p, os.X_OK) for p in run.scripts)
    with pytest.raises(RunFolderExistsError, match="--force"):
        emit(plan, EmitOptions(out, tmp_path))
    shorter = plan_for(spec_with(plan__max_nodes=1), partition(None))
    emit(shorter, EmitOptions(out, tmp_path, force=True))
    assert [p.name for p in out.glob("*.sbatch")] == ["segment-01.sbatch"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging folder left behind


def test_a_bad_template_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "mine.j2"
    bad.write_text("{% extends 'segment.sbatch.j2' %}{% block command %}{{ nope }")
    with pytest.raises(SpecError, match="--template"):
        emit(chained_plan(), EmitOptions(tmp_path / "run", tmp_path, template=bad))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.j2"]


def test_a_user_template_overrides_one_slot(tmp_path: Path) -> None:
    mine = tmp_path / "mine.j2"
    mine.write_text(
        "{% extends 'segment.sbatch.j2' %}{% block prologue %}module load cuda/12.4\n"
        "{{ super() }}{% endblock %}"
    )
    run = emit(chained_plan(), EmitOptions(tmp_path / "run", tmp_path, template=mine))
    text = run.scripts[0].read_text()
    assert "\nmodule load cuda/12.4\nset -uo pipefail\n" in text
    assert "#SBATCH --signal=B:USR2@72" in text and "srun --kill-on-bad-exit=1" in text


def test_submit_dry_run_prints_the_chain(tmp_path: Path) -> None:
    emit(chained_plan(), EmitOptions(tmp_path / "run", tmp_path))
    commands = planned_commands(tmp_path / "run")
    assert commands[0] == ["sbatch", "--parsable", str(tmp_path / "run" / "segment-01.sbatch")]
    assert commands[1][2] == "--dependency=afterany:<job id of segment 1>"
    proc = invoke(["submit", "run", "--dry-run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("sbatch --parsable") == 5
    with pytest.raises(NotARunFolderError):
        planned_commands(tmp_path)
    proc = invoke(["submit", str(tmp_path)], cwd=tmp_path)
    assert proc.returncode == 2
    assert "no segment-*.sbatch here" in proc.stderr


# -- the checkpoint interval, stored once -----------------------------------------------------

OLD_PLAN = Path(__file__).parent / "fixtures" / "plan_yaml" / "plan-v1.yaml"


def test_the_plan_stores_its_checkpoint_interval_once(tmp_path: Path) -> None:
    plan = chained_plan()
    run = emit(plan, EmitOptions(tmp_path / "run", tmp_path))
    written = yaml.safe_load(run.plan_path.read_text())
    assert "checkpoint_interval_steps" not in written and "checkpoint_interval_s" not in written
    assert written["checkpoint"]["interval_steps"] == plan.checkpoint_interval_steps == 100
    folder = run.folder
    facts = plan_facts(folder)
    assert facts is not None and facts.checkpoint_interval_steps == 100
    assert load_plan(folder).checkpoint_interval_steps == 100
    # The run folder's owner reads train.json's first (what the jobs save at), then plan.yaml's.
    train = read_train_json(folder)
    assert checkpoint_interval(train, facts) == 100
    assert checkpoint_interval({**train, "checkpoint_interval_steps": 40}, facts) == 40
    assert checkpoint_interval({}, facts) == 100
    assert checkpoint_interval({"checkpoint_interval_steps": float("nan")}, None) is None


def test_a_plan_yaml_written_before_the_interval_was_stored_once_still_reads(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "old-run"
    folder.mkdir()
    old = yaml.safe_load(OLD_PLAN.read_text())
    assert old["checkpoint_interval_steps"] == old["checkpoint"]["interval_steps"] == 100
    (folder / "plan.yaml").write_text(OLD_PLAN.read_text())
    plan = load_plan(folder)
    assert (plan.checkpoint_interval_steps, plan.checkpoint_interval_s) == (100, 106.0)
    assert plan.to_dict() == chained_plan().to_dict()
    facts = plan_facts(folder)
    assert facts is not None and facts.checkpoint_interval_steps == 100
    # One older still, with the interval only at the top level, reads it there.
    del old["checkpoint"]["interval_steps"]
    assert PlanFacts.from_plan_dict(old).checkpoint_interval_steps == 100
