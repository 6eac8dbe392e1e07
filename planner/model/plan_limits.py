"""What a plan may rest on beyond its calibration, and the one line it says about each.

- Node counts beyond the calibrated ones: planner.model.node_range.
- A calibration that missed its CI target by more than 2x: the machine is noisier than the
  default run-to-run spread assumes, so the P95 takes the measured spread instead.
- The history's step correction at a node count (planner.model.correction), capped.
Torch-free.
"""

from __future__ import annotations

import dataclasses

from planner.calibration.record import WEAK_CI_FACTOR, CalibrationRecord
from planner.model.correction import MAX_FACTOR, MAX_SPREAD, Correction
from planner.scaling.ring import StepTime
from planner.spec.run_spec import RunSpec
from planner.units import fmt_percent


def weak_calibration(spec: RunSpec, record: CalibrationRecord) -> tuple[float, str]:
    """(the run-to-run spread the P95 uses, a note when the calibration was too noisy)."""
    m = record.measurement
    spread = spec.plan.run_to_run_spread
    ci, target = m.step_ci_relative, m.target_ci
    if not ci > WEAK_CI_FACTOR * target:
        return spread, ""
    used = max(spread, ci)
    return used, (
        f"weak calibration: the step time is known to ±{fmt_percent(ci)}, more than "
        f"{WEAK_CI_FACTOR:g}x its {fmt_percent(target)} target; the P95 assumes a run-to-run "
        f"spread of {fmt_percent(used)} (not {fmt_percent(spread)}). Calibrate longer "
        "(calibration.max_seconds, max_steps) or on a quieter node for a tighter plan"
    )


def corrected_step(step: StepTime, correction: Correction | None) -> StepTime:
    if correction is None:
        return step
    factor = correction.factor
    return dataclasses.replace(
        step,
        compute_s=step.compute_s * factor,
        intranode_s=step.intranode_s * factor,
        internode_s=step.internode_s * factor,
    )


def correction_note(correction: Correction) -> str:
    if not correction.applied:
        return (
            f"history: not applied: the newest {correction.recent} job(s) of this kind at "
            f"{correction.nodes} node(s) disagree (their biases' spread "
            f"{fmt_percent(correction.spread)}, above {fmt_percent(MAX_SPREAD)}): their "
            f"x{correction.learned:.2f} would stand for none of them; it rests on "
            f"{correction.rests_on()}. See `plan-job history`"
        )
    text = (
        f"history: steps x{correction.factor:.2f} at {correction.nodes} node(s), learned "
        f"from {correction.outcomes} job(s) of {correction.workload} on partition "
        f"{correction.partition} ({correction.rule}); it rests on {correction.rests_on()}"
    )
    if correction.capped:
        text += (
            f"; capped at x{correction.factor:.2f}: those jobs ran x{correction.learned:.2f} "
            f"the model's step, more than a drifting machine explains (the cap is "
            f"x{MAX_FACTOR:g} either way): calibrate at {correction.nodes} node(s)"
        )
    return text
