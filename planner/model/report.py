"""Tables a person reads: the plan, the node counts it weighed, and the estimates it replaces."""

from __future__ import annotations

import math

from planner.clock import moment_text, short_moment_text
from planner.model.plan import NodeOption, Plan, Segment
from planner.model.resources import units_of
from planner.textwidth import fit_table, wrap_text
from planner.units import fmt_count, fmt_duration, fmt_percent, slurm_minutes

# More rows than this of one kind are summarised: a large partition has many node counts.
_MAX_SEGMENT_ROWS = 6
_MAX_INFEASIBLE_ROWS = 5


def plan_table(plan: Plan, width: int | None = None) -> str:
    tables = (summary_table, options_table, baselines_table)
    return "\n\n".join(table(plan, width) for table in tables)


def summary_table(plan: Plan, width: int | None = None) -> str:
    spec, wall, ck = plan.spec, plan.wall, plan.checkpoint
    chosen = next(o for o in plan.options if o.chosen)
    units = units_of(spec)
    where = f"partition {plan.partition.name}" if plan.partition else "no partition limits read"
    terms = [
        ("start-up", wall.startup_s),
        ("warm-up", wall.warmup_s),
        ("steps", wall.steps_s),
        ("checkpoints", wall.checkpoints_s),
        ("evaluation", wall.evals_s),
        ("resumes", wall.resumes_s),
        ("compile", wall.compile_s),
        ("interruptions", wall.failures_s),
    ]
    why = " + ".join(f"{name} {fmt_duration(s)}" for name, s in terms if s > 0)
    rows = [
        (
            "work",
            f"{plan.total_steps:,} steps x {spec.batch.global_batch} samples = "
            f"{fmt_count(plan.samples_total)} samples, {fmt_count(plan.tokens_total)} tokens "
            f"({plan.token_unit})",
        ),
        (
            "nodes",
            f"{units.shape(plan.nodes)} ({where}), grad_accum {plan.grad_accum}: "
            f"{units.reword(plan.choice_reason)}",
        ),
        (
            "step",
            f"{fmt_duration(plan.step_s)} P50 (all-reduce {fmt_duration(chosen.comm_s or 0.0)}), "
            f"{fmt_duration(plan.step_p95_s)} P95; scaling efficiency "
            f"{fmt_percent(plan.efficiency)}",
        ),
        *_scaling_rows(plan),
        (
            "wall time",
            f"P50 {fmt_duration(wall.p50_s)}, P95 {fmt_duration(wall.p95_s)} "
            f"(sigma {fmt_duration(wall.sigma_s)})",
        ),
        ("why (P50)", why),
        *_queue_rows(plan),
        (units.hours, _gpu_hours(plan)),
        *_energy_rows(plan),
        ("checkpoint", _checkpoint_text(plan)),
        *_eval_rows(plan),
        *_compile_rows(plan),
        (
            "interruptions",
            f"job MTBF {fmt_duration(ck.mtbf_s)} ({ck.mtbf_source}); "
            f"~{ck.expected_failures:.2g} expected over the run",
        ),
        (
            "Slurm jobs",
            f"{_jobs(plan)}; --signal={plan.signal_option}: stop {plan.signal_lead_s} s before "
            "the limit",
        ),
        *_segment_rows(plan.segments),
    ]
    rows += [("note", note) for note in plan.notes]
    if plan.partition:
        p = plan.partition
        max_time = fmt_duration(p.max_time_s) if p.max_time_s is not None else "UNLIMITED"
        rows.append(
            (
                "partition",
                f"{p.name}: MaxTime {max_time}, {p.total_nodes} nodes of {p.gpus_per_node} "
                f"GPUs and {p.cpus_per_node} CPUs",
            )
        )
    return fit_table(rows, ("plan", spec.name), width=width)


