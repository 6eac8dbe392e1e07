"""The hang watchdog's timeouts that `emit` writes into train.json, from what the calibration
measured before the run started: each phase's measured time times plan.hang_factor, never
below a floor. Torch-free.

nvidia-resiliency-ext learns its timeouts as 5x the longest interval it has seen; plan-job
knows the step's tail (its calibrated P99), the save, load, evaluation, start-up and compile
before the first job runs. The floors keep a fast step from being judged by noise that does
not scale with it (a slow filesystem read, a collective's first use): a step may always take
STEP_FLOOR_S, a save, a load or an evaluation a minute, a start-up or compile two.
"""

from __future__ import annotations

from jobs.contract.hang import HangTimeouts
from planner.model.plan import Plan

STEP_FLOOR_S = 10.0
PROGRESS_FLOOR_S = 30.0  # a user's command: between two progress lines
IO_FLOOR_S = 60.0  # save, load, evaluation
STARTUP_FLOOR_S = 120.0  # start-up, compile


def hang_timeouts(plan: Plan) -> HangTimeouts | None:
    """None when plan.hang_timeouts is off."""
    spec = plan.spec
    if spec.plan.hang_timeouts == "off":
        return None
    factor = spec.plan.hang_factor
    step = plan.step_p99_s or plan.step_p95_s  # a plan.yaml from before the P99 was kept
    step_what = plan.step_p99_source or "the plan's P95 step"
    save, load = plan.checkpoint.save_s, plan.checkpoint_load_s or plan.checkpoint.save_s
    startup = plan.process_startup_s or plan.wall.startup_s
    compile_s = plan.compile_s
    eval_s = plan.eval_s
    parts: list[str] = []

    def scaled(name: str, measured: float, floor: float, what: str) -> float:
        value = max(factor * measured, floor)
        floored = ", the floor" if factor * measured < floor else ""
        parts.append(f"{name} {value:.3g} s ({what} {measured:.3g} s x {factor:g}{floored})")
        return value

    step_s = scaled("step", step, STEP_FLOOR_S, step_what)
    save_s = scaled("save", save, IO_FLOOR_S, "save")
    eval_s = scaled("eval", eval_s, IO_FLOOR_S, "evaluation")
    # A user's command is judged by its progress lines: the longest quiet gap is a step
    # with the save and evaluation after it, or with report: trainer_state (lines only at
    # the Trainer's saves) a whole checkpoint interval of steps.
    gap = step + save + plan.eval_s
    if spec.command is not None and spec.command.report == "trainer_state":
        gap = plan.checkpoint_interval_steps * step + save + plan.eval_s
    progress_s = scaled("progress", gap, PROGRESS_FLOOR_S, "longest gap between lines")
    load_s = scaled("load", load, IO_FLOOR_S, "load")
    startup_s = scaled("startup", startup, STARTUP_FLOOR_S, "start-up")
    compile_s = scaled("compile", compile_s, STARTUP_FLOOR_S, "compile")
    return HangTimeouts(
        startup_s=round(startup_s, 3),
        load_s=round(load_s, 3),
        compile_s=round(compile_s, 3),
        step_s=round(step_s, 3),
        save_s=round(save_s, 3),
        eval_s=round(eval_s, 3),
        progress_s=round(progress_s, 3),
        factor=factor,
        source=f"from the calibration {plan.calibration_path}, each at least its floor: "
        + "; ".join(parts),
    )
