"""What the rest of a run costs: its steps at the steady step, the checkpoint saves still due
and the segments still to start (start-up, checkpoint load and warm-up each), at P50 and P95
(planner.eta.estimate's docstring has the formula). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.eta.source import Source
from planner.eta.steps import (
    DEFAULT_SPREAD,
    Z95,
    SteadyStepTime,
    observed_interval,
    resume_time,
    save_time,
    step_sigma,
)
from planner.runs.progress import History


@dataclass(frozen=True)
class Remaining:
    from_step: int  # the step the rest starts from (the newest checkpoint after a crash)
    steps: int
    steps_s: float
    saves: int
    save_s: float  # each
    saves_s: float
    resumes: int  # segments still to start
    resume_s: float  # each: start-up, checkpoint load and warm-up
    resumes_s: float
    p50_s: float
    p95_s: float


@dataclass(frozen=True)
class Costs:
    """What the rest of the run costs besides its steps."""

    interval: int | None  # checkpoint interval in steps; None: unknown
    save_s: float  # one save
    resume_each: float  # each segment still to start: start-up, checkpoint load, warm-up
    spread: float  # run-to-run spread of the step
    per_save: float  # the saves' share of one step (0: the steps' times include them)


def costs_of(source: Source, step: SteadyStepTime, notes: list[str]) -> Costs:
    history, plan = source.history, source.plan
    # The run folder's interval (train.json's, else plan.yaml's), else the file's own, else
    # the one its checkpoint lines show.
    interval = source.checkpoint_interval or history.checkpoint_interval
    interval = interval or observed_interval(history)
    if not history.includes_saves and interval is None:
        notes.append("checkpoint interval unknown: the saves still due are not counted")
    save_s = save_time(history, plan)
    spread = (plan.run_to_run_spread if plan else None) or DEFAULT_SPREAD
    per_save = 0.0 if history.includes_saves or not interval else save_s / interval
    return Costs(interval, save_s, resume_time(history, plan, step), spread, per_save)


def remaining_time(
    history: History,
    step: SteadyStepTime,
    from_step: int,
    costs: Costs,
    resumes: int,
    done: bool,
) -> Remaining:
    """The steps from ``from_step`` on, the saves still due and ``resumes`` segments to
    start, at P50 and P95."""
    interval, save_s, resume_each = costs.interval, costs.save_s, costs.resume_each
    steps = 0 if done else max(history.total_steps - from_step, 0)
    saves = 0
    if steps and not history.includes_saves:
        saves = resumes  # the save at the end of each segment but the last
        if interval:
            total = history.total_steps
            saves += total // interval - from_step // interval + (1 if total % interval else 0)
    steps_s = steps * step.mean_s
    p50 = steps_s + saves * save_s + resumes * resume_each
    return Remaining(
        from_step=from_step,
        steps=steps,
        steps_s=steps_s,
        saves=saves,
        save_s=save_s,
        saves_s=saves * save_s,
        resumes=resumes,
        resume_s=resume_each,
        resumes_s=resumes * resume_each,
        p50_s=p50,
        p95_s=p50 + Z95 * step_sigma(step, steps, costs.spread),
    )