def _eval_rows(plan: Plan) -> list[tuple[str, str]]:
    settings = plan.spec.plan
    if not settings.eval_interval_steps:
        return []
    count = plan.total_steps // settings.eval_interval_steps
    source = "plan.eval_s" if settings.eval_s is not None else "calibrated"
    return [
        (
            "evaluation",
            f"every {settings.eval_interval_steps:,} steps ({count:,} in all), "
            f"{settings.eval_batches} held-out batches, {fmt_duration(plan.eval_s)} each "
            f"({source})",
        )
    ]


def _compile_rows(plan: Plan) -> list[tuple[str, str]]:
    """workload.compile: what it costs (every job compiles) against what it saves."""
    if not plan.spec.workload.compile:
        return []
    jobs = len(plan.segments)
    cost = plan.wall.compile_s
    text = f"{fmt_duration(plan.compile_s)} per job start x {jobs} job(s) = {fmt_duration(cost)}"
    text += _cache_text(plan.compile_cache, plan.compile_warm_s)
    if plan.eager_steps_s > 0:
        saved = plan.eager_steps_s - plan.wall.steps_s
        net = saved - cost
        gain = f"saves {fmt_duration(saved)}" if saved >= 0 else f"costs {fmt_duration(-saved)}"
        text += (
            f"; the steps take {fmt_duration(plan.wall.steps_s)} compiled, "
            f"{fmt_duration(plan.eager_steps_s)} eager: {gain}, "
            + (
                f"net {fmt_duration(net)} faster"
                if net >= 0
                else f"net {fmt_duration(-net)} slower"
            )
        )
    else:
        text += "; the saving is unknown (the calibration timed no eager step)"
    return [("torch.compile", text)]


def _cache_text(cache: str, warm_s: float) -> str:
    """Which compile the plan charges: the cold one, and why."""
    if not cache:
        return ""  # a calibration from before the cache was looked at
    if cache != "cold":
        return (
            f" (the calibration's compile found the cache {cache}, so a cold compile may be "
            "longer: calibrate again where TORCHINDUCTOR_CACHE_DIR is unset)"
        )
    warm = f"; {fmt_duration(warm_s)} where a node's cache holds the graph" if warm_s else ""
    return (
        " (cold: the first job compiles from nothing on a fresh node, and later ones may land "
        f"on nodes whose caches are empty too{warm})"
    )


def options_table(plan: Plan, width: int | None = None) -> str:
    cost = plan.spec.plan.gpu_hour_cost is not None
    energy = plan.energy_kwh is not None
    infeasible = [o for o in plan.options if not o.feasible]
    shown = [o for o in plan.options if o.feasible or len(infeasible) <= _MAX_INFEASIBLE_ROWS]
    measured = any(o.measured_efficiency is not None for o in plan.options)
    rows = [_option_row(o, cost, measured, energy, plan.queue_checked_at) for o in shown]
    units = units_of(plan.spec)
    rows = [[*row[:-1], units.reword(row[-1])] for row in rows]
    headers = ["nodes", units.devices, "accum", "step", "efficiency"]
    headers += ["measured (step)"] if measured else []
    headers += ["P50", "P95", "jobs", units.hours_short]
    queue = plan.queue_checked_at is not None
    headers += ["starts", "finish P50", "finish P95"] if queue else []
    headers += ["kWh"] if energy else []
    headers += ["cost"] if cost else []
    # The note wraps first, else goes under the table; then a measured cell and the
    # durations may take two lines.
    wrap = {-1: 30, headers.index("P50"): 6, headers.index("P95"): 6}
    if measured:
        wrap[headers.index("measured (step)")] = 8
    table = fit_table(
        rows, [*headers, "note"], wrap=wrap, width=width, detach=-1, disable_numparse=True
    )
    if len(infeasible) > _MAX_INFEASIBLE_ROWS:
        counts = ", ".join(str(o.nodes) for o in infeasible[:8])
        more = ", ..." if len(infeasible) > 8 else ""
        table += "\n" + wrap_text(
            f"not possible on {len(infeasible)} node counts ({counts}{more}): "
            f"{infeasible[0].reason}",
            width,
            indent="    ",
        )
    return table


