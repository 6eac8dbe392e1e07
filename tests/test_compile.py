"""workload.compile: the spec field, torch.compile in the calibration and the training alike,
the compile term of the plan against what compiling saves. CPU, tiny presets (inductor builds
its C++ kernels with this machine's g++)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from jobs import train
from jobs.calibration import builtin as harness
from jobs.contract.failure import NodeError
from jobs.contract.measurement import CalibrationRequest
from jobs.contract.train_config import TrainConfig
from jobs.node.compiling import missing_compiler
from planner.calibration.record import make_record
from planner.calibration.report import calibration_table
from planner.errors import CalibrationMismatchError, SpecError
from planner.eta.steps import SteadyStepTime, resume_time
from planner.followup.pace import JobTiming, _resume
from planner.history.database import predicted_job_s
from planner.model.report import plan_table
from planner.runs.progress import History
from planner.runs.run_folder import read_plan_facts
from planner.spec.load import parse_spec
from tests.builders import SPEC, partition, plan_for, record_for, spec_with
from tests.paths import REPO
from tests.tiny_requests import tiny_request_fields
from tests.training_runs import command, env, events, run_in_process, train_json

EAGER: dict[str, Any] = {"name": "jit", "preset": "tiny"}
COMPILED: dict[str, Any] = {**EAGER, "compile": True}


# --- the spec and the files it reaches -------------------------------------------------------


def test_compile_is_a_checked_boolean_in_the_step_fingerprint() -> None:
    eager = spec_with(plan__max_nodes=1)
    # The fingerprint of this spec as every version before workload.compile computed it:
    # records calibrated then still match.
    assert (
        eager.step_fingerprint()
        == spec_with(workload={**EAGER, "compile": False}).step_fingerprint()
    )
    assert "compile" not in eager.to_dict()["workload"]
    compiled = spec_with(workload=COMPILED)
    assert compiled.workload.compile and compiled.to_dict()["workload"]["compile"] is True
    assert compiled.step_fingerprint() != eager.step_fingerprint()
    with pytest.raises(SpecError, match=r"workload.compile: got 'yes'; expected true or false"):
        parse_spec({**SPEC, "workload": {**EAGER, "compile": "yes"}})


def test_a_plan_for_a_compiled_run_needs_a_compiled_calibration() -> None:
    compiled = spec_with(plan__max_nodes=1, workload=COMPILED)
    eager_record = record_for(spec_with(plan__max_nodes=1))
    with pytest.raises(
        CalibrationMismatchError, match=r"workload\.compile: spec True, calibration False"
    ):
        plan_for(compiled, record=eager_record)


def test_train_config_carries_compile(tmp_path: Path) -> None:
    config = TrainConfig.from_json(train_json(tmp_path, compile=True).read_text())
    assert config.work.compile is True
    assert TrainConfig.from_json(train_json(tmp_path).read_text()).work.compile is False
    text = train_json(tmp_path).read_text().replace('"compile": false', '"compile": "yes"')
    with pytest.raises(ValueError, match="field 'compile'"):
        TrainConfig.from_json(text)


# --- the plan --------------------------------------------------------------------------------


def test_every_job_pays_the_compile_and_the_plan_shows_what_it_saves() -> None:
    spec = spec_with(plan__max_nodes=1, workload=COMPILED, checkpoint={"interval_steps": 100})
    record = record_for(spec, compile_s=30.0, eager_step_s=1.5, eager_steps=20)
    one_job = plan_for(spec, record=record)
    # 3907 steps of 1.06 s (1.0 s compiled + the 4 GPUs' all-reduce) in one job: one compile.
    assert one_job.wall.compile_s == 30.0 and one_job.compile_s == 30.0
    # Eager, each step's compute was 0.5 s longer (8 micro-batches of 1/16 s): 3907 x 1.56 s.
    assert one_job.eager_steps_s == pytest.approx(3907 * 1.56)
    assert one_job.wall.steps_s == pytest.approx(3907 * 1.06)
    # It saves 3907 x 0.5 = 1953.5 s = 32 min 34 s for one compile of 30 s.
    assert "30 s per job start x 1 job(s) = 30 s" in plan_table(one_job, width=300)
    assert "saves 32 min 34 s, net 32 min 04 s faster" in plan_table(one_job, width=300)

    chain = plan_for(spec, partition(1800), record=record)
    jobs = len(chain.segments)
    assert jobs > 1
    assert chain.wall.compile_s == pytest.approx(jobs * 30.0)
    # A later job: start-up 100 + load 30 + warm-up 20 + compile 30; the resumes term leaves
    # the compile to the compile term.
    assert chain.resume_s == 180.0
    assert chain.wall.resumes_s == pytest.approx((jobs - 1) * 150.0)
    # The first job compiles too: the history's prediction for it has the 30 s.
    eager_chain = plan_for(
        spec_with(plan__max_nodes=1, checkpoint={"interval_steps": 100}),
        partition(1800),
        record=record_for(spec_with(plan__max_nodes=1)),
    )
    assert predicted_job_s(chain, 0, 100) == pytest.approx(
        predicted_job_s(eager_chain, 0, 100) + 30
    )


def test_without_an_eager_step_the_saving_is_unknown() -> None:
    spec = spec_with(plan__max_nodes=1, workload=COMPILED)
    plan = plan_for(spec, record=record_for(spec, compile_s=30.0))
    assert plan.eager_steps_s == 0.0
    assert "the saving is unknown (the calibration timed no eager step)" in plan_table(
        plan, width=300
    )


# --- the node ---------------------------------------------------------------------------------


def _request(tmp_path: Path, **changes: Any) -> CalibrationRequest:
    fields = tiny_request_fields(tmp_path / "probe", compile=True, **changes)
    return CalibrationRequest.from_flat(fields)


def test_no_compiler_is_a_clear_error_before_any_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no g++, c++ or clang++
    monkeypatch.delenv("CXX", raising=False)
    assert "workload.compile is true but torch.compile on CPU needs a C++ compiler" in (
        missing_compiler("cpu")
    )
    with pytest.raises(NodeError, match=r"set workload\.compile: false") as failed:
        harness.calibrate(_request(tmp_path))
    assert failed.value.kind == "compile"


@pytest.mark.slow
def test_a_compiler_that_fails_names_workload_compile(tmp_path: Path) -> None:
    config = train_json(tmp_path, "jit", compile=True, total_steps=3)
    # /bin/false is there but builds nothing; a fresh inductor cache holds no kernel of it.
    proc = subprocess.run(
        command(config),
        cwd=REPO,
        env=env(CXX="/bin/false", TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == train.EXIT_FAILED
    assert "plan-job train: compile: workload.compile is true and torch.compile failed" in (
        proc.stderr
    )


@pytest.mark.slow
def test_calibration_times_the_eager_step_and_the_compile(tmp_path: Path) -> None:
    m = harness.calibrate(_request(tmp_path, eval_batches=2))
    # Eager steps first (at least 3 in the 2 s they get), then the compiled ones, whose first
    # step compiled: on this CPU seconds, against milliseconds a step.
    assert m.eager_steps >= 3 and m.eager_step_s > 0
    assert m.compile_s > 20 * m.step_mean_s
    assert m.steps_run >= 10
    spec = parse_spec({**SPEC, "workload": COMPILED})
    record = make_record(spec, m, record_for(spec).job)
    assert "torch.compile" in calibration_table(record)
    assert f"median of {m.eager_steps} before compiling" in " ".join(
        calibration_table(record).split()
    )


@pytest.mark.slow
def test_a_compiled_run_resumes_eagerly_and_the_other_way(tmp_path: Path) -> None:
    # nn.Module.compile keeps the state dict's keys: the checkpoints of a compiled job load in
    # an eager one (and back), so compile can be turned on or off between a run's jobs.
    compiled = train_json(tmp_path, "jit", compile=True, total_steps=6, checkpoint_interval_steps=3)
    assert run_in_process(compiled) == train.EXIT_OK
    eager = train_json(tmp_path, "jit", total_steps=12, checkpoint_interval_steps=3)
    assert run_in_process(eager) == train.EXIT_OK
    resume = events(tmp_path, "resume")
    assert [e["step"] for e in resume] == [6]
    assert events(tmp_path, "stop")[-1]["reason"] == "done"
    state = torch.load(tmp_path / "ck" / "ckpt-000000012.pt", weights_only=False)
    assert not any(key.startswith("_orig_mod") for key in state["model"])
    assert os.path.exists(tmp_path / "progress.jsonl")


def test_the_eta_lets_a_resumed_jobs_warm_up_replace_the_planned_compile(tmp_path: Path) -> None:
    spec = spec_with(plan__max_nodes=1, workload=COMPILED, checkpoint={"interval_steps": 100})
    plan = plan_for(spec, partition(1800), record=record_for(spec, compile_s=30.0))
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan.to_dict()))
    facts = read_plan_facts(path)
    assert facts is not None and facts.compile_s == 30.0 and facts.resume_s == 180.0
    # A compiled run's resumed jobs showed 35 s of warm-up (their first step compiles): it
    # replaces the plan's warm-up (20 s) and compile (30 s): 180 - 20 - 30 + 35 = 165 s.
    step = SteadyStepTime(1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 100, (5,), 35.0, False)
    history = History("progress", tmp_path / "progress.jsonl", 3907, (), "step_s", False, 100)
    assert resume_time(history, facts, step) == pytest.approx(165.0)


def test_resubmit_charges_the_compile_when_only_the_first_job_was_seen() -> None:
    spec = spec_with(plan__max_nodes=1, workload=COMPILED, checkpoint={"interval_steps": 100})
    plan = plan_for(spec, partition(1800), record=record_for(spec, compile_s=30.0))
    # The first job began stepping 12 s after Slurm started it and a load took 4 s (another
    # run's): a resumed job costs 12 + 4 + the plan's warm-up 20 s + its compile 30 s = 66 s.
    first = JobTiming("11", False, 1012.0, None)
    loaded = JobTiming("12", False, None, 4.0)
    cost, source = _resume(plan, None, [first, loaded], {"11": 1000.0}, [])
    assert (cost, source) == (pytest.approx(66.0), "run")


@pytest.mark.slow
def test_the_calibration_compiles_cold_whatever_the_nodes_cache_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The user's own cache (here a folder of the test's) is neither read nor filled: the
    # compile the plan charges is the cold one a run's first job pays on a fresh node, and
    # the warm one is timed after it from the calibration's private cache.
    users = tmp_path / "users-cache"
    users.mkdir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(users))
    m = harness.calibrate(_request(tmp_path))
    assert m.compile_cache == "cold"
    assert 0 < m.compile_warm_s < 0.8 * m.compile_s  # measured in the same run
    assert not any(users.iterdir())
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(users)  # put back
    spec = parse_spec({**SPEC, "workload": COMPILED})
    record = make_record(spec, m, record_for(spec).job)
    assert "cold cache (compiled in an empty inductor/Triton cache" in " ".join(
        calibration_table(record).split()
    )
    plan = plan_for(spec_with(plan__max_nodes=1, workload=COMPILED), record=record)
    table = " ".join(plan_table(plan).split())
    assert "(cold: the first job compiles from nothing on a fresh node" in table


@pytest.mark.slow
def test_a_time_limit_during_the_compile_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # submitit's handler of the time-limit signal raises UncompletedJobError in whatever
    # runs; inside torch.compile that is dynamo, which wraps it in its own error. It is the
    # time limit, not a compiler that fails.
    from submitit.core.utils import UncompletedJobError

    from jobs.node import compiling

    def signal_arrives(_graph: Any, _inputs: Any) -> Any:
        raise UncompletedJobError("the time-limit signal (USR2)")

    def compile_model(workload: Any, device: Any, torch_: Any) -> None:
        workload.model.compile(backend=signal_arrives)

    monkeypatch.setattr(compiling, "compile_model", compile_model)
    with pytest.raises(NodeError) as failed:
        harness.calibrate(_request(tmp_path))
    assert failed.value.kind == "time_limit"
    text = str(failed.value)
    assert "reached its time limit while torch.compile compiled the model" in text
    assert "cold compile" in text and "calibration.time_limit_minutes" in text
    assert "workload.compile: false" not in text
