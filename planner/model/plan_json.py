"""plan --json: one JSON object a script can read, keys stable across versions (new keys may
be added; none is renamed or changes meaning). README "JSON output" lists them; `history
--json` (planner.history.report) is written the same way, with dumps. Torch-free.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from planner.model.plan import Plan
from planner.model.resources import units_of

PLAN_SCHEMA = "plan-job.plan/1"


def plan_json(plan: Plan, model: Plan | None = None) -> str:
    """The plan's headline numbers, the history correction it carries (``model``: the plan
    without it), its notes, and the whole plan as plan.yaml holds it (``plan``).
    ``gpus``/``gpu_hours`` count tasks and node-hours on a CPU-only spec: ``units`` says
    which."""
    out: dict[str, Any] = {
        "schema": PLAN_SCHEMA,
        "name": plan.spec.name,
        "nodes": plan.nodes,
        "gpus": plan.gpus,
        "units": units_of(plan.spec).to_dict(),
        "grad_accum": plan.grad_accum,
        "total_steps": plan.total_steps,
        "step_s": plan.step_s,
        "step_p95_s": plan.step_p95_s,
        "wall_p50_s": plan.wall.p50_s,
        "wall_p95_s": plan.wall.p95_s,
        "gpu_hours": plan.gpu_hours,
        "cost": plan.cost,
        "energy_kwh": plan.energy_kwh,
        "power_w_per_gpu": plan.power_w,
        "pue": plan.spec.plan.pue,
        "energy_note": plan.energy_note,
        "checkpoint_interval_steps": plan.checkpoint_interval_steps,
        "partition": plan.partition.name if plan.partition else None,
        "segments": [dataclasses.asdict(s) for s in plan.segments],
        "choice_reason": plan.choice_reason,
        # Time to result (Unix seconds; null: the queue was not asked or Slurm gave no start).
        "choose_by": plan.choose_by,
        "start_time": plan.start_time,
        "finish_p50": plan.finish_p50,
        "finish_p95": plan.finish_p95,
        "queue_note": plan.queue_note,
        "queue_took_s": plan.queue_took_s,
        "segment_length": plan.segment_length,
        "notes": list(plan.notes),
        "correction": None,
        "plan": plan.to_dict(),
    }
    if model is not None and model.wall != plan.wall:
        out["correction"] = {
            "step_factor": plan.step_correction,
            "uncorrected_wall_p50_s": model.wall.p50_s,
            "uncorrected_wall_p95_s": model.wall.p95_s,
        }
    return dumps(out)


def dumps(value: Any) -> str:
    return json.dumps(json_safe(value), indent=2)


def json_safe(value: Any) -> Any:
    """JSON has no Infinity or NaN: an unknown number is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