def baselines_table(plan: Plan, width: int | None = None) -> str:
    b, p50 = plan.baselines, plan.wall.p50_s
    rows = [
        ("this plan (P50)", fmt_duration(p50), "", "calibrated step, scaling, the terms above"),
        (
            f"method 1: {b.mini_steps}-step mini run scaled",
            fmt_duration(b.method1_s),
            _difference(b.method1_s, p50),
            "scales start-up and warm-up with the steps; no saves, evaluation, all-reduce",
        ),
        (
            "FLOP estimate (6ND-style)",
            fmt_duration(b.flops_s),
            _difference(b.flops_s, p50),
            f"{b.flops_total:.3g} FLOP at {b.flops_rate_source}; no start-up, saves, "
            "evaluation, all-reduce",
        ),
    ]
    headers = ("estimate", "wall time", "vs P50", "what it counts")
    return fit_table(rows, headers, wrap={0: 16, -1: 24}, width=width)


def _option_row(
    o: NodeOption,
    cost: bool,
    measured: bool = False,
    energy: bool = False,
    asked: float | None = None,
) -> list[str]:
    mark = f"* {o.nodes}" if o.chosen else str(o.nodes)
    queue = 3 if asked is not None else 0
    if not o.feasible:
        blanks = 7 + int(cost) + int(measured) + int(energy) + queue
        return [mark, str(o.gpus), *["-"] * blanks, o.reason]
    row = [
        mark,
        str(o.gpus),
        str(o.grad_accum),
        fmt_duration(o.step_s or 0.0),
        fmt_percent(o.efficiency or 0.0),
        *([_measured_cell(o)] if measured else []),
        fmt_duration(o.wall_p50_s or 0.0),
        fmt_duration(o.wall_p95_s or 0.0),
        str(o.segments),
        f"{o.gpu_hours:,.4g}",
    ]
    if energy:
        row.append(f"{o.energy_kwh:,.4g}" if o.energy_kwh is not None else "-")
    if cost:
        row.append(f"{o.cost:,.2f}")
    if asked is not None:
        start = _moment_cell(o.start_time, asked, soon="now")
        row += [start, *(_moment_cell(m, asked) for m in (o.finish_p50, o.finish_p95))]
        if o.start_status == "never":
            row[-3] = "never"
    return [*row, o.reason]


def _moment_cell(moment: float | None, now: float, soon: str = "") -> str:
    """20:31 UTC, or with its date on another day; ``soon`` within a minute; "?" unknown."""
    if moment is None:
        return "?"
    if soon and moment - now < 60:
        return soon
    return short_moment_text(moment, now).split(" (")[0]


def _queue_rows(plan: Plan) -> list[tuple[str, str]]:
    """When the run would start and finish, queue included (planner.model.queue_finish)."""
    if plan.queue_checked_at is None:
        if not plan.queue_note:
            return []
        return [("queue", f"{plan.queue_note}; the node count is chosen by run time")]
    now = plan.queue_checked_at
    asked = plan.queue_asked or len(plan.options)
    took = f", {asked} asks in {plan.queue_took_s or 0.0:.2f} s"
    if plan.start_time is None:
        return [
            ("queue", f"start unknown: {plan.queue_note} (sbatch --test-only{took})"),
        ]
    start = "now" if plan.start_time - now < 60 else moment_text(plan.start_time, now)
    rows = [
        ("starts", f"{start}: Slurm's estimate (sbatch --test-only{took})"),
        ("waits", _waits_text(plan)),
        (
            "finish",
            f"P50 {moment_text(plan.finish_p50, now)}, P95 {moment_text(plan.finish_p95, now)}"
            f" (start + run + waits between segments; chosen by {plan.choose_by})",
        ),
    ]
    if plan.segment_length:
        rows.append(("--time", plan.segment_length))
    if plan.choice_other:
        rows.append(("other rule", plan.choice_other))
    return rows


