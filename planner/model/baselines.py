"""The two estimates a user makes without a planner, for the chosen node count.

method 1 (the seed's mini epoch): the calibration's K = steps_run steps including start-up
    and warm-up, scaled by the run's steps counted in calibration steps
    (total_steps x grad_accum / calibrated grad_accum) / K;
FLOP estimate: flops_per_sample x samples_total / (GPUs x achieved FLOP/s per GPU), the
    6ND-style count with no start-up, saves, evaluation or communication.
"""

from __future__ import annotations

import math

from planner.calibration.record import CalibrationRecord
from planner.model.plan import Baselines
from planner.model.timemodel import Totals


def baselines(record: CalibrationRecord, totals: Totals, grad_accum: int, gpus: int) -> Baselines:
    m, derived = record.measurement, record.derived
    k = m.steps_run
    if len(m.step_times_s) == k:
        mini_s = m.startup_s + sum(m.step_times_s)
    else:
        mini_s = m.startup_s + m.warmup_extra_s + k * m.step_mean_s
    calibration_steps = totals.steps * grad_accum / record.spec.batch.grad_accum
    flops_total = m.flops_per_step / m.samples_per_step * totals.samples
    if derived.mfu is not None and derived.peak_tflops:
        rate = derived.mfu * derived.peak_tflops * 1e12
        source = f"MFU {derived.mfu:.1%} of {derived.peak_tflops:g} TFLOP/s ({derived.peak_source})"
    else:
        rate = derived.achieved_tflops * 1e12
        source = "achieved TFLOP/s (no peak known for this device)"
    return Baselines(
        mini_steps=k,
        mini_s=mini_s,
        method1_s=mini_s * calibration_steps / k,
        flops_total=flops_total,
        flops_per_gpu_s=rate,
        flops_rate_source=source,
        flops_s=flops_total / (gpus * rate) if rate > 0 else math.nan,
    )
