"""The accuracy benchmark's tables: each run's terms and jobs, and the summary over runs."""

from __future__ import annotations

import statistics
from typing import Any

from tabulate import tabulate

from bench.accuracy_analysis import AT_RUN_STEP, METHODS, RunResult

_JOB_HEADERS = (
    "job",
    "state",
    "elapsed s",
    "--time min",
    "steps",
    "stop",
    "training s",
    "outside s",
)


def run_table(result: RunResult, actual: str = "sacct") -> str:
    """Term by term: what the plan said, what the run spent (``actual``: what measured it)."""
    p, a = result.predicted, result.actual_terms
    counted = a["steps_s"] + a["checkpoints_s"] + a["evals_s"]
    outside = a["outside_s"]
    rows = [
        (
            "steps (+ warm-up, compile)",
            p["term_steps_s"] + p["term_warmup_s"] + p.get("term_compile_s", 0.0),
            a["steps_s"],
        ),
        ("checkpoint saves", p["term_checkpoints_s"], a["checkpoints_s"]),
        ("evaluations", p["term_evals_s"], a["evals_s"]),
        ("between steps: loop, probe save", 0.0, result.sacct_s - outside - counted),
        (
            "outside: job, start-up, load, exit",
            p["term_startup_s"] + p["term_resumes_s"],
            outside,
        ),
        ("interruptions", p["term_failures_s"], 0.0),
        (f"total (P50 | {actual})", p["p50_s"], result.sacct_s),
    ]
    terms = tabulate(
        [(n, f"{x:.2f}", f"{y:.2f}", f"{y - x:+.2f}") for n, x, y in rows],
        headers=(result.name, "predicted s", "actual s", "actual - predicted"),
    )
    jobs = tabulate(
        [
            (
                j.job_id,
                j.state,
                f"{j.elapsed_s:.0f}",
                f"{(j.timelimit_s or 0) / 60:.0f}",
                j.steps,
                j.stop_reason,
                f"{j.training_s:.1f}",
                f"{j.outside_s:.1f}",
            )
            for j in result.jobs
        ],
        headers=_JOB_HEADERS,
    )
    counts = (
        f"{result.total_steps} steps at {result.step_s * 1e3:.2f} ms; saves "
        f"{a['saves']:.0f}, evaluations {a['evals']:.0f}, loads {a['loads_s']:.2f} s; "
        f"{result.segments_planned} jobs planned, {a['jobs_training']:.0f} trained"
    )
    ms = result.steps_ms
    counts += (
        f"\nstep ms: calibrated mean {ms['calibrated_mean']:.2f}, median "
        f"{ms['calibrated_median']:.2f}; run (each job's first step out) mean "
        f"{ms['run_mean']:.2f}, median "
        f"{ms['run_median']:.2f}; load average before/after "
        + "/".join(f"{x:.2f}" for x in result.load_average)
    )
    return f"{terms}\n\n{jobs}\n{counts}"


def summary_rows(results: list[RunResult]) -> list[tuple[Any, ...]]:
    rows = []
    for r in results:
        if not r.ok and not r.sacct_s:
            rows.append((r.name, "FAILED", *[""] * 11))
            continue
        e = r.errors_pct
        rows.append(
            (
                r.name,
                f"{r.calibration_s:.0f}",
                f"{r.predicted['p50_s']:.1f}",
                f"{r.predicted['p95_s']:.1f}",
                f"{r.sacct_s:.0f}",
                f"{r.training_clock_s:.1f}",
                f"{e['plan-job P50']:+.1f}",
                f"{e[AT_RUN_STEP[0]]:+.1f}" if AT_RUN_STEP[0] in e else "",
                "yes" if r.in_band else "no",
                "yes" if r.inside_time else "NO",
                f"{e['method 1']:+.1f}",
                f"{e['FLOP estimate']:+.1f}",
                f"{r.calibration_s / r.sacct_s * 100:.1f}",
            )
        )
    return rows


SUMMARY_HEADERS = (
    "config",
    "cal s",
    "P50 s",
    "P95 s",
    "sacct s",
    "train clock s",
    "err %",
    "err % at run's step",
    "in [P50,P95]",
    "in --time",
    "method 1 err %",
    "FLOP err %",
    "cal % of run",
)


TARGETS = (
    "targets: plan-job median |error| <= 3%, max <= 8%; every run inside its --time; "
    "calibration <= 10% of the run"
)


def report(
    results: list[RunResult], actual: str = "sacct", targets: str = TARGETS
) -> dict[str, Any]:
    """Print the tables; return the summary figures for the JSON file. ``actual`` names what
    measured the runs' time (sacct's Elapsed; a local run's wall clock)."""
    for r in results:
        if r.ok or r.sacct_s:
            print(f"\n{run_table(r, actual)}")
    headers = tuple(f"{actual} s" if h == "sacct s" else h for h in SUMMARY_HEADERS)
    print("\n" + tabulate(summary_rows(results), headers=headers, disable_numparse=True))
    measured = [r for r in results if r.sacct_s > 0]
    failed = [r.name for r in results if not r.ok]
    summary: dict[str, Any] = {"runs": len(results), "measured": len(measured), "failed": failed}
    for label, _ in (*METHODS, AT_RUN_STEP):
        errors = [r.errors_pct[label] for r in measured if label in r.errors_pct]
        if errors:
            summary[label] = {
                "median_abs_pct": statistics.median(abs(x) for x in errors),
                "max_abs_pct": max(abs(x) for x in errors),
                "mean_pct": statistics.fmean(errors),
            }
    if measured:
        summary["inside_time_share"] = sum(r.inside_time for r in measured) / len(measured)
        summary["in_band_share"] = sum(r.in_band for r in measured) / len(measured)
        cost = [r.calibration_s / r.sacct_s * 100 for r in measured]
        summary["calibration_pct"] = {"median": statistics.median(cost), "max": max(cost)}
    print()
    for label, _ in (*METHODS, AT_RUN_STEP):
        if label in summary:
            s = summary[label]
            print(
                f"{label:30s} |error| median {s['median_abs_pct']:.1f}%, max "
                f"{s['max_abs_pct']:.1f}% (mean signed {s['mean_pct']:+.1f}%)"
            )
    if measured:
        print(
            f"inside their --time: {summary['inside_time_share']:.0%} of runs; actual inside "
            f"[P50, P95]: {summary['in_band_share']:.0%}; calibration cost: median "
            f"{summary['calibration_pct']['median']:.1f}%, max "
            f"{summary['calibration_pct']['max']:.1f}% of the run"
        )
    if failed:
        print(f"failed or cut short (see above and the JSON): {', '.join(failed)}")
    print(targets)
    return summary