def _waits_text(plan: Plan) -> str:
    between = len(plan.segments) - 1
    if between == 0:
        return "none between segments (one job)"
    if not plan.wait_jobs:
        return f"{between} between segments, {plan.wait_source}: counted as zero"
    return (
        f"{between} between segments, median {fmt_duration(plan.wait_median_s or 0.0)}, "
        f"P90 {fmt_duration(plan.wait_p90_s or 0.0)} each ({plan.wait_source})"
    )


def _segment_rows(segments: tuple[Segment, ...]) -> list[tuple[str, str]]:
    def row(s: Segment) -> tuple[str, str]:
        return (
            f"  segment {s.index}",
            f"--time={slurm_minutes(s.time_limit_minutes)} "
            f"--time-min={slurm_minutes(s.time_min_minutes)}; {s.steps_planned:,} steps "
            f"planned (P95), ~{s.steps_p50:,} expected (P50)",
        )

    if len(segments) <= _MAX_SEGMENT_ROWS:
        return [row(s) for s in segments]
    middle = len(segments) - 4
    return [
        *(row(s) for s in segments[:2]),
        ("  ...", f"{middle} more like segment 2"),
        *(row(s) for s in segments[-2:]),
    ]


def _checkpoint_text(plan: Plan) -> str:
    ck = plan.checkpoint
    every = (
        f"every {ck.interval_steps:,} steps ({fmt_duration(ck.interval_s)}), save "
        f"{fmt_duration(ck.save_s)}, expected overhead {fmt_percent(ck.overhead)}"
    )
    if ck.method == "user":
        return f"{every}; set by checkpoint.interval_steps (Daly: {fmt_duration(ck.daly_s)})"
    return f"{every}; Daly optimum {fmt_duration(ck.daly_s)} (Young {fmt_duration(ck.young_s)})"


def _jobs(plan: Plan) -> str:
    if len(plan.segments) == 1:
        return "1 job"
    limit = plan.partition.max_time_minutes if plan.partition else None
    return f"{len(plan.segments)} jobs chained with afterany (MaxTime {limit} min each)"


def _gpu_hours(plan: Plan) -> str:
    units = units_of(plan.spec)
    text = f"{plan.gpu_hours:,.4g} at P50"
    if units.cpu_only:
        text += (
            f" = {units.core_hours(plan.gpu_hours):,.4g} core-hours (one task of "
            f"{units.task_cpus} a node)"
        )
    if plan.cost is not None:
        per = units.hours.removesuffix("s")
        text += f", cost {plan.cost:,.2f} at {plan.spec.plan.gpu_hour_cost:g} per {per}"
    if plan.deadline_hours is not None:
        text += f"; deadline {plan.deadline_hours:g} h (P95)"
    return text


def _energy_rows(plan: Plan) -> list[tuple[str, str]]:
    """The GPUs' energy beside their hours; a CPU-only plan has no GPU power to show."""
    if units_of(plan.spec).cpu_only:
        return []
    if plan.energy_kwh is None:
        return [("energy", plan.energy_note or "unknown")]
    return [("energy", f"{plan.energy_kwh:,.4g} kWh at P50 = {plan.energy_note}")]


def _difference(estimate_s: float, p50_s: float) -> str:
    if not math.isfinite(estimate_s) or p50_s <= 0:
        return "-"
    return f"{(estimate_s - p50_s) / p50_s:+.1%}"


def _measured_cell(o: NodeOption) -> str:
    if o.measured_efficiency is None:
        return ""
    return f"{fmt_percent(o.measured_efficiency)} ({fmt_duration(o.measured_step_s or 0.0)})"


def _scaling_rows(plan: Plan) -> list[tuple[str, str]]:
    """A multi-node calibration's model and how far the choice extrapolates from it."""
    if not plan.scaling_model:
        return []
    rows = [("scaling", plan.scaling_model)]
    if plan.extrapolation:
        rows.append(("", plan.extrapolation))
    return rows
