"""The calibration request of tiny JiT on the CPU that the node-side tests start from."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_request_fields(scratch: Path, **changes: Any) -> dict[str, Any]:
    """CalibrationRequest.from_flat's fields: a few seconds of tiny JiT steps on the CPU,
    ``changes`` replacing any of them (builder_path, compile, eval_batches, ...)."""
    return {
        "builder_path": "jobs.workloads.jit:build",
        "workload_name": "jit",
        "preset": "tiny",
        "overrides": {},
        "micro_batch": 2,
        "grad_accum": 1,
        "precision": "fp32",
        "device": "cpu",
        "seed": 0,
        "min_steps": 10,
        "max_steps": 60,
        "max_seconds": 3.0,
        "target_ci": 0.2,
        "scratch_dir": str(scratch),
        **changes,
    }
