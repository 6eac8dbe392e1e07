"""What the tests build from: the reference spec, its calibration record and plan (the arithmetic
of tests/test_planning.py), the tiny specs the CLI tests calibrate, the scaling section of a
multi-node record and history rows."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.contract.measurement import STOP_REASONS, Measurement
from planner.calibration.record import (
    CalibrationRecord,
    JobInfo,
    load_record,
    make_record,
    save_record,
)
from planner.history import database as history
from planner.model.plan import Plan
from planner.model.planning import make_plan
from planner.scaling.fit import (
    ScalingPoint,
    make_section,
)
from planner.slurm.partition import PartitionLimits
from planner.spec.load import parse_spec
from planner.spec.run_spec import RunSpec

SPEC: dict[str, Any] = {
    "name": "plan-test",
    "workload": {"name": "jit", "preset": "tiny"},
    "data": {"samples": 1_000_000},
    "batch": {"global_batch": 256, "micro_batch": 8},
    "precision": "bf16",
    "cluster": {"partition": "gpu", "nodes": 1, "gpus_per_node": 4, "cpus_per_task": 2},
    "plan": {
        "intranode_gbps": 100,
        "interconnect_gbps": 50,
        "allreduce_latency_s": 0.01,
        "mtbf_hours": 24,
        "run_to_run_spread": 0.0,
        "max_nodes": 8,
        # The reference case plans node counts from the network model: its tests are of the
        # model. Without this the plan stays on the calibrated node count (test_safety.py).
        "allow_unmeasured_scaling": True,
    },
}


MEASUREMENT: dict[str, Any] = {
    "host": "n1",
    "device_kind": "cuda",
    "device_name": "NVIDIA H100 80GB HBM3",
    "versions": {"torch": "2.4.0"},
    "params": 1_000_000_000,
    "samples_per_step": 64,
    "tokens_per_sample": 512,
    "token_unit": "sequence positions",
    "flops_per_step": 4e14,  # 400 TFLOP/s at 1.0 s per step
    "startup_s": 100.0,
    "import_s": 10.0,
    "build_s": 50.0,
    "warmup_steps": 5,
    "warmup_extra_s": 20.0,
    "steps_run": 100,
    "steady_steps": 95,
    "step_mean_s": 1.0,
    "step_median_s": 1.0,
    "step_std_s": 0.0,
    "step_ci_half_s": 0.0,
    "step_p90_s": 1.0,
    "data_share": 0.01,
    "stopped_by": "ci_target",
    "target_ci": 0.02,
    "peak_memory_bytes": 10**10,
    "memory_kind": "cuda_max_allocated",
    "checkpoint_save_s": 60.0,
    "checkpoint_load_s": 30.0,
    "checkpoint_bytes": 10**9,
    "loss_first": 7.0,
    "loss_last": 6.0,
}


def spec_with(**changes: Any) -> RunSpec:
    """The reference spec with "section.key" (dots as "__") values replaced."""
    doc = copy.deepcopy(SPEC)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return parse_spec(doc, source="run.yaml")


def record_for(spec: RunSpec, **measured: Any) -> CalibrationRecord:
    job = JobInfo("local", "1", "/tmp/cal", "out", "err", None, 5.0)
    return make_record(spec, Measurement(**{**MEASUREMENT, **measured}), job)


def plan_for(
    spec: RunSpec | None = None,
    partition: PartitionLimits | None = None,
    record: CalibrationRecord | None = None,
    **kwargs: Any,
) -> Plan:
    spec = spec or spec_with()
    return make_plan(spec, record or record_for(spec), partition, "cal.yaml", **kwargs)


def partition(max_time_s: int | None = None, **changes: Any) -> PartitionLimits:
    base = PartitionLimits("gpu", max_time_s, None, None, 16, 4, 64)
    return dataclasses.replace(base, **changes)


TINY_JIT: dict[str, Any] = {
    "name": "tiny",
    "workload": {"name": "jit", "preset": "tiny"},
    "data": {"samples": 10_000},
    "batch": {"micro_batch": 4, "grad_accum": 2},
    "precision": "fp32",
    "cluster": {"gpus_per_node": 0, "cpus_per_task": 1},
    "checkpoint": {"dir": "ck"},
    "calibration": {
        "executor": "local",
        "device": "cpu",
        "max_steps": 3000,
        "max_seconds": 15,
        "target_ci": 0.03,
    },
}


def user_workload(function: str) -> dict[str, Any]:
    spec = copy.deepcopy(TINY_JIT)
    spec["workload"] = {"function": f"tests.fixtures.user_workloads:{function}"}
    return spec


def write_spec(folder: Path, spec: Mapping[str, Any], name: str = "run.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(dict(spec)))
    return path


def check_sane(record_path: Path, workload: str, executor: str) -> CalibrationRecord:
    """A calibration record whose measurements are inside the bounds a 2-core CPU allows."""
    record = load_record(record_path)
    m, d = record.measurement, record.derived
    assert record.spec.workload.name == workload
    assert m.device_kind == "cpu"
    assert m.stopped_by in STOP_REASONS
    # MSER cuts at most half the series as warm-up; a loaded machine may give few steps.
    assert m.steps_run // 2 <= m.steady_steps <= m.steps_run and m.steady_steps >= 3
    assert m.steps_run == len(m.step_times_s) == m.warmup_steps + m.steady_steps
    assert 1e-4 < m.step_mean_s < 2.0
    assert min(m.step_times_s) <= m.step_median_s <= max(m.step_times_s)
    assert m.step_ci_half_s > 0
    if m.stopped_by == "ci_target":
        assert m.step_ci_relative <= m.target_ci
    assert 0.05 < m.startup_s < 120
    assert m.import_s < m.startup_s
    assert 0 <= m.data_share < 0.5
    assert 10e6 < m.peak_memory_bytes < 16e9
    # AdamW keeps two moments per parameter: a checkpoint is at least 3 x fp32 weights.
    assert m.checkpoint_bytes >= 3 * 4 * m.params
    assert 0 < m.checkpoint_save_s < 30 and 0 < m.checkpoint_load_s < 30
    assert d.samples_per_s == pytest.approx(m.samples_per_step / m.step_mean_s)
    assert d.tokens_per_s == pytest.approx(d.samples_per_s * m.tokens_per_sample)
    assert d.mfu is None  # no peak is known for a CPU unless the spec gives one
    assert m.torch_threads >= 1 and m.threads_why  # chosen for the job's cores, and said
    assert record.job.executor == executor
    assert Path(record.job.stderr).exists()
    return record


PACE_S = 0.2  # seconds each paced step waits: long in wall time, light on the 2 CPUs


def paced_spec(
    samples: int, name: str, checkpoint: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A run of tests.fixtures.user_workloads:paced_linear: 4 samples a step, each >= PACE_S."""
    spec = copy.deepcopy(TINY_JIT)
    spec.update(
        name=name,
        workload={
            "function": "tests.fixtures.user_workloads:paced_linear",
            "overrides": {"pace_s": PACE_S},
        },
        data={"samples": samples},
        batch={"micro_batch": 4, "grad_accum": 1},
        cluster={"partition": "gpu", "gpus_per_node": 0, "cpus_per_task": 1},
        checkpoint=dict(checkpoint or {"dir": "ck"}),
    )
    spec["calibration"].update(max_seconds=6, target_ci=0.02)
    return spec


