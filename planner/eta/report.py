"""plan-job eta's output: a table, a JSON object (one line per refresh under --watch), and
the --watch loop that redraws them."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import TextIO

from planner.clock import clock_text, moment_text
from planner.eta.estimate import Eta
from planner.eta.outlook import ChainOutlook, SegmentOutlook
from planner.textwidth import fit_table
from planner.units import fmt_duration, fmt_percent


def eta_table(eta: Eta, width: int | None = None) -> str:
    rows: list[tuple[str, str]] = [("now", clock_text(eta.now, seconds=True))]
    rows.append(("source", _source_text(eta)))
    rows.append(
        (
            "progress",
            f"{fmt_percent(eta.fraction)}: step {eta.done_step:,} of {eta.total_steps:,} "
            f"({eta.status})",
        )
    )
    st, rem = eta.step_time, eta.remaining
    if st is not None:
        cuts = ", ".join(str(c) for c in st.warmup_cut)
        rows.append(
            (
                "step time",
                f"{_fmt_step(st.mean_s)} ± {fmt_percent(st.ci_high_s / st.mean_s - 1)} "
                f"(95% CI; median {_fmt_step(st.median_s)}, p10-p90 {_fmt_step(st.p10_s)} to "
                f"{_fmt_step(st.p90_s)}; last {st.window} steady steps"
                + (f", warm-up cut per job: {cuts})" if eta.kind == "progress" else ")"),
            )
        )
    else:
        rows.append(("step time", f"unknown (timing: {eta.timing})"))
    if rem is not None:
        parts = [f"{rem.steps:,} steps {fmt_duration(rem.steps_s)}"]
        if rem.saves:
            parts.append(f"{rem.saves} saves {fmt_duration(rem.saves_s)}")
        if rem.resumes:
            parts.append(f"{rem.resumes} resumes {fmt_duration(rem.resumes_s)}")
        rows.append(
            (
                "remaining",
                f"{fmt_duration(rem.p50_s)} P50, {fmt_duration(rem.p95_s)} P95 "
                f"({', '.join(parts)})",
            )
        )
    rows += _finish_rows(eta)
    if eta.baseline is not None:
        b = eta.baseline
        rows.append(
            (
                "seed method 2",
                f"{fmt_duration(b.remaining_s)} remaining: mean {_fmt_step(b.mean_s)} of all "
                f"{b.samples:,} logged steps, warm-up included, no saves or resumes",
            )
        )
    if eta.segment is not None:
        rows += _segment_rows(eta, eta.segment)
    if eta.chain is not None:
        rows += _chain_rows(eta.chain)
    rows += _queued_rows(eta)
    for index, note in enumerate(eta.notes):
        rows.append(("notes" if index == 0 else "", note))
    return fit_table(rows, ("eta", eta.target), width=width)


def eta_json(eta: Eta, indent: int | None = 2) -> str:
    return json.dumps(eta.to_dict(), indent=indent)


def eta_json_line(eta: Eta) -> str:
    """One line per refresh under --watch: JSON Lines a script can follow."""
    return eta_json(eta, indent=None)


def watch(
    compute: Callable[[], Eta],
    render: Callable[[Eta], str],
    interval_s: float,
    stream: TextIO,
    sleep: Callable[[float], None] = time.sleep,
    on_refresh: Callable[[Eta], None] | None = None,
) -> Eta:
    """Redraw every ``interval_s`` until the run is done or no job is left; on a terminal in
    place, elsewhere one block after another. ``on_refresh`` follows each redraw (the
    progress bar). Ctrl-C propagates (the CLI exits 130)."""
    tty = stream.isatty()
    while True:
        eta = compute()
        text = render(eta)
        if tty:
            stream.write("\033[H\033[2J" + text + "\n")
        else:
            # A blank line between tables; JSON Lines stay one object a line.
            stream.write(text + ("\n\n" if "\n" in text else "\n"))
        stream.flush()
        if on_refresh is not None:
            on_refresh(eta)
        if eta.watch_over:
            return eta
        sleep(interval_s)


def _source_text(eta: Eta) -> str:
    where = eta.run_dir or eta.path
    what = "trainer_state.json" if eta.kind == "trainer_state" else "progress"
    jobs = f", {eta.jobs_seen} jobs so far" if eta.kind == "progress" else ""
    return f"{where} ({what}{jobs})"


def _finish_rows(eta: Eta) -> list[tuple[str, str]]:
    """The finish as a date, a time and its zone, and how far off: never a bare clock."""
    if eta.status == "done":
        return [("finished", moment_text(eta.finish_p50, eta.now) if eta.finish_p50 else "done")]
    if eta.finish_p50 is None:
        if eta.chain is not None and not eta.chain.enough_p50:
            return [("finish", "not with the jobs queued (see chain)")]
        return [("finish", "unknown: no job of the run is running" if eta.remaining else "unknown")]
    p95 = eta.finish_p95
    return [
        ("finish P50", moment_text(eta.finish_p50, eta.now)),
        ("finish P95", moment_text(p95, eta.now) if p95 is not None else "beyond the queued jobs"),
    ]


def _segment_rows(eta: Eta, seg: SegmentOutlook) -> list[tuple[str, str]]:
    now = eta.now
    rows = [("segment", f"job {seg.job_id} {seg.state}, ends {moment_text(seg.end_time, now)}")]
    rows[0] = (rows[0][0], rows[0][1] + f" by {seg.end_source}")
    if seg.finishes_run:
        rows.append(("segment stop", "none: the run finishes before the job's end"))
    elif seg.stop_step_p50 is not None and seg.stop_time and seg.end_time:
        rows.append(
            (
                "segment stop",
                f"~step {seg.stop_step_p50:,} P50 ({seg.stop_step_p95:,} P95), stepping ends "
                f"{moment_text(seg.stop_time, now)}; its save is done "
                f"{fmt_duration(seg.end_time - seg.stop_time - seg.save_s)} before the end",
            )
        )
    if seg.next_checkpoint_step is not None:
        verdict = "before the stop" if seg.next_checkpoint_in_time else "NOT before the stop"
        rows.append(
            (
                "next checkpoint",
                f"step {seg.next_checkpoint_step:,} at "
                f"{moment_text(seg.next_checkpoint_time, now)}: {verdict}",
            )
        )
    return rows


def _queued_rows(eta: Eta) -> list[tuple[str, str]]:
    """Each pending segment's expected start: Slurm's, or the wait model's."""
    rows = []
    for index, q in enumerate(eta.queued):
        name = f"segment {q.segment}" if q.segment is not None else "job"
        when = moment_text(q.start, eta.now) if q.start is not None else "unknown"
        rows.append(
            ("starts" if index == 0 else "", f"{name} (job {q.job_id}): {when}, {q.source}")
        )
    return rows


def _chain_rows(chain: ChainOutlook) -> list[tuple[str, str]]:
    if chain.segments:
        head = (
            f"{chain.segments} segments ({chain.ended} ended, {chain.running} running, "
            f"{chain.pending} pending)"
        )
    else:
        head = "no jobs.yaml: this job only"
    if chain.enough_p50:
        where = f" in segment {chain.finish_segment_p50}" if chain.finish_segment_p50 else ""
        verdict = f"enough: the run finishes{where} at P50"
        if not chain.enough_p95:
            verdict += f", {chain.missing_steps_p95:,} steps short at P95"
    else:
        verdict = (
            f"NOT enough: the run stops at step {chain.end_step_p50:,} P50 "
            f"({chain.end_step_p95:,} P95)"
        )
    rows = [("chain", f"{head}: {verdict}")]
    if chain.advice:
        rows.append(("", chain.advice))
    return rows


def _fmt_step(seconds: float) -> str:
    """Three significant digits, trailing zeros kept: a step time is compared, not read."""
    if not math.isfinite(seconds):
        return "-"
    value, unit = (seconds * 1e3, "ms") if seconds < 1 else (seconds, "s")
    return f"{value:.0f} {unit}" if value >= 100 else f"{value:#.3g} {unit}"
