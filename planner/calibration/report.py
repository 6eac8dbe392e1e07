"""Tables a person reads: what a calibration measured."""

from __future__ import annotations

from planner.calibration.record import WEAK_CI_FACTOR, CalibrationRecord
from planner.scaling.fit import ScalingSection, scaling_rows
from planner.textwidth import fit_table
from planner.units import fmt_bytes, fmt_count, fmt_duration, fmt_percent

_STOP_TEXT = {
    "ci_target": "95% CI within the target ({target})",
    "step_cap": "step cap (calibration.max_steps) before the CI target ({target})",
    "time_cap": "time cap (calibration.max_seconds) before the CI target ({target})",
    "exited": "the command ended by itself before the CI target ({target})",
}


def _compile_rows(record: CalibrationRecord) -> list[tuple[str, str]]:
    m = record.measurement
    if not record.spec.workload.compile:
        return []
    text = f"{fmt_duration(m.compile_s)} per job start (first compiled step and evaluation)"
    if m.compile_cache:
        text += (
            f", {m.compile_cache} cache (compiled in an empty inductor/Triton cache, as a "
            "run's first job on a fresh node does"
            + (
                f"; {fmt_duration(m.compile_warm_s)} with the graph cached"
                if m.compile_warm_s
                else ""
            )
            + ")"
        )
    if m.eager_step_s > 0:
        text += (
            f"; eager step {fmt_duration(m.eager_step_s)} (median of {m.eager_steps} before "
            f"compiling), compiled {fmt_duration(m.step_mean_s)}: "
            f"{m.eager_step_s / m.step_mean_s:.2f}x"
        )
    return [("torch.compile", text)]


def calibration_table(
    record: CalibrationRecord, path: str | None = None, width: int | None = None
) -> str:
    m, d, spec = record.measurement, record.derived, record.spec
    target = fmt_percent(m.target_ci)
    mfu = (
        f"MFU {fmt_percent(d.mfu)} of {d.peak_tflops:g} TFLOP/s ({d.peak_source})"
        if d.mfu is not None
        else "MFU unknown (no peak for this device; set calibration.peak_tflops)"
    )
    rows = [
        ("device", f"{m.device_name} ({m.device_kind}) on {m.host}"),
        *_threads_rows(m.torch_threads, m.threads_why),
        (
            "workload",
            (
                f"{spec.workload.name} {spec.workload.preset}"
                if spec.command is None
                else f"command `{spec.command.run}` (reports: {spec.command.report})"
            )
            + f", {fmt_count(m.params) if m.params else 'unreported'} parameters, "
            f"{spec.precision}",
        ),
        (
            "per step (one device)",
            f"{m.samples_per_step} samples = micro-batch "
            f"{spec.batch.micro_batch} x accum {spec.batch.grad_accum}; "
            f"{m.tokens_per_sample} tokens/sample ({m.token_unit})",
        ),
        (
            "steady step time",
            f"{fmt_duration(m.step_mean_s)} ± {fmt_percent(m.step_ci_relative)}"
            f" (95% CI, {m.steady_steps} steps; median "
            f"{fmt_duration(m.step_median_s)}, p90 {fmt_duration(m.step_p90_s)})",
        ),
        *_clipped_rows(m.step_mean_s, m.step_raw_mean_s),
        ("stopped by", _STOP_TEXT[m.stopped_by].format(target=target)),
        *_weak_rows(m.step_ci_relative, m.target_ci),
        (
            "throughput",
            f"{fmt_count(d.samples_per_s)} samples/s, {fmt_count(d.tokens_per_s)} tokens/s",
        ),
        (
            "compute",
            f"{d.achieved_tflops:.3g} TFLOP/s achieved "
            f"({fmt_count(m.flops_per_step / m.samples_per_step)}FLOP/sample); {mfu}",
        ),
        (
            "start-up",
            f"{fmt_duration(m.startup_s)} to the first step"
            + (
                f" of a fresh `python -m jobs.train` (this job's own, under submitit: "
                f"{fmt_duration(m.harness_startup_s)}; import {fmt_duration(m.import_s)}, "
                f"build {fmt_duration(m.build_s)})"
                if m.fresh_steps
                else f" (import {fmt_duration(m.import_s)}, build {fmt_duration(m.build_s)})"
                if spec.command is None
                else " (the command's start to its first step's)"
            )
            + (
                f"; job script and srun {fmt_duration(m.job_start_s)} before it"
                if m.job_start_s
                else ""
            )
            # A local job's is the training entry's exit alone (jobs.calibration.fresh_start).
            + (
                f"; exit and job end {fmt_duration(m.job_end_s)} after the last step"
                if m.job_end_s
                else ""
            ),
        ),
        (
            "warm-up",
            f"{m.warmup_steps} steps, {fmt_duration(m.warmup_extra_s)} beyond steady"
            + (
                f" in the fresh process (this job's own: {fmt_duration(m.harness_warmup_extra_s)})"
                if m.fresh_steps
                else ""
            ),
        ),
        *_slowdown_rows(m.slowdowns),
        *_compile_rows(record),
        ("data loading", f"{fmt_percent(m.data_share)} of the steady step"),
        ("peak memory", f"{fmt_bytes(m.peak_memory_bytes)} ({m.memory_kind.replace('_', ' ')})"),
        *_power_rows(record),
        (
            "checkpoint",
            f"save {fmt_duration(m.checkpoint_save_s)}, load "
            f"{fmt_duration(m.checkpoint_load_s)}, {fmt_bytes(m.checkpoint_bytes)}",
        ),
        (
            "job",
            f"{record.job.executor} job {record.job.job_id}: queued "
            f"{fmt_duration(record.job.queue_wait_s or 0.0)}, "
            f"{fmt_duration(record.job.wall_s)} submit to result; log {record.job.stderr}",
        ),
    ]
    if m.eval_batches:
        rows.insert(
            -1,
            (
                "evaluation",
                f"{fmt_duration(m.eval_s)} for {m.eval_batches} held-out batches of "
                f"{spec.batch.micro_batch} (forward only, data included)"
                + (
                    f"; the second of two, the first {fmt_duration(m.eval_first_s)}"
                    if m.eval_first_s
                    else ""
                ),
            ),
        )
    if path:
        rows.append(("record", path))
    return fit_table(rows, ("calibration", spec.name), width=width)


