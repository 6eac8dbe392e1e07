"""A user's own training command on the login node: the spec's ``command:``, the calibration
request and the run folder it leads to. The command itself runs in tests/test_command*.py
and, on the real cluster, in tests/test_user_command_slurm.py."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.contract.command_fields import render
from jobs.contract.train_config import TrainConfig
from jobs.progress import ProgressWriter
from planner.calibration.calibrate import build_request
from planner.errors import SpecError
from planner.followup.state import newest_logged_checkpoint
from planner.runs.emit import EmitOptions, emit
from planner.runs.progress_reader import read_summary
from planner.spec.load import load_spec, parse_spec
from planner.spec.run_spec import COMMAND_WORKLOAD, RunSpec
from tests.builders import HOSTILE, SPEC, plan_for, record_for, write_spec
from tests.in_process import invoke

RUN = "python train.py --steps {total_steps} --save-every {checkpoint_interval_steps}"


def command_doc(command: Any = RUN, **changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(SPEC)
    doc.pop("workload")
    doc["command"] = command
    doc.update(changes)
    return doc


def command_spec(command: Any = RUN, **changes: Any) -> RunSpec:
    return parse_spec(command_doc(command, **changes), source="run.yaml")


def test_a_command_line_or_a_mapping() -> None:
    short = command_spec()
    assert short.command is not None and short.workload.name == COMMAND_WORKLOAD
    assert short.command.argv == (
        "python",
        "train.py",
        "--steps",
        "{total_steps}",
        "--save-every",
        "{checkpoint_interval_steps}",
    )
    assert short.command.report == "progress" and short.command.stop_grace_s == 30.0
    full = command_spec({"run": RUN, "report": "progress", "stop_grace_s": 5})
    assert full.command is not None and full.command.stop_grace_s == 5.0
    # Saved (record, plan.yaml) and read back: the same spec, the same fingerprint.
    again = parse_spec(full.to_dict(), source="run.yaml")
    assert again == full and again.step_fingerprint() == full.step_fingerprint()
    other = command_spec(RUN + " --lr 1e-3")
    assert other.step_fingerprint() != short.step_fingerprint()
    # A built-in workload's saved spec has no command key: its fingerprint is unchanged.
    assert "command" not in parse_spec(SPEC).to_dict()


@pytest.mark.parametrize(
    ("command", "field", "says"),
    [
        ("python t.py {totl_steps}", "command.run", "unknown field {totl_steps}; valid: {total"),
        ('python "t.py', "command.run", "No closing quotation"),
        ("python t.py {total_steps:05d}", "command.run", "without a format spec"),
        ({"run": RUN, "report": "stdout"}, "command.report", "allowed: progress, trainer_state"),
        ({"run": RUN, "report": "trainer_state"}, "command.output_dir", "set command.output_dir"),
        (
            {
                "run": "python t.py --save_steps {checkpoint_interval_steps} --output_dir "
                "{output_dir}",
                "report": "trainer_state",
                "output_dir": "o",
            },
            "command.run",
            "{total_steps} passed to --max_steps",
        ),
        ({"run": RUN, "stop_grace": 3}, "command.stop_grace", "unknown"),
        ({"report": "progress"}, "command.run", "required"),
    ],
)
def test_bad_commands_name_the_field(command: Any, field: str, says: str) -> None:
    doc = command_doc(command)
    with pytest.raises(SpecError) as info:
        parse_spec(doc, source="run.yaml")
    assert info.value.field == field and says in str(info.value), str(info.value)


def test_a_workload_and_a_command_do_not_mix() -> None:
    doc = command_doc()
    doc["workload"] = {"name": "jit", "preset": "tiny"}
    with pytest.raises(SpecError, match="give a workload or a command, not both"):
        parse_spec(doc)


def test_cli_command_replaces_the_spec_and_bad_ones_exit_2(tmp_path: Path) -> None:
    path = write_spec(tmp_path, command_doc())
    # Taken as written: a YAML reading would cut at " #" and choke on a leading "{".
    spec = load_spec(path, command="python t.py --tag '#1' {seed}")
    assert spec.command is not None and spec.command.argv == (
        "python",
        "t.py",
        "--tag",
        "#1",
        "{seed}",
    )
    proc = invoke(["calibrate", str(path), "--command", "python t.py {bogus}"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "command.run" in proc.stderr and "unknown field {bogus}" in proc.stderr
    assert not (tmp_path / "calibrations").exists()


def test_the_calibration_request_carries_the_command(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    run = RUN + " --output_dir {output_dir} --max_steps {total_steps}"
    spec = command_spec({"run": run, "report": "trainer_state", "output_dir": "out"})
    request = build_request(spec, tmp_path / "job")
    assert request.work.command == spec.command.argv  # type: ignore[union-attr]
    assert request.work.report == "trainer_state" and request.workdir == str(tmp_path.resolve())
    # The calibration's saves must not land where the run would resume from them.
    assert Path(request.work.output_dir).parent == Path(request.scratch_dir)
    assert request.work.builder_path == ""


def test_emit_writes_the_command_into_train_json(tmp_path: Path) -> None:
    tag = shlex.quote(HOSTILE)
    run = f"python train.py --steps {{total_steps}} --tag {tag} --resume {{resume_from}}"
    spec = command_spec(
        {"run": run, "stop_grace_s": 7},
        checkpoint={"dir": "ck", "interval_steps": 100},
    )
    plan = plan_for(spec, record=record_for(spec))
    workdir = tmp_path / HOSTILE
    emitted = emit(plan, EmitOptions(tmp_path / "run", workdir, "/venv/bin/python"))
    config = TrainConfig.from_json(emitted.train_config_path.read_text())
    assert config.work.command == spec.command.argv  # type: ignore[union-attr]
    assert config.work.stop_grace_s == 7.0 and config.work.builder_path == ""
    assert config.checkpoint_dir == str(workdir.resolve() / "ck")
    assert config.checkpoint_interval_steps == plan.checkpoint_interval_steps == 100
    # Filled in on the node: each value stays one argument, whatever it holds.
    argv = render(config.work.command, {"total_steps": config.total_steps, "resume_from": "a b;c"})
    assert argv == [
        "python",
        "train.py",
        "--steps",
        str(plan.total_steps),
        "--tag",
        HOSTILE,
        "--resume",
        "a b;c",
    ]
    script = emitted.scripts[0].read_text()
    assert "-m jobs.train" in script and str(emitted.train_config_path) in script.replace("'", "")


def test_emit_resolves_the_trainer_output_dir(tmp_path: Path) -> None:
    run = RUN + " --output_dir {output_dir}"
    spec = command_spec({"run": run, "report": "trainer_state", "output_dir": "hf out"})
    emitted = emit(plan_for(spec), EmitOptions(tmp_path / "run", tmp_path, "python"))
    data = json.loads(emitted.train_config_path.read_text())
    assert data["report"] == "trainer_state"
    assert data["output_dir"] == str(tmp_path.resolve() / "hf out")


def test_a_commands_newest_checkpoint_is_its_newest_logged_one_on_disk(tmp_path: Path) -> None:
    progress = tmp_path / "progress.jsonl"
    saved = tmp_path / "mine"
    saved.mkdir()
    with ProgressWriter(progress) as writer:
        writer.start(0, 100, 0)
        for step in (10, 20, 30):
            path = saved / f"step{step}.bin"
            if step != 30:  # the newest line's file is gone
                path.write_bytes(b"x" * step)
            writer.checkpoint(step, 0.1, str(path), step)
    state = newest_logged_checkpoint(read_summary(progress).checkpoint_lines)
    assert (state.step, state.path, state.nbytes, state.logged_step) == (
        20,
        saved / "step20.bin",
        20,
        30,
    )
    assert "step30.bin" in state.note
    (saved / "step10.bin").unlink()
    (saved / "step20.bin").unlink()
    gone = newest_logged_checkpoint(read_summary(progress).checkpoint_lines)
    assert gone.step == 0 and gone.path is None and "from step 0" in gone.note
    assert newest_logged_checkpoint([]).note.startswith("no checkpoint line")


def test_params_unreported_keeps_the_plan_to_the_nodes_asked(tmp_path: Path) -> None:
    spec = command_spec()
    plan = plan_for(spec, record=record_for(spec, params=0))
    assert plan.nodes == 1 and len(plan.options) == 1
    reported = plan_for(spec, record=record_for(spec))
    assert len(reported.options) > 1


def test_history_and_calibration_table_name_the_command(tmp_path: Path) -> None:
    from planner.calibration.report import calibration_table
    from planner.history.database import workload_key

    spec = command_spec()
    assert workload_key(spec) == f"command:{RUN}"
    table = calibration_table(record_for(spec, params=0), "cal.yaml", width=200)  # unwrapped
    assert f"command `{RUN}`" in table and "unreported parameters" in table
    assert yaml.safe_load(yaml.safe_dump(spec.to_dict()))["command"]["run"] == RUN
