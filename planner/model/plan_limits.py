"""What a plan may rest on beyond its calibration, and the one line it says about each.

- Node counts: without a measured point beyond the calibrated node count, a plan does not
  choose more nodes than were calibrated: a 2-node plan from the default network model
  planned 9.93 ms steps that ran at 59.6 ms. `--nodes N` or plan.allow_unmeasured_scaling
  lets the model choose anyway.
- A calibration that missed its CI target by more than 2x: the machine is noisier than the
  default run-to-run spread assumes, so the P95 takes the measured spread instead.
- The history's step correction at a node count (planner.model.correction), capped.
Torch-free.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from planner.calibration.record import WEAK_CI_FACTOR, CalibrationRecord
from planner.model.correction import MAX_FACTOR, MAX_SPREAD, Correction
from planner.scaling.ring import StepTime
from planner.shell import command_text
from planner.spec.run_spec import RunSpec
from planner.units import fmt_percent


@dataclass(frozen=True)
class MeasuredCap:
    limit: int  # the most nodes the plan considers
    note: str  # "" when nothing was held back


def measured_nodes(record: CalibrationRecord) -> int:
    """The largest node count the calibration ran."""
    if record.scaling is not None:
        return max(record.scaling.node_counts)
    return record.measurement.nodes


def measured_cap(
    spec: RunSpec, record: CalibrationRecord, limit: int, forced: int | None
) -> MeasuredCap:
    """``limit`` (the partition's and the spec's cap), held to the measured node counts unless
    the user forced a count or allowed unmeasured scaling."""
    measured = measured_nodes(record)
    if limit <= measured:
        return MeasuredCap(limit, "")
    calibrate = command_text(
        "plan-job", "calibrate", "SPEC", "--nodes", f"1,{measured + 1}", "--executor", "slurm"
    )
    measure = f"measure them with `{calibrate}`"
    if forced is not None:
        note = ""
        if forced > measured:
            note = (
                f"--nodes {forced}: scaling beyond the calibrated {measured} node(s) is "
                f"modelled, not measured; {measure}"
            )
        return MeasuredCap(limit, note)
    if spec.plan.allow_unmeasured_scaling:
        return MeasuredCap(
            limit,
            f"node counts above the calibrated {measured} are modelled, not measured "
            "(plan.allow_unmeasured_scaling)",
        )
    return MeasuredCap(
        measured,
        f"planned on the calibrated {measured} node(s) only: scaling to more (up to {limit}) "
        f"is modelled, not measured; {measure}, or set plan.allow_unmeasured_scaling: true "
        "to let the model choose them",
    )


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
