"""A run's kind for the history: what sets its step time. A correction is learned only from
jobs of the same kind (planner.model.correction; the history's plans are keyed by it).

Keyed by workload name and preset (or its function, or the command and how it reports), the
preset's overrides, compile, micro-batch, global batch and GPUs per node (which, at a node
count, set the accumulation), precision, the device the calibration measured on, and where
it ran (Slurm, or the local executor on which host); partition and node count are columns of
their own. A paced test variant of jit:tiny on the test cluster and a local plan of jit:tiny
are two kinds: one's biases never move the other's plans. Torch-free.
"""

from __future__ import annotations

import json
from typing import Any

from planner.calibration.record import CalibrationRecord
from planner.model.plan import Plan
from planner.spec.run_spec import RunSpec


def run_kind(spec: RunSpec, record: CalibrationRecord | None) -> dict[str, Any]:
    """The kind as a dict; the device and executor are None without the calibration record."""
    workload = spec.workload
    kind: dict[str, Any] = {
        "workload": workload.function or f"{workload.name}:{workload.preset}",
        "overrides": dict(workload.overrides),
        "compile": workload.compile,
        "micro_batch": spec.batch.micro_batch,
        "global_batch": spec.batch.global_batch,
        "gpus_per_node": spec.cluster.gpus_per_node,
        "precision": spec.precision,
        "device": None,
        "executor": None,
    }
    if spec.command is not None:
        kind["workload"] = f"command:{spec.command.run}"
        kind["report"] = spec.command.report
    if record is not None:
        measured = record.measurement
        kind["device"] = measured.device_name
        executor = record.spec.calibration.executor
        kind["executor"] = f"local:{measured.host}" if executor == "local" else executor
    return kind


def kind_key(spec: RunSpec, record: CalibrationRecord | None) -> str:
    """The kind as one string, the same for the same kind (the history's plans.kind)."""
    return json.dumps(run_kind(spec, record), sort_keys=True, default=str)


def plan_kind(plan: Plan, record: CalibrationRecord | None) -> str:
    return kind_key(plan.spec, record)


def describe(key: str | None) -> str:
    """A kind in words: "jit:tiny, micro-batch 8 of 256, bf16, on CPU (local:vm)"."""
    if not key:
        return "of an unknown kind (recorded before kinds were)"
    kind = json.loads(key)
    text = str(kind.get("workload"))
    if kind.get("overrides"):
        text += f" {kind['overrides']}"
    if kind.get("compile"):
        text += " compiled"
    text += f", micro-batch {kind.get('micro_batch')} of {kind.get('global_batch')}"
    text += f", {kind.get('precision')}"
    if kind.get("device"):
        text += f", on {kind['device']}"
    if kind.get("executor"):
        text += f" ({kind['executor']})"
    return text
