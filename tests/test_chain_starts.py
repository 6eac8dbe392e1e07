"""When a queued chain's segments start, and the finish that counts them: arithmetic a reader
can check (the real cluster's case is tests/test_queue_slurm.py)."""

from __future__ import annotations

from planner.eta.outlook import Queued, simulate, with_waits
from planner.slurm.chain_starts import queued_starts
from planner.slurm.queue_waits import QueueWaits

WAITS = QueueWaits(60.0, 300.0, 12, "sacct: 12 job(s)")
NOW = 1_000_000.0


def chain() -> list[Queued]:
    # Segment 2 placed by Slurm at NOW + 100; segments 3 and 4 wait on their dependency.
    return [
        Queued(2, "12", 600, None, None, expected_start=NOW + 100),
        Queued(3, "13", 600, None, None),
        Queued(4, "14", 300, None, None),
    ]


def test_each_segment_starts_when_slurm_says_else_after_the_one_before_and_a_wait() -> None:
    starts = queued_starts(with_waits(chain(), WAITS), NOW, WAITS)
    assert [s.start for s in starts] == [
        NOW + 100,  # Slurm's estimate
        NOW + 100 + 600 + 60,  # segment 2's --time, then the median wait
        NOW + 100 + 600 + 60 + 600 + 60,
    ]
    assert starts[0].source == "Slurm's estimate (squeue --start)"
    assert "median wait 1 min 00 s (sacct: 12 job(s))" in starts[1].source


def test_without_accounting_no_wait_is_counted_and_it_says_so() -> None:
    unknown = QueueWaits(None, None, 0, "unknown: no accounting")
    starts = queued_starts(with_waits(chain(), unknown), NOW, unknown)
    assert starts[1].start == NOW + 100 + 600
    assert "no wait counted (unknown: no accounting)" in starts[1].source


def test_the_finish_counts_the_waits_p50_and_p90() -> None:
    # 1 s a step, no running job, nothing reserved: 1,000 steps from step 0.
    pending = with_waits(chain(), WAITS)
    args = ((NOW, 0), None, pending, 1_000, 0.0, 0.0, 0.0)
    p50, p95 = simulate(1.0, *args), simulate(1.0, *args, band=1)
    # Segment 2: NOW+100 to NOW+700 (600 steps); segment 3 starts 60 s (P90: 300 s) later and
    # does the last 400 steps.
    assert p50.finish == NOW + 700 + 60 + 400
    assert p95.finish == NOW + 700 + 300 + 400
    assert p50.finish_segment == p95.finish_segment == 3
