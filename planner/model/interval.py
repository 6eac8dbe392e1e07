"""How often to checkpoint: Young/Daly from the measured save time and the job's MTBF.

    M  = plan.mtbf_hours, or 1 / (interruptions_per_gpu_day x GPUs) days
    d  = the calibration's checkpoint_save_s
    Young (1974):  tau = sqrt(2 d M)
    Daly (2006):   tau = sqrt(2 d M) [1 + sqrt(d / 2M) / 3 + (d / 2M) / 9] - d   for d < 2M,
                   tau = M                                                      otherwise

tau is the compute time between two saves; in steps it is round(tau / step), at least 1.
A spec's checkpoint.interval_steps replaces it (method "user").

Expected overhead, as a fraction of the compute time, with R the restart cost (start-up,
checkpoint load and warm-up):

    overhead = d / tau + ((tau + d) / 2 + R) / M

a save every tau, and per failure (one every M seconds) half an interval of lost work on
average (the failure may also hit the save) plus the restart.
"""

from __future__ import annotations

import math

from planner.model.plan import CheckpointChoice
from planner.spec.run_spec import RunSpec

_DAY_S = 86400.0


def young_interval_s(save_s: float, mtbf_s: float) -> float:
    return math.sqrt(2 * save_s * mtbf_s)


def daly_interval_s(save_s: float, mtbf_s: float) -> float:
    if save_s >= 2 * mtbf_s:
        return mtbf_s
    ratio = save_s / (2 * mtbf_s)
    return math.sqrt(2 * save_s * mtbf_s) * (1 + math.sqrt(ratio) / 3 + ratio / 9) - save_s


def job_mtbf(spec: RunSpec, gpus: int) -> tuple[float, str]:
    """(seconds, where it came from) for a job on ``gpus`` GPUs."""
    plan = spec.plan
    if plan.mtbf_hours is not None:
        return plan.mtbf_hours * 3600.0, "plan.mtbf_hours"
    rate = plan.interruptions_per_gpu_day
    if spec.cluster.gpus_per_node == 0:
        # CPU only: each task (one per node) is counted as one GPU would be.
        return _DAY_S / (rate * gpus), f"{rate:g} interruptions per GPU-day x {gpus} CPU task(s)"
    return _DAY_S / (rate * gpus), f"{rate:g} interruptions per GPU-day x {gpus} GPUs"


def expected_overhead(interval_s: float, save_s: float, mtbf_s: float, restart_s: float) -> float:
    return save_s / interval_s + ((interval_s + save_s) / 2 + restart_s) / mtbf_s


def choose_interval(
    spec: RunSpec, save_s: float, restart_s: float, step_s: float, gpus: int
) -> CheckpointChoice:
    """The checkpoint interval for one node count; expected_failures is filled in later."""
    mtbf_s, source = job_mtbf(spec, gpus)
    daly = daly_interval_s(save_s, mtbf_s)
    if spec.checkpoint.interval_steps is not None:
        steps, method = spec.checkpoint.interval_steps, "user"
    else:
        steps, method = max(1, round(daly / step_s)), "daly"
    interval_s = steps * step_s
    return CheckpointChoice(
        interval_steps=steps,
        interval_s=interval_s,
        method=method,
        save_s=save_s,
        mtbf_s=mtbf_s,
        mtbf_source=source,
        daly_s=daly,
        young_s=young_interval_s(save_s, mtbf_s),
        overhead=expected_overhead(interval_s, save_s, mtbf_s, restart_s),
        expected_failures=0.0,
    )
