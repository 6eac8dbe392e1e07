"""Time to result, fast tier: Slurm's answers parsed strictly (recorded from the test cluster,
Slurm 22.05), the partition's waits, and the node count chosen by the earliest finish.

The real controller's answers are tested in tests/test_queue_slurm.py.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from planner.errors import CommandError
from planner.history import database as history
from planner.history.recorded_waits import recorded_waits
from planner.model.plan import Plan
from planner.model.queue_finish import QueueProbe, prefer_recorded
from planner.model.queue_forecast import forecast_of
from planner.model.report import summary_table
from planner.shell import CommandResult
from planner.slurm.queue_waits import QueueWaits, partition_waits, quantile
from planner.slurm.start_estimate import (
    StartEstimate,
    StartRequest,
    estimate_start,
    estimate_starts,
    parse_test_only,
)
from planner.units import fmt_duration
from tests.builders import partition, plan_for, record_for, spec_with

FIXTURES = Path(__file__).parent / "fixtures"
NOW = dt.datetime(2026, 12, 3, 20, 0, 0).timestamp()


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def answer(text: str, code: int = 0) -> object:
    """A runner that answers every command with ``text`` on stderr, as sbatch does."""

    def run(argv: Sequence[str]) -> CommandResult:
        if code:
            raise CommandError(list(argv), code, "", text)
        return CommandResult(tuple(argv), 0, "", text)

    return run


REQUEST = StartRequest(
    nodes=2, time_minutes=3, time_min_minutes=2, tasks_per_node=2, cpus_per_task=1,
    gpus_per_node=2, partition="gpu",
)  # fmt: skip


def test_the_request_is_the_segments_options() -> None:
    assert REQUEST.argv() == [
        "sbatch", "--test-only", "--partition=gpu", "--nodes=2", "--ntasks-per-node=2",
        "--cpus-per-task=1", "--gres=gpu:2", "--time=3", "--time-min=2", "--wrap=true",
    ]  # fmt: skip


def test_a_recorded_start_is_read() -> None:
    start, where = parse_test_only(fixture("sbatch_test_only.txt"))
    assert start == dt.datetime(2026, 12, 3, 20, 39, 16).timestamp()
    assert where == "on nodes n[1-2] in partition gpu"
    found = estimate_start(REQUEST, answer(fixture("sbatch_test_only.txt")))  # type: ignore[arg-type]
    assert (found.nodes, found.status, found.start) == (2, "ok", start)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sbatch: Job 25 to start at soon using 4 processors on nodes n1 in partition gpu",
        "sbatch: Job 25 to start at 2026-12-03T20:39:16 using 4 processors on nodes n1",
        # two answers for one ask: not guessed at
        "sbatch: Job 1 to start at 2026-12-03T20:39:16 using 1 processors on nodes n1 in "
        "partition gpu\nsbatch: Job 2 to start at 2026-12-03T20:40:16 using 1 processors on "
        "nodes n1 in partition gpu",
    ],
)
def test_anything_else_is_unknown_not_guessed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_test_only(text)
    found = estimate_start(REQUEST, answer(text))  # type: ignore[arg-type]
    assert (found.status, found.start) == ("unknown", None)
    assert "unrecognised answer" in found.reason


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("sbatch_test_only_never.txt", "Requested node configuration is not available"),
        ("sbatch_test_only_bad_partition.txt", "Invalid partition name specified"),
    ],
)
def test_a_job_that_could_never_start_says_why(name: str, says: str) -> None:
    found = estimate_start(REQUEST, answer(fixture(name), code=1))  # type: ignore[arg-type]
    assert (found.status, found.start) == ("never", None)
    assert says in found.reason


def test_a_dead_controller_is_unknown() -> None:
    run = answer("sbatch: error: Unable to contact slurm controller (connect failure)", code=1)
    found = estimate_start(REQUEST, run)  # type: ignore[arg-type]
    assert found.status == "unknown" and "did not answer" in found.reason


def test_every_node_count_is_asked_in_order() -> None:
    asked: list[str] = []

    def run(argv: Sequence[str]) -> CommandResult:
        nodes = next(a for a in argv if a.startswith("--nodes="))
        asked.append(nodes)
        n = int(nodes.split("=")[1])
        text = (
            f"sbatch: Job 1 to start at 2026-12-03T20:0{n}:00 using 1 processors on nodes n1 "
            "in partition gpu"
        )
        return CommandResult(tuple(argv), 0, "", text)

    requests = [StartRequest(n, 3, 2, 2, 1, 2, "gpu") for n in range(1, 9)]
    found = estimate_starts(requests, run, workers=3)
    assert [f.nodes for f in found] == list(range(1, 9))
    assert [dt.datetime.fromtimestamp(f.start or 0).minute for f in found] == list(range(1, 9))
    assert sorted(asked) == sorted(f"--nodes={n}" for n in range(1, 9))


def test_the_partitions_waits_from_recorded_accounting() -> None:
    text = fixture("sacct_waits.txt")

    def run(argv: Sequence[str]) -> CommandResult:
        assert "--partition=gpu" in argv and "--starttime=now-14days" in argv
        return CommandResult(tuple(argv), 0, text, "")

    one = partition_waits("gpu", 1, 14, run)
    # Six 1-node jobs started, each at once (job 21 was cancelled before it started: left out).
    assert (one.jobs, one.median_s, one.p90_s) == (6, 0.0, 0.0)
    two = partition_waits("gpu", 2, 14, run)
    # Job 11 became eligible at 20:28:58 and started at 20:30:33.
    assert (two.jobs, two.median_s, two.p90_s) == (1, 95.0, 95.0)
    assert "1 job(s) of 2 node(s) in partition gpu, last 14 days" in two.source
    none = partition_waits("gpu", 4, 14, run)
    assert (none.jobs, none.median_s, none.known) == (0, None, False)


def test_without_accounting_the_waits_are_unknown() -> None:
    run = answer("sacct: error: Problem talking to the database: Connection refused", code=1)
    found = partition_waits("gpu", 1, 14, run)  # type: ignore[arg-type]
    assert (found.jobs, found.known) == (0, False)
    assert (
        found.source.startswith("unknown: no accounting") and "Connection refused" in found.source
    )


def test_quantiles_a_reader_can_check() -> None:
    waits = [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0]
    assert (quantile(waits, 0.5), quantile(waits, 0.9)) == (50.0, 90.0)


# -- the choice ------------------------------------------------------------------------------


def probe(starts: dict[int, float | str], waits: QueueWaits | None = None) -> QueueProbe:
    """Start estimates as data: seconds after NOW, or "never"/"unknown"."""
    calls: list[int] = []

    def ask(requests: Sequence[StartRequest]) -> list[StartEstimate]:
        calls.extend(r.nodes for r in requests)
        out = []
        for r in requests:
            s = starts.get(r.nodes, "unknown")
            if isinstance(s, str):
                out.append(StartEstimate(r.nodes, None, s, f"Slurm says {s}", 0.01))
            else:
                out.append(StartEstimate(r.nodes, NOW + s, "ok", "", 0.01))
        return out

    found = QueueProbe(ask, lambda n: waits or QueueWaits(None, None, 0, "unknown: none"), NOW)
    found.calls = calls  # type: ignore[attr-defined]
    return found


# The reference plan on 1..4 nodes of 4 GPUs (3 cannot split the batch): by run time alone,
# 4 nodes are the fastest.
SPEC = dict(plan__max_nodes=4, plan__efficiency_floor=0.5)


def test_by_finish_a_node_count_that_starts_now_beats_a_faster_one_that_waits() -> None:
    spec = spec_with(**SPEC)
    by_run = plan_for(spec)
    assert by_run.nodes == 4 and by_run.queue_checked_at is None
    queue = probe({1: 0.0, 2: 0.0, 3: 6 * 3600.0, 4: 6 * 3600.0})
    plan = plan_for(spec, queue=queue)
    options = {o.nodes: o for o in plan.options}
    run2 = options[2].wall_p50_s or 0.0
    # 2 nodes start now and finish after their run; 3 and 4 wait six hours first.
    assert plan.nodes == 2 and plan.choose_by == "finish"
    assert plan.finish_p50 == pytest.approx(NOW + run2)
    assert options[4].finish_p50 == pytest.approx(NOW + 6 * 3600 + (options[4].wall_p50_s or 0))
    assert "by run time alone 4 node(s) would be chosen" in plan.choice_other
    assert "earliest P50 finish" in plan.choice_reason


def test_choose_by_run_keeps_the_fastest_and_still_shows_the_finish() -> None:
    queue = probe({1: 0.0, 2: 0.0, 3: 6 * 3600.0, 4: 6 * 3600.0})
    plan = plan_for(spec_with(**SPEC, plan__choose_by="run"), queue=queue)
    assert plan.nodes == 4 and plan.choose_by == "run" and plan.choice_other == ""
    assert plan.start_time == NOW + 6 * 3600


def test_a_node_count_slurm_would_never_start_is_not_chosen() -> None:
    plan = plan_for(spec_with(**SPEC, plan__choose_by="run"), queue=probe({4: "never"}))
    assert plan.nodes == 2  # 3 nodes cannot split the batch of 256 into 12 GPUs' 8s
    assert {o.nodes: o.reason for o in plan.options}[4] == "Slurm says never"


def test_waits_between_segments_are_counted_once_per_extra_segment() -> None:
    # MaxTime 20 min: every node count is a chain; the partition's waits: median 10 min, P90 30.
    waits = QueueWaits(600.0, 1800.0, 12, "sacct: 12 job(s)")
    plan = plan_for(
        spec_with(**SPEC), partition(20 * 60), queue=probe({1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0}, waits)
    )
    chosen = next(o for o in plan.options if o.chosen)
    between = (chosen.segments or 1) - 1
    assert between >= 1
    assert plan.finish_p50 == pytest.approx(NOW + (chosen.wall_p50_s or 0) + between * 600)
    assert plan.finish_p95 == pytest.approx(NOW + (chosen.wall_p95_s or 0) + between * 1800)
    assert (plan.wait_median_s, plan.wait_p90_s, plan.wait_jobs) == (600.0, 1800.0, 12)


def test_with_a_deadline_the_fewest_gpu_hours_whose_p95_finish_meets_it() -> None:
    # 1 node would meet 3 h on its run alone but starts in 2.5 h; 2 nodes start now.
    queue = probe({1: 2.5 * 3600, 2: 0.0, 3: 0.0, 4: 0.0})
    plan = plan_for(spec_with(**SPEC), queue=queue, deadline_hours=3.0)
    assert plan.nodes == 2
    assert "P95 finish" in plan.choice_reason
    assert (plan.finish_p95 or 0) <= NOW + 3 * 3600


def test_no_finish_known_plans_by_run_time_and_says_so() -> None:
    plan = plan_for(spec_with(**SPEC), queue=probe({}))
    assert plan.nodes == 4 and plan.choose_by == "run"
    assert "the queue is unknown" in plan.choice_reason


def test_slurm_is_asked_once_for_the_plan_with_and_without_the_correction() -> None:
    queue = probe({1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0})
    spec = spec_with(**SPEC)
    plan_for(spec, queue=queue)
    plan_for(spec, queue=queue)
    assert sorted(queue.calls) == [1, 2, 4]  # type: ignore[attr-defined]


# -- what the history keeps of it --------------------------------------------------------------


def recorded_forecast(plan: Plan, tmp_path: Path) -> dict[str, float | None]:
    db = tmp_path / "h.sqlite"
    history.record_plan(plan, tmp_path / "run", path=db, queue=forecast_of(plan))
    names = (
        "first_wait_s", "first_wait_p95_s", "wait_p50_s", "wait_p95_s", "finish_p50_s",
        "finish_p95_s",
    )  # fmt: skip
    with history.connect(db) as conn:
        row = conn.execute(f"SELECT {', '.join(names)} FROM plans").fetchone()
    return {name: row[name] for name in names}


def test_a_plan_with_a_start_estimate_records_its_forecast(tmp_path: Path) -> None:
    # A chain (MaxTime 20 min) whose first segment starts 15 min after Slurm was asked; the
    # partition's waits: median 10 min, P90 30 min, P95 40 min.
    waits = QueueWaits(600.0, 1800.0, 12, "sacct: 12 job(s)", p95_s=2400.0)
    starts = probe({1: 900.0, 2: 900.0, 3: 900.0, 4: 900.0}, waits)
    plan = plan_for(spec_with(**SPEC), partition(20 * 60), queue=starts)
    assert len(plan.segments) > 1 and plan.wait_p95_s == 2400.0
    assert recorded_forecast(plan, tmp_path) == {
        "first_wait_s": 900.0,
        "first_wait_p95_s": None,  # one moment from Slurm: no band to check
        "wait_p50_s": 600.0,
        "wait_p95_s": 2400.0,  # the waits' own P95, not the P90 (1800 s)
        "finish_p50_s": pytest.approx((plan.finish_p50 or 0) - NOW),
        "finish_p95_s": pytest.approx((plan.finish_p95 or 0) - NOW),
    }


def test_a_plan_without_the_queue_records_nulls(tmp_path: Path) -> None:
    plan = plan_for(spec_with(**SPEC), partition(20 * 60))
    assert plan.queue_checked_at is None
    assert set(recorded_forecast(plan, tmp_path).values()) == {None}


# -- the plan's own recorded waits first -----------------------------------------------------

SACCT = QueueWaits(600.0, 1800.0, 40, "sacct: 40 job(s)", p95_s=2400.0)


def test_five_recorded_waits_come_before_the_partitions() -> None:
    asked: list[int] = []

    def accounting() -> QueueWaits:
        asked.append(1)
        return SACCT

    # 0, 10, ..., 50 s: median 25 s, P90 45 s, P95 47.5 s (linear between order statistics).
    waits = prefer_recorded([50.0, 0.0, 10.0, 40.0, 20.0, 30.0], accounting, "1 node(s)", 14)
    assert (waits.median_s, waits.p90_s, waits.p95_s, waits.jobs) == (25.0, 45.0, 47.5, 6)
    assert waits.source == "history: 6 recorded job(s) of 1 node(s), last 14 days"
    assert asked == []  # sacct is not asked when the history has enough
    fewer = prefer_recorded([5.0] * 4, accounting, "1 node(s)", 14)
    assert (fewer.median_s, fewer.jobs) == (600.0, 40)
    assert fewer.source.endswith("(the history has 4 recorded job(s) of 1 node(s), fewer than 5)")
    assert prefer_recorded([], accounting, "1 node(s)", 14) == SACCT


def test_the_plan_says_its_waits_come_from_the_history() -> None:
    recorded = [60.0] * 5 + [120.0]
    starts = probe({1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0})
    starts.waits = lambda n: prefer_recorded(recorded, lambda: SACCT, f"{n} node(s)", 14)
    plan = plan_for(spec_with(**SPEC), partition(20 * 60), queue=starts)
    chosen = next(o for o in plan.options if o.chosen)
    between = (chosen.segments or 1) - 1
    assert between >= 1 and plan.wait_jobs == 6 and plan.wait_median_s == 60.0
    assert plan.wait_source.startswith("history: 6 recorded job(s)")
    assert plan.finish_p50 == pytest.approx(NOW + (chosen.wall_p50_s or 0) + between * 60.0)
    text = " ".join(summary_table(plan, width=250).split())
    assert f"(history: 6 recorded job(s) of {plan.nodes} node(s), last 14 days)" in text


def test_the_history_reads_the_recorded_waits_of_the_kind_partition_and_node_count(
    tmp_path: Path,
) -> None:
    """Two runs of the reference spec (on 2 and on 4 nodes) and one of another workload; a
    job that started 20 days ago and one with no eligible time are left out."""
    db = tmp_path / "h.sqlite"
    spec = spec_with(**SPEC)
    other = spec_with(**SPEC, workload={"name": "jit", "preset": "B/4"})
    part = partition(20 * 60)
    for name, n, s in (("two", 2, spec), ("four", 4, spec), ("other", 2, other)):
        plan = plan_for(s, part, nodes=n)
        history.record_plan(plan, tmp_path / name, path=db, record=record_for(s))
    rows = [  # run, job, eligible (s before NOW), waited (s)
        ("two", "1", 3600, 30.0), ("two", "2", 1800, 90.0), ("four", "3", 3600, 600.0),
        ("other", "4", 3600, 5.0), ("two", "5", 20 * 86_400, 7.0), ("two", "6", None, 8.0),
    ]  # fmt: skip
    with sqlite3.connect(db) as conn:
        for run, job, ago, waited in rows:
            eligible = None if ago is None else NOW - ago
            start = (NOW - 600) if eligible is None else eligible + waited
            conn.execute(
                "INSERT INTO outcomes (recorded, run_dir, job_id, attempt, start_time,"
                " eligible_time) VALUES (?, ?, ?, 0, ?, ?)",
                (NOW, str((tmp_path / run).resolve()), job, start, eligible),
            )
    found = recorded_waits(spec, part, 14, db, record=record_for(spec), now=NOW)
    assert found == {2: [30.0, 90.0], 4: [600.0]}


# -- segment length against the backfill window ----------------------------------------------


def length_probe(full_at: float, short_at: float, waits: QueueWaits) -> QueueProbe:
    """Every node count's first segment starts ``full_at`` s after NOW at its planned --time,
    ``short_at`` at any shorter one (a backfill window that only a short job fits)."""
    planned: dict[int, int] = {}
    lengths: list[tuple[int, int]] = []

    def ask(requests: Sequence[StartRequest]) -> list[StartEstimate]:
        out = []
        for r in requests:
            lengths.append((r.nodes, r.time_minutes))
            full = planned.setdefault(r.nodes, r.time_minutes)  # the first ask: full length
            at = full_at if r.time_minutes >= full else short_at
            out.append(StartEstimate(r.nodes, NOW + at, "ok", "", 0.01))
        return out

    found = QueueProbe(ask, lambda n: waits, NOW)
    found.lengths = lengths  # type: ignore[attr-defined]
    return found


WAITS_10_MIN = QueueWaits(600.0, 1800.0, 12, "sacct: 12 job(s)", p95_s=2400.0)


def test_a_shorter_time_that_starts_hours_sooner_is_worth_its_extra_segments() -> None:
    spec = spec_with(**SPEC)
    # Everything starts now: nothing to weigh, the plan keeps its length and says nothing.
    full = plan_for(spec, partition(), queue=length_probe(0.0, 0.0, WAITS_10_MIN))
    assert full.segment_length == "" and len(full.segments) == 1
    first = full.segments[0].time_limit_minutes
    queue = length_probe(6 * 3600.0, 0.0, WAITS_10_MIN)
    plan = plan_for(spec, partition(), queue=queue)
    assert plan.nodes == full.nodes
    short = plan.segments[0].time_limit_minutes
    # One more ask: half the --time. The smallest length that holds a save is not shorter
    # (the checkpoint interval is longer than the run: its one save is at the end).
    assert (full.queue_asked, plan.queue_asked) == (3, 4)  # 1, 2 and 4 nodes; then 4 at 17 min
    assert short == first // 2
    extra = len(plan.segments) - 1  # the full length was one job
    assert extra >= 1
    # Its finish: starts now, its P50 run (with each extra segment's start-up, checkpoint load
    # and warm-up in it), and a median wait (10 min) before each extra segment.
    assert plan.finish_p50 == pytest.approx(NOW + plan.wall.p50_s + extra * 600.0)
    at_full = NOW + 6 * 3600 + full.wall.p50_s
    gain = at_full - (plan.finish_p50 or 0.0)
    assert gain == pytest.approx(6 * 3600 - (plan.wall.p50_s - full.wall.p50_s) - extra * 600.0)
    assert plan.segment_length.startswith(f"{short} min instead of {first}: it starts 6 h")
    assert f"its {extra} extra segment(s) cost" in plan.segment_length
    assert f"it finishes {fmt_duration(gain)} earlier at P50" in plan.segment_length
    text = " ".join(summary_table(plan, width=250).split())
    assert f"--time {short} min instead of {first}" in text


def test_a_shorter_time_that_saves_less_than_its_extra_segment_costs_is_not_taken() -> None:
    spec = spec_with(**SPEC)
    full = plan_for(spec, partition(), queue=length_probe(0.0, 0.0, WAITS_10_MIN))
    # Five minutes sooner cannot pay for a 10-minute wait before the extra segment.
    plan = plan_for(spec, partition(), queue=length_probe(300.0, 0.0, WAITS_10_MIN))
    assert plan.segments == full.segments and plan.wall == full.wall
    assert plan.finish_p50 == pytest.approx(NOW + 300.0 + full.wall.p50_s)
    first = full.segments[0].time_limit_minutes
    assert plan.segment_length.startswith(f"{first} min kept: at ")
    assert "it starts 5 min 00 s sooner" in plan.segment_length
    assert "later at P50" in plan.segment_length


def test_the_smallest_length_that_holds_a_save_is_asked_too() -> None:
    # A save every 100 steps: a job of 100 steps (about 7 min with its start-up and stop
    # reserve) saves once; it is asked beside half the --time, in the same round.
    spec = spec_with(**SPEC, checkpoint={"interval_steps": 100})
    queue = length_probe(6 * 3600.0, 0.0, WAITS_10_MIN)
    plan = plan_for(spec, partition(), queue=queue)
    asked = [t for n, t in queue.lengths if n == plan.nodes]  # type: ignore[attr-defined]
    first = asked[0]
    assert len(asked) == 3 and asked[1] == first // 2 and asked[2] < first // 2
    # Both start now; the longer of the two has fewer extra segments, so it finishes first.
    assert plan.segments[0].time_limit_minutes == first // 2
    assert plan.queue_asked == 5


def test_a_run_too_short_to_split_says_no_shorter_time_holds_a_save() -> None:
    # 20 steps: its one job's --time is 2 min, and 1 min cannot hold the stop reserve alone.
    spec = spec_with(**SPEC, data__samples=20 * 256)
    queue = length_probe(6 * 3600.0, 0.0, WAITS_10_MIN)
    plan = plan_for(spec, partition(), queue=queue)
    first = plan.segments[0].time_limit_minutes
    assert len(plan.segments) == 1 and plan.finish_p50 == NOW + 6 * 3600 + plan.wall.p50_s
    assert plan.segment_length == (
        f"{first} min kept: no shorter --time holds the start-up, a checkpoint save and the "
        "stop reserve"
    )