def _power_rows(record: CalibrationRecord) -> list[tuple[str, str]]:
    """The GPUs' power (NVML), or why it is unknown; nothing for a CPU calibration."""
    m = record.measurement
    if m.device_kind != "cuda":
        return []
    if not m.power_w:
        return [("GPU power", m.power_source or "unknown: not read (a record from before)")]
    each = ", ".join(f"{w:.0f}" for w in m.power_w)
    text = f"{each} W (median over the steady steps, per GPU; NVML)"
    if m.idle_power_w:
        text += f"; idle before: {', '.join(f'{w:.0f}' for w in m.idle_power_w)} W"
    return [("GPU power", text)]


def scaling_table(section: ScalingSection, width: int | None = None) -> str:
    """A multi-node calibration: each node count measured, and the model fitted to them."""
    headers = ("scaling", "each node count measured, and the model fitted to them")
    return fit_table(scaling_rows(section), headers, width=width)


def _threads_rows(count: int, why: str) -> list[tuple[str, str]]:
    if count <= 0:
        return []  # a record from before plan-job chose them
    return [
        (
            "threads",
            f"{count} torch CPU thread{'s' if count > 1 else ''} ({why}); the run's "
            "jobs choose theirs by the same rule",
        )
    ]


# The winsorized mean is said beside the plain one once they differ by more than this.
_CLIPPED_SHOWN = 0.01


def _clipped_rows(mean_s: float, raw_s: float) -> list[tuple[str, str]]:
    if raw_s <= 0 or abs(raw_s / mean_s - 1) <= _CLIPPED_SHOWN:
        return []
    return [
        (
            "spike clipped",
            f"the plain mean of the steady steps is {fmt_duration(raw_s)} "
            f"({raw_s / mean_s - 1:+.0%}): the steady step is the mean with the slowest and "
            "fastest 10% of steps clipped (winsorized, as `plan-job eta` does), so a "
            "transient slowdown does not stretch every plan",
        )
    ]


def _weak_rows(ci: float, target: float) -> list[tuple[str, str]]:
    if not ci > WEAK_CI_FACTOR * target:
        return []
    return [
        (
            "warning",
            f"the step time is known to ±{fmt_percent(ci)}, more than {WEAK_CI_FACTOR:g}x the "
            f"{fmt_percent(target)} target: plans from it widen their P95 to match; calibrate "
            "longer (--max-seconds, calibration.max_steps) or on a quieter node",
        )
    ]


# More slow stretches than this are summed up in one row: a machine that busy has said so.
_MAX_SLOWDOWN_ROWS = 3


def _slowdown_rows(slowdowns: tuple[tuple[int, int, float], ...]) -> list[tuple[str, str]]:
    rows = []
    for first, last, ratio in slowdowns[:_MAX_SLOWDOWN_ROWS]:
        if first == 1:
            # MSER found no warm-up to cut: the noise after this stretch hides where one ends.
            why = "at the start, not told apart from the noise after it"
        else:
            why = "noise such as a load spike, not warm-up"
        rows.append(
            (
                "slowdown",
                f"steps {first}-{last} ran x{ratio:.2f} the median ({why}): clipped in the "
                "steady mean as far as it is among the slowest 10% of steps, and widening its "
                "CI",
            )
        )
    rest = slowdowns[_MAX_SLOWDOWN_ROWS:]
    if rest:
        rows.append(
            (
                "slowdown",
                f"{len(rest)} more slow stretch(es), steps {rest[0][0]}-{rest[-1][1]}, up to "
                f"x{max(r for _, _, r in rest):.2f} the median",
            )
        )
    return rows
