"""The streaming progress reader (planner.runs.progress_reader) against the full parse it
replaced (tests/progress_oracle.py): the same summaries on damaged files, on long jobs read in
bulk, and when read again after lines were appended (`eta --watch`)."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

import pytest

from planner.eta import steps
from planner.runs.job_log import HEAD, RECENT, RECENT_SAVES
from planner.runs.progress import load_progress
from planner.runs.progress_reader import (
    CHECKPOINT_LINES_KEPT,
    EVALS_KEPT,
    ProgressReader,
    ProgressSummary,
    read_summary,
)
from tests.progress_oracle import FullRead, full_read, observed_interval, steady_step_time

T0 = 1_700_000_000.0


def line(event: str, t: float, **fields: Any) -> str:
    return json.dumps({"event": event, "time": t, **fields}) + "\n"


class Writer:
    """Progress lines as ProgressWriter writes them, with chosen times; and damage."""

    def __init__(self, seed: int = 0) -> None:
        self.parts: list[str | bytes] = []
        self.t = T0
        self.random = random.Random(seed)

    def start(self, step: int, job_id: str | None, total: int = 100_000) -> Writer:
        self.parts.append(
            line("start", self.t, step=step, total_steps=total, restart=0, job_id=job_id, host="n")
        )
        return self

    def resume(self, step: int, load_s: float) -> Writer:
        self.parts.append(line("resume", self.t, step=step, load_s=load_s, path=f"ckpt-{step}"))
        return self

    def steps(self, first: int, count: int, mean: float = 0.1, save_every: int = 0) -> Writer:
        for step in range(first, first + count):
            step_s = mean * (1 + 0.05 * self.random.random()) + (0.5 if step - first < 5 else 0)
            self.t += step_s
            self.parts.append(
                line("step", self.t, step=step, samples=step, tokens=step, step_s=step_s, loss=1.0)
            )
            if save_every and step % save_every == 0:
                self.t += 0.3
                self.parts.append(
                    line("checkpoint", self.t, step=step, save_s=0.3, path=f"ck{step}", bytes=1)
                )
        return self

    def raw(self, text: str | bytes) -> Writer:
        self.parts.append(text)
        return self

    def write(self, path: Path) -> Path:
        path.write_bytes(b"".join(p if isinstance(p, bytes) else p.encode() for p in self.parts))
        return path


def assert_same(summary: ProgressSummary, full: FullRead, rel: float = 0.0) -> None:
    """Every figure a summary keeps is what the full parse gives (sums within ``rel``)."""
    assert summary.events == full.events
    assert summary.total_steps == full.total_steps
    assert summary.evals == full.evals[-EVALS_KEPT:]
    assert summary.checkpoint_lines == full.checkpoint_lines[-CHECKPOINT_LINES_KEPT:]
    assert len(summary.jobs) == len(full.jobs)
    for job, old in zip(summary.jobs, full.jobs, strict=True):
        assert (job.index, job.job_id, job.start_time, job.start_step, job.load_s) == (
            old.index,
            old.job_id,
            old.start_time,
            old.start_step,
            old.load_s,
        )
        assert job.timed == len(old.step_times)
        assert job.timed_s == pytest.approx(math.fsum(old.step_times), rel=rel or 1e-12)
        assert job.head == old.step_times[:HEAD]
        assert job.recent == old.step_times[-RECENT:]
        assert (job.last_step, job.last_time, job.stop_reason) == (
            old.last_step,
            old.last_time,
            old.stop_reason,
        )
        assert job.saves == old.saves[-RECENT_SAVES:]
        assert (job.resumed, job.first_step_begin) == (old.resumed, old.first_step_begin)


def damaged(path: Path) -> Path:
    """Garbage, torn and out-of-order lines, as crashes, a second writer and hand edits leave."""
    w = Writer()
    w.steps(1, 3)  # lines before any start line: a job of their own
    w.start(0, "11").steps(1, 30, save_every=10)
    w.raw("not json at all\n").raw("[1, 2, 3]\n").raw("{}\n").raw('{"no_event": 1}\n')
    w.raw(b'{"event": "step", "time": 1.0, "step": \xff\xfe, "junk\n')  # not UTF-8
    w.raw('{"event": "step", "time": 17000000')  # torn: killed mid-write...
    w.raw("\n")  # ...and the next writer starts a fresh line
    w.raw(line("step", w.t + 1, step=31, step_s=float("nan"), loss=None))  # NaN: not timed
    w.raw(line("step", w.t + 2, step=None, step_s=0.2))  # no step number: not timed
    w.raw(line("step", w.t + 3, step=5, step_s=0.2))  # out of order, timed
    w.raw(line("step", w.t - 500, step=99, step_s=0.2))  # out of order: the newest step
    w.raw(line("checkpoint", w.t, step=None, save_s=0.1, path="ck-none"))
    w.raw(line("eval", w.t, step=30, eval_s=1.5, loss=2.0)).raw(line("eval", w.t, eval_s=0))
    w.raw(line("hang", w.t, step=30, phase="step", waited_s=300.0, timeout_s=300.0, rank=3))
    w.raw(line("mystery", w.t, step=12))
    w.raw(line("stop", w.t, step=30, reason="signal", signal="SIGUSR2"))
    w.raw('{"event": "step", "time": 1.0,\r "step": 40, "step_s": 0.1}\n')  # a stray \r
    # ProgressWriter's own shape, with what json.dumps writes at the edges: NaN, null
    # counts, peak memory, an infinity (json.loads reads 1e400 as one), a float step.
    w.raw(line("step", w.t + 4, step=41, samples=None, tokens=None, step_s=0.1, loss=float("nan")))
    w.raw(
        line(
            "step",
            w.t + 5,
            step=42,
            samples=1,
            tokens=2,
            step_s=0.1,
            loss=1.0,
            peak_memory_bytes=123,
        )
    )
    w.raw(
        '{"event": "step", "time": 1e400, "step": 43, "samples": 1, "tokens": 1, '
        '"step_s": 0.1, "loss": 1.0}\n'
    )
    w.raw(line("step", w.t + 6, step=44.0, samples=1, tokens=1, step_s=0.1, loss=1.0))
    w.start(30, "12").resume(30, 2.5).resume(30, 9.0).steps(31, 25, save_every=10)
    w.start(55, None).steps(56, 12)
    w.raw(line("failure", w.t, step=67, cause="no_space", message="No space left on device"))
    w.raw('{"event": "stop", "time": 5, "step"')  # torn last line, no newline
    return w.write(path)


def test_damaged_file_reads_as_the_full_parse(tmp_path: Path) -> None:
    path = damaged(tmp_path / "progress.jsonl")
    summary, full = read_summary(path), full_read(path)
    assert_same(summary, full)
    # The figures the ETA draws from them.
    history = load_progress(path)
    assert steps.steady_step_time(history.jobs) == steady_step_time(full.jobs)
    assert steps.observed_interval(history) == observed_interval(full.jobs)
    assert summary.jobs[1].events("hang")[0]["rank"] == 3
    assert summary.jobs[-1].events("failure")[0]["cause"] == "no_space"
    assert summary.jobs[1].last_step == 99  # the out-of-order line is still the newest step


def test_a_last_line_without_its_newline_counts_when_it_parses(tmp_path: Path) -> None:
    path = Writer().start(0, "1").steps(1, 12).write(tmp_path / "progress.jsonl")
    with open(path, "a") as handle:
        handle.write(line("stop", T0 + 99, step=12, reason="done").rstrip("\n"))
    assert_same(read_summary(path), full_read(path))
    assert read_summary(path).jobs[0].stop_reason == "done"


def long_run(path: Path, jobs: int = 3, per_job: int = 3 * HEAD, seed: int = 1) -> Path:
    """Jobs longer than HEAD steps, a checkpoint every 500: most lines are read in bulk."""
    w = Writer(seed)
    step = 0
    for index in range(jobs):
        w.start(step, f"{100 + index}")
        if step:
            w.resume(step, 1.5)
        w.steps(step + 1, per_job, mean=0.1 + 0.01 * index, save_every=500)
        step += per_job
        w.raw(line("stop", w.t, step=step, reason="time_limit"))
    return w.write(path)


def test_long_jobs_read_in_bulk_keep_the_full_parse_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = long_run(tmp_path / "progress.jsonl")
    parsed: list[bytes] = []
    one_by_one = ProgressReader._line
    monkeypatch.setattr(
        ProgressReader, "_line", lambda self, raw: parsed.append(raw) or one_by_one(self, raw)
    )
    summary, full = read_summary(path), full_read(path)
    # Each job's HEAD, its checkpoint, start and stop lines one by one; the rest in bulk.
    assert len(parsed) < 3 * (HEAD + 20) < full.events / 2
    # Bulk step_s sums come from the lines' times, stored to 0.24 us at 1.7e9 s: rounding.
    assert_same(summary, full, rel=1e-6)
    history = load_progress(path)
    new, old = steps.steady_step_time(history.jobs), steady_step_time(full.jobs)
    assert new is not None and old is not None
    assert new.warmup_cut == old.warmup_cut == (5, 5, 5)
    assert new.mean_s == old.mean_s and new.ci_high_s == old.ci_high_s
    assert new.warmup_excess_s == pytest.approx(old.warmup_excess_s, rel=1e-6)
    baseline = steps.baseline(history.jobs, 100)
    assert baseline is not None
    all_steps = [x for job in full.jobs for x in job.step_times]
    assert baseline.samples == len(all_steps)
    assert baseline.mean_s == pytest.approx(math.fsum(all_steps) / len(all_steps), rel=1e-6)


def test_a_bulk_run_that_is_not_one_step_a_line_is_read_line_by_line(tmp_path: Path) -> None:
    """Steps out of order, a line missing, garbage in the middle of a long run, and a run
    whose steps jump (log_every > 1): each fails the bulk check and is parsed line by line."""
    w = Writer(2).start(0, "7").steps(1, HEAD + 100)
    w.steps(HEAD + 300, 400)  # starts 199 steps after the previous line
    body = w.steps(HEAD + 700, 400).parts
    body[HEAD + 150], body[HEAD + 151] = body[HEAD + 151], body[HEAD + 150]  # swapped
    del body[HEAD + 450]  # a line missing
    body.insert(HEAD + 600, "garbage in the middle\n")
    w.raw(line("step", w.t + 1, step=10**6, step_s=0.1))
    for step in range(3):  # one line every 100 steps, step_s of the step alone
        w.raw(line("step", w.t + 50 * step, step=10**6 + 100 * (step + 1), step_s=0.1))
    path = w.write(tmp_path / "progress.jsonl")
    assert_same(read_summary(path), full_read(path), rel=1e-6)


def test_a_foreign_line_and_a_missing_step_in_one_run_do_not_cancel_out(tmp_path: Path) -> None:
    """One step line gone and one line of garbage in the same run: as many lines as steps,
    but not one a step; the run is parsed line by line."""
    body = Writer(4).start(0, "8").steps(1, HEAD + 500).parts
    del body[HEAD + 200]
    body.insert(HEAD + 400, "a line of someone else's\n")
    w = Writer()
    w.parts = body
    path = w.write(tmp_path / "progress.jsonl")
    summary, full = read_summary(path), full_read(path)
    assert summary.jobs[0].timed == HEAD + 499
    assert_same(summary, full, rel=1e-6)


def test_reading_on_from_where_it_stopped_gives_the_same_summary(tmp_path: Path) -> None:
    """`eta --watch` reads only what was appended; cut anywhere, even mid-line."""
    source = long_run(tmp_path / "whole.jsonl", jobs=2, per_job=HEAD + 700)
    data = damaged(tmp_path / "damaged.jsonl").read_bytes() + source.read_bytes()
    path = tmp_path / "progress.jsonl"
    reader = ProgressReader(path)
    cuts = [*sorted(random.Random(3).sample(range(1, len(data)), 12)), len(data)]
    written = 0
    for cut in cuts:
        with open(path, "ab") as handle:
            handle.write(data[written:cut])
        written = cut
        reader.refresh()
        assert_same(reader.snapshot(), full_read(path), rel=1e-6)
    assert reader.offset == len(data)


def test_a_replaced_or_shrunk_file_is_read_again_from_its_start(tmp_path: Path) -> None:
    path = long_run(tmp_path / "progress.jsonl", jobs=2, per_job=HEAD + 100)
    reader = ProgressReader(path)
    reader.refresh()
    assert len(reader.snapshot().jobs) == 2
    # Replaced by a new file (another inode) that is longer: read from its start.
    other = Writer().start(0, "9").steps(1, 50)
    other.raw(line("eval", T0, step=50, eval_s=1.0) * 40_000)
    replacement = other.write(tmp_path / "new.jsonl")
    os.replace(replacement, path)
    reader.refresh()
    assert_same(reader.snapshot(), full_read(path))
    # Cut short in place: read from its start too.
    with open(path, "r+b") as handle:
        handle.truncate(2000)
    reader.refresh()
    assert_same(reader.snapshot(), full_read(path))
    path.unlink()
    reader.refresh()
    assert not reader.exists and reader.snapshot().events == 0


def test_eta_watch_reads_only_what_was_appended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """eta_for with kept readers (what `eta --watch` and `submit --watch` keep between
    refreshes) reads only the new bytes, and gives the estimate a fresh read gives."""
    from planner.eta.estimate import eta_for

    path = long_run(tmp_path / "progress.jsonl", jobs=2, per_job=HEAD + 300)
    size = path.stat().st_size
    read: list[int] = []
    whole = ProgressReader._block
    monkeypatch.setattr(
        ProgressReader,
        "_block",
        lambda self, block, length: read.append(length) or whole(self, block, length),
    )
    readers: dict[Path, ProgressReader] = {}
    first = eta_for(str(path), readers=readers, now=T0 + 10**6)
    assert sum(read) == size and first.done_step == 2 * (HEAD + 300)
    added = line("start", T0 + 10**5, step=4600, total_steps=9000, job_id="5") + "".join(
        line("step", T0 + 10**5 + step, step=step, step_s=0.12) for step in range(4601, 4700)
    )
    with open(path, "a") as handle:
        handle.write(added)
    read.clear()
    kept = eta_for(str(path), readers=readers, now=T0 + 10**6)
    assert sum(read) == len(added)
    fresh = eta_for(str(path), now=T0 + 10**6)
    assert kept == fresh and kept.done_step == 4699 and kept.total_steps == 9000
