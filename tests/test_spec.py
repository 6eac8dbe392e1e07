"""Every field of the run spec is validated; errors name the field, the value, what is allowed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from planner.errors import SpecError, UnknownKeysError
from planner.spec.load import apply_override, load_spec, parse_spec
from tests.paths import REPO

EXAMPLES = REPO / "examples"

BASE: dict[str, Any] = {
    "name": "t",
    "workload": {"name": "jit", "preset": "tiny"},
    "data": {"samples": 1000, "epochs": 1},
    "batch": {"global_batch": 32, "micro_batch": 8},
    "precision": "fp32",
    "cluster": {
        "partition": "gpu",
        "nodes": 1,
        "gpus_per_node": 2,
        "cpus_per_task": 2,
        "mem": "4G",
    },
    "checkpoint": {"dir": "ck", "keep": 2},
    "calibration": {"executor": "local", "device": "cpu"},
}


def with_value(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    node = doc
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return doc


def without(path: str) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    node = doc
    *parents, last = path.split(".")
    for part in parents:
        node = node[part]
    del node[last]
    return doc


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.yaml")))
def test_examples_are_valid(name: str) -> None:
    spec = load_spec(EXAMPLES / f"{name}.yaml")
    assert spec.name == name
    assert spec.batch.global_batch == (
        spec.batch.micro_batch * spec.batch.grad_accum * spec.cluster.gpus
    )


def test_seed_case_reads_as_the_seed_says() -> None:
    spec = load_spec(EXAMPLES / "jit-b4-1t.yaml")
    assert (spec.workload.name, spec.workload.preset) == ("jit", "B/4")
    assert spec.data.tokens == 10**12
    assert spec.cluster.gpus == 8
    assert (spec.batch.global_batch, spec.batch.micro_batch, spec.batch.grad_accum) == (512, 64, 1)
    assert spec.precision == "bf16"


BAD_FIELDS = [
    ("name", "", "non-empty string"),
    ("workload.name", "resnet", "allowed: gpt, jit"),
    ("workload.preset", "L/2", "allowed: "),
    ("workload.overrides", {"depthh": 3}, "unknown jit setting"),
    ("workload.overrides", {"depth": "three"}, "expected int"),
    ("workload.overrides", {"embed_dim": 65}, "num_heads"),
    ("workload.function", "not a path", "package.module:function"),
    ("data.samples", -5, "must be >= 1"),
    ("data.samples", "lots", "whole number"),
    ("data.epochs", 0, "must be > 0"),
    ("batch.micro_batch", 0, "must be >= 1"),
    ("batch.micro_batch", 2.5, "whole number"),
    ("batch.global_batch", 36, "multiple of micro_batch x GPUs = 8 x 2 = 16"),
    ("batch.grad_accum", 3, "global_batch / (micro_batch x GPUs) = 32 / 16 = 2"),
    ("precision", "fp8", "allowed: fp32, bf16, fp16"),
    ("cluster.nodes", 0, "must be >= 1"),
    ("cluster.gpus_per_node", -1, "must be >= 0"),
    ("cluster.cpus_per_task", True, "whole number"),
    ("cluster.mem", "lots", "Slurm memory size"),
    ("cluster.partition", 7, "non-empty string"),
    ("cluster.constraint", "a100; echo pwned", "--constraint syntax"),
    ("cluster.constraint", "a100 & ib", "no spaces"),
    ("cluster.constraint", 100, "--constraint syntax"),
    ("cluster.reservation", "maint week", "reservation name"),
    ("cluster.reservation", "res,", "reservation name"),
    ("checkpoint.interval_steps", 0, "must be >= 1"),
    ("checkpoint.keep", 0, "must be >= 1"),
    ("calibration.executor", "kubernetes", "allowed: local, slurm"),
    ("calibration.device", "tpu", "allowed: auto, cpu, cuda"),
    ("calibration.min_steps", 1, "must be >= 3"),
    ("calibration.max_steps", 5, "must be >= calibration.min_steps"),
    ("calibration.max_seconds", 0, "must be > 0"),
    ("calibration.target_ci", 1.5, "must be <= 1"),
    ("calibration.target_ci", "nan", "finite number"),
    ("calibration.time_limit_minutes", 0, "must be >= 1"),
    ("calibration.pending_timeout_s", -1, "must be > 0"),
    ("calibration.peak_tflops", 0, "must be > 0"),
    ("calibration.seed", -1, "must be >= 0"),
    ("cluster", ["gpu"], "expected a mapping"),
]


@pytest.mark.parametrize(
    ("field", "value", "allowed"), BAD_FIELDS, ids=[f"{f}={v!r}" for f, v, _ in BAD_FIELDS]
)
def test_bad_field_names_field_value_and_allowed(field: str, value: Any, allowed: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(with_value(field, value), source="run.yaml")
    message = str(info.value)
    assert info.value.field.startswith(field), message
    assert allowed in message, message
    assert message.startswith("run.yaml: "), message


@pytest.mark.parametrize("field", ["workload.name", "data.samples", "batch.micro_batch"])
def test_required_fields(field: str) -> None:
    with pytest.raises(SpecError, match=r"required|exactly one"):
        parse_spec(without(field))


@pytest.mark.parametrize(
    "section", ["", "workload", "data", "batch", "cluster", "checkpoint", "calibration"]
)
def test_unknown_keys_are_rejected_with_the_valid_ones(section: str) -> None:
    doc = copy.deepcopy(BASE)
    (doc[section] if section else doc)["micro_bacth"] = 4
    with pytest.raises(UnknownKeysError) as info:
        parse_spec(doc)
    assert "micro_bacth" in str(info.value)
    assert "valid keys here are" in str(info.value)


def test_samples_and_tokens_are_exclusive() -> None:
    with pytest.raises(SpecError, match=r"exactly one of data\.samples or data\.tokens"):
        parse_spec(with_value("data.tokens", 10))


def test_grad_accum_is_derived_and_checked() -> None:
    assert parse_spec(BASE).batch.grad_accum == 2
    spec = parse_spec(with_value("batch.grad_accum", 2))
    assert spec.batch.global_batch == 32


def test_sizes_written_the_way_people_write_them() -> None:
    doc = with_value("data", {"tokens": "1e12"})
    assert parse_spec(doc).data.tokens == 10**12
    doc = yaml.safe_load("data: {tokens: 1_000_000}")
    assert parse_spec({**BASE, **doc}).data.tokens == 10**6


def test_user_function_workload() -> None:
    doc = with_value("workload", {"function": "mypkg.train:make", "overrides": {"lr": 1}})
    spec = parse_spec(doc)
    assert spec.workload.builder_path == "mypkg.train:make"
    assert spec.workload.name == "custom"


def test_overrides_set_any_field_and_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(BASE))
    spec = load_spec(path, ["batch.micro_batch=4", "calibration.device=auto"])
    assert spec.batch.micro_batch == 4 and spec.batch.grad_accum == 4
    with pytest.raises(SpecError, match=r"calibration\.max_seconds"):
        load_spec(path, ["calibration.max_seconds=-3"])
    with pytest.raises(SpecError, match=r"KEY\.PATH=VALUE"):
        load_spec(path, ["batch.micro_batch"])
    with pytest.raises(UnknownKeysError, match=r"batch\.micro"):
        load_spec(path, ["batch.micro=4"])


def test_override_into_a_scalar_is_refused() -> None:
    with pytest.raises(SpecError, match="not a mapping"):
        apply_override({"precision": "fp32"}, "precision.x=1")


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("workload: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(scalar)


def test_fingerprint_follows_what_decides_step_time() -> None:
    a = parse_spec(BASE)
    assert a.step_fingerprint() == parse_spec(with_value("data.samples", 5)).step_fingerprint()
    assert a.step_fingerprint() != parse_spec(with_value("precision", "bf16")).step_fingerprint()
    other = with_value("batch", {"global_batch": 32, "micro_batch": 16})
    assert a.step_fingerprint() != parse_spec(other).step_fingerprint()


def test_plan_section_defaults() -> None:
    plan = parse_spec(BASE).plan
    assert plan.deadline_hours is None and plan.max_nodes is None
    assert plan.efficiency_floor == 0.8
    assert (plan.choose_by, plan.queue_history_days) == (None, 14)
    assert (plan.interconnect_gbps, plan.intranode_gbps) == (100.0, 300.0)
    assert plan.interruptions_per_gpu_day == 4.7e-4
    assert plan.run_to_run_spread == 0.02
    assert plan.eval_interval_steps is None and plan.eval_s is None
    assert plan.eval_batches == 10
    doc = with_value("plan", {"deadline_hours": 36, "max_nodes": 4, "gpu_hour_cost": "2.5"})
    plan = parse_spec(doc).plan
    assert (plan.deadline_hours, plan.max_nodes, plan.gpu_hour_cost) == (36.0, 4, 2.5)


def test_plan_section_round_trips_through_to_dict() -> None:
    doc = with_value("plan", {"mtbf_hours": 12, "eval_interval_steps": 500, "eval_s": 30})
    spec = parse_spec(doc)
    assert parse_spec(spec.to_dict()) == spec


PLAN_BAD_FIELDS = [
    ("plan.deadline_hours", 0, "must be > 0"),
    ("plan.efficiency_floor", 1.5, "must be <= 1"),
    ("plan.efficiency_floor", 0, "must be > 0"),
    ("plan.max_nodes", 0, "must be >= 1"),
    ("plan.interconnect_gbps", -1, "must be >= 0.01"),
    ("plan.intranode_gbps", "fast", "finite number"),
    ("plan.allreduce_latency_s", -0.1, "must be >= 0"),
    ("plan.mtbf_hours", 0, "must be >= 0.1"),
    ("plan.interruptions_per_gpu_day", 0, "must be > 0"),
    ("plan.run_to_run_spread", 2, "must be <= 1"),
    ("plan.gpu_hour_cost", -1, "must be >= 0"),
    ("plan.eval_interval_steps", 0, "must be >= 1"),
    ("plan.eval_s", -1, "must be >= 0"),
    ("plan.eval_batches", 0, "must be >= 1"),
    ("plan.eval_batches", 2.5, "whole number"),
    ("plan.choose_by", "fastest", "allowed: finish, run"),
    ("plan.queue_history_days", 0, "must be >= 1"),
    ("plan.queue_history_days", 400, "must be at most 365 (a year)"),
    ("plan.queue_history_days", 1.5, "whole number"),
    ("plan", [1], "expected a mapping"),
]


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    PLAN_BAD_FIELDS,
    ids=[f"{f}={v!r}" for f, v, _ in PLAN_BAD_FIELDS],
)
def test_bad_plan_field(field: str, value: Any, allowed: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(with_value(field, value), source="run.yaml")
    assert info.value.field.startswith(field), str(info.value)
    assert allowed in str(info.value)


def test_plan_eval_settings() -> None:
    plan = parse_spec(with_value("plan", {"eval_interval_steps": 100})).plan
    # The time of an evaluation comes from the calibration unless plan.eval_s overrides it.
    assert (plan.eval_interval_steps, plan.eval_batches, plan.eval_s) == (100, 10, None)
    doc = with_value("plan", {"eval_interval_steps": 100, "eval_batches": 4, "eval_s": 2})
    plan = parse_spec(doc).plan
    assert (plan.eval_interval_steps, plan.eval_batches, plan.eval_s) == (100, 4, 2.0)
    with pytest.raises(SpecError, match=r"plan\.eval_interval_steps for how often") as info:
        parse_spec(with_value("plan", {"eval_s": 30}))
    assert info.value.field == "plan.eval_s"


def test_plan_section_rejects_unknown_keys() -> None:
    with pytest.raises(UnknownKeysError, match=r"plan\.deadline\b.*valid keys here are"):
        parse_spec(with_value("plan", {"deadline": 24}))
