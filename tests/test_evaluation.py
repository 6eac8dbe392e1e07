"""Evaluation, end to end: the workloads' held-out loss, its timing in the calibration, the
plan's eval term, the training's eval events, and that none of it changes the run. CPU, tiny.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import torch
import yaml

from jobs import train
from jobs.calibration import builtin as harness
from jobs.contract.failure import NodeError
from jobs.contract.measurement import CalibrationRequest
from jobs.contract.work import Work
from jobs.node import runtime
from jobs.progress import ProgressWriter
from jobs.workloads.base import WorkloadConfig
from planner.calibration.record import load_record, save_record
from planner.runs.emit import train_config
from tests.builders import plan_for, record_for, spec_with
from tests.fixtures.user_workloads import linear_regression
from tests.training_runs import (
    build_workload,
    events,
    final_model,
    losses,
    run_in_process,
    train_json,
)

BUILT_IN = ("jit", "gpt")


@pytest.mark.parametrize("name", BUILT_IN)
def test_held_out_batches_are_fixed_per_index(name: str) -> None:
    workload = build_workload(name, micro_batch=3)
    assert workload.eval_batch is not None
    first, again, other = (workload.eval_batch(i) for i in (0, 0, 1))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    assert first[0].shape[0] == 3  # one micro-batch


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILT_IN)
def test_evaluating_changes_neither_weights_nor_the_training_streams(name: str) -> None:
    plain, evaluated = build_workload(name), build_workload(name)
    expected = losses(plain, 2) + losses(plain, 2)
    got = losses(evaluated, 2)
    weights = {k: v.clone() for k, v in evaluated.model.state_dict().items()}
    seconds, loss = runtime.evaluate(evaluated, 3, lambda: None)
    assert seconds > 0 and loss > 0 and evaluated.model.training
    assert all(p.grad is None for p in evaluated.model.parameters())
    assert all(torch.equal(weights[k], v) for k, v in evaluated.model.state_dict().items())
    assert got + losses(evaluated, 2) == expected
    assert runtime.evaluate(evaluated, 3, lambda: None)[1] != loss  # the weights moved


def test_a_workload_offers_evaluation_whole_or_not_at_all() -> None:
    workload = linear_regression(WorkloadConfig("default", {}, 2, 1, "fp32", "cpu", 0))
    assert not workload.can_evaluate
    with pytest.raises(NodeError, match="has no eval_step/eval_batch"):
        runtime.evaluate(workload, 2, lambda: None)
    with pytest.raises(ValueError, match="go together"):
        dataclasses.replace(workload, eval_step=lambda batch: 0.0)


# --- calibration and record ----------------------------------------------------------------


def request(tmp_path: Path, eval_batches: int) -> CalibrationRequest:
    return CalibrationRequest(
        work=Work(
            builder_path="jobs.workloads.jit:build",
            workload_name="jit",
            preset="tiny",
            overrides={},
            micro_batch=2,
            grad_accum=1,
            precision="fp32",
            device="cpu",
            seed=0,
        ),
        min_steps=3,
        max_steps=8,
        max_seconds=2.0,
        target_ci=0.5,
        scratch_dir=str(tmp_path / "probe"),
        eval_batches=eval_batches,
    )


@pytest.mark.slow
def test_calibration_times_one_evaluation_when_asked(tmp_path: Path) -> None:
    m = harness.calibrate(request(tmp_path, eval_batches=3))
    assert m.eval_batches == 3
    # Three forward passes of one micro-batch: more than nothing, less than the steps.
    assert 0 < m.eval_s < 3 * max(m.step_times_s)
    none = harness.calibrate(request(tmp_path, eval_batches=0))
    assert (none.eval_s, none.eval_batches) == (0.0, 0)


def test_records_without_evaluation_still_load(tmp_path: Path) -> None:
    spec = spec_with()
    path = tmp_path / "cal.yaml"
    save_record(record_for(spec, eval_s=1.5, eval_batches=10), path)
    assert load_record(path).measurement.eval_s == 1.5
    raw = yaml.safe_load(path.read_text())
    del raw["measurement"]["eval_s"], raw["measurement"]["eval_batches"]
    path.write_text(yaml.safe_dump(raw))
    m = load_record(path).measurement
    assert (m.eval_s, m.eval_batches) == (0.0, 0)


def test_emitted_train_config_carries_the_eval_settings(tmp_path: Path) -> None:
    spec = spec_with(plan__max_nodes=1, plan__eval_interval_steps=250, plan__eval_batches=4)
    plan = plan_for(spec, record=record_for(spec, eval_s=1.0, eval_batches=2))
    config = train_config(plan, tmp_path, tmp_path)
    assert (config.eval_interval_steps, config.eval_batches) == (250, 4)
    plain = train_config(plan_for(spec_with(plan__max_nodes=1)), tmp_path, tmp_path)
    assert plain.eval_interval_steps == 0


# --- training -------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_evaluates_on_schedule_and_trains_the_same_run(tmp_path: Path) -> None:
    reference = train_json(tmp_path / "reference", "gpt")
    assert run_in_process(reference) == train.EXIT_OK
    folder = tmp_path / "evaluated"
    config = train_json(folder, "gpt", eval_interval_steps=4, eval_batches=2)
    assert run_in_process(config) == train.EXIT_OK
    evals = events(folder, "eval")
    assert [e["step"] for e in evals] == [4, 8, 12]
    assert all(e["eval_s"] > 0 and e["loss"] > 0 for e in evals)
    # Each evaluation comes after its step's line and before that step's checkpoint.
    kinds = [(e["event"], e.get("step")) for e in events(folder)]
    assert kinds.index(("step", 4)) < kinds.index(("eval", 4)) < kinds.index(("step", 5))
    assert kinds.index(("eval", 12)) < kinds.index(("checkpoint", 12))
    assert_same_weights(folder, tmp_path / "reference")


@pytest.mark.slow
def test_time_limit_leaves_room_for_the_evaluation_due(tmp_path: Path) -> None:
    reference = train_json(tmp_path / "reference", "jit")
    assert run_in_process(reference) == train.EXIT_OK
    folder = tmp_path / "run"
    config = train_json(folder, "jit", slow="slow", eval_interval_steps=5, eval_batches=2)
    # An earlier job of the run timed an evaluation at 30 s: the step before an evaluation
    # may only start when the step, the evaluation and a save fit before the stop time.
    with ProgressWriter(folder / "progress.jsonl") as progress:
        progress.eval(0, 30.0, 1.0)
    assert run_in_process(config, stop_at=time.time() + 5) == train.EXIT_OK
    stop = events(folder, "stop")[-1]
    assert stop == {**stop, "step": 4, "reason": "time_limit"}, events(folder)
    assert run_in_process(config) == train.EXIT_OK  # resumes, evaluates at 5 and 10
    assert [e["step"] for e in events(folder, "eval")] == [0, 5, 10]
    assert_same_weights(folder, tmp_path / "reference")


def assert_same_weights(folder: Path, reference: Path) -> None:
    model, expected = final_model(folder), final_model(reference)
    assert all(torch.equal(model[key], expected[key]) for key in expected)
    losses_by_step = {e["step"]: e["loss"] for e in events(folder, "step")}
    assert losses_by_step == {e["step"]: e["loss"] for e in events(reference, "step")}


def test_training_asked_to_evaluate_a_workload_without_evaluation_fails(tmp_path: Path) -> None:
    builder = "tests.fixtures.user_workloads:linear_regression"
    config = train_json(tmp_path, builder_path=builder, eval_interval_steps=3)
    with pytest.raises(NodeError, match="no eval_step/eval_batch"):
        run_in_process(config)