def reference_files(
    folder: Path, measured: dict[str, Any] | None = None, **changes: Any
) -> tuple[Path, Path]:
    """run.yaml (tests/test_planning.py's SPEC with ``changes``, "section__key" paths) and
    cal.yaml, its calibration record (``measured``: Measurement fields changed in it)."""
    doc = copy.deepcopy(SPEC)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    spec_path = write_spec(folder, doc)
    record = record_for(spec_with(**changes), **(measured or {}))
    cal = folder / "cal.yaml"
    save_record(record, cal)
    return spec_path, cal


HOSTILE = 'it\'s a "run"; echo pwned $(touch pwned) `touch pwned2`'


MODEL_STEP_S = 1.06  # the one-node reference plan's step (tests/test_planning.py)


def add_outcomes(
    db: Path, run_dir: str, ratios: list[float], correction: float | None = None
) -> None:
    """More ended jobs of ``run_dir``, newest last: each ran 10 steps of ``ratio`` x the
    model's 1.06 s step (and ``ratio`` x its 100 s prediction as a whole job)."""
    with history.connect(db) as conn:
        first = conn.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0]
        for index, ratio in enumerate(ratios, start=first):
            conn.execute(
                "INSERT INTO outcomes (recorded, run_dir, job_id, state, end_time, elapsed_s, "
                "steps, predicted_s, plan_correction, step_s, model_step_s)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    MODEL_STEP_S * ratio * (correction or 1.0),
                    MODEL_STEP_S,
                ),
            )


def recorded_run(
    db: Path, tmp_path: Path, name: str, nodes: int = 1, spec: RunSpec | None = None
) -> str:
    """A run folder whose plan (of ``spec``, the reference one by default, calibrated by the
    reference record) is in the history."""
    folder = tmp_path / name
    folder.mkdir()
    spec = spec or spec_with(plan__max_nodes=8)
    plan = plan_for(spec, nodes=nodes)
    history.record_plan(plan, folder, path=db, record=record_for(spec))
    return str(folder.resolve())


GRAD_BYTES = 4_000_000_000


SIZES = (GRAD_BYTES, GRAD_BYTES // 4, GRAD_BYTES // 16)


def ring_s(latency_s: float, bytes_per_s: float, ranks: int, size: int) -> float:
    return latency_s + 2 * (ranks - 1) / ranks * size / bytes_per_s


def point(
    nodes: int,
    step_s: float,
    *,
    tasks: int = 4,
    latency_s: float = 0.0,
    bytes_per_s: float = 0.0,
    grad_accum: int | None = None,
) -> ScalingPoint:
    """A node count's job at global batch 256, with exact all-reduce timings of the given
    latency and bus bandwidth (none for one node, or without a bandwidth)."""
    ranks = nodes * tasks
    times: tuple[tuple[int, float], ...] = ()
    if nodes > 1 and bytes_per_s > 0:
        times = tuple((b, ring_s(latency_s, bytes_per_s, ranks, b)) for b in SIZES)
    accum = grad_accum if grad_accum is not None else 256 // (8 * ranks)
    backend = "nccl" if ranks > 1 else ""
    return ScalingPoint(nodes, ranks, tasks, backend, accum, step_s, step_s * 0.01, times, "7")


def scaled_record(latency_s: float, bytes_per_s: float, step_two_s: float) -> Any:
    spec = spec_with(calibration={"executor": "slurm", "nodes": [1, 2]})
    section = make_section(
        [point(1, 1.06), point(2, step_two_s, latency_s=latency_s, bytes_per_s=bytes_per_s)],
        spec.plan,
        10**9,
    )
    job = JobInfo("slurm", "7", "/tmp/cal", "out", "err", 1.0, 60.0)
    measurement = Measurement(**{**MEASUREMENT, "step_mean_s": 1.06})
    return make_record(spec, measurement, job, section)
