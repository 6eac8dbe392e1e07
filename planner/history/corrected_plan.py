"""A plan with the history's step correction, and the plan from the calibration alone beside
it: what `plan-job plan` and `emit` show (how far the correction moved the wall time) and what
the history records (both). A history that cannot be read does not stop the plan: it is made
without the correction, and the warning says why. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from planner.calibration.record import CalibrationRecord
from planner.errors import HistoryError
from planner.history.correction import corrections_for
from planner.history.coverage import widening_for
from planner.model.correction import Correction
from planner.model.coverage import Widening, widen
from planner.model.plan import Plan
from planner.model.planning import make_plan
from planner.model.queue_finish import QueueProbe
from planner.slurm.partition import PartitionLimits
from planner.spec.run_spec import RunSpec


@dataclass(frozen=True)
class CorrectedPlan:
    plan: Plan  # the plan to use: corrected where the history had a correction
    model: Plan  # the plan from the calibration alone
    corrected: bool  # the history changed the plan's wall time
    warning: str | None = None  # why the history was not read, when it was not


def corrected_plan(
    spec: RunSpec,
    record: CalibrationRecord,
    partition: PartitionLimits | None,
    calibration_path: str,
    *,
    deadline_hours: float | None = None,
    nodes: int | None = None,
    history: Path | None = None,
    correct: bool = True,
    queue: QueueProbe | None = None,
    queue_note: str = "",
) -> CorrectedPlan:
    """make_plan, then again with the history's step corrections for the spec's workload and
    partition (planner.history.correction.corrections_for) when it has any and ``correct``,
    and its P95 widened where the history's jobs of its kind outran it too often
    (planner.history.coverage.widening_for).
    ``history``: the database (None: $PLANJOB_HISTORY or the default). Raises what make_plan
    raises."""
    model = make_plan(
        spec,
        record,
        partition,
        calibration_path,
        deadline_hours=deadline_hours,
        nodes=nodes,
        queue=queue,
        queue_note=queue_note,
    )
    corrections: dict[int, Correction] = {}
    widening: Widening | None = None
    warning = None
    if correct:
        try:
            corrections = corrections_for(spec, partition, history, record=record)
            widening = widening_for(
                spec, partition, history, record=record, corrections=corrections
            )
        except HistoryError as exc:
            warning = f"{exc}; planned without the history's correction"
    if not corrections and widening is None:
        return CorrectedPlan(model, model, False, warning)
    # Corrections whose jobs disagree are not applied, only said: the plan is the model's
    # with the note.
    plan = model
    if corrections:
        plan = make_plan(
            spec,
            record,
            partition,
            calibration_path,
            deadline_hours=deadline_hours,
            nodes=nodes,
            corrections=corrections,
            queue=queue,
            queue_note=queue_note,
        )
    # After the step corrections: the widening's ratios are against the P95 they give.
    if widening is not None:
        plan = widen(plan, widening)
    return CorrectedPlan(plan, model, plan.wall != model.wall)
