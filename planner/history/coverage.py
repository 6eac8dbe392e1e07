"""How often the jobs of a kind and partition stayed within their P50 and P95, read from the
history: run time (each learned job's elapsed time against its plan's prediction for exactly
the steps it ran) and queue wait (eligible to start against the wait its plan predicted);
and the P95 widening a new plan gets from them (planner.model.coverage: the arithmetic).

A job's run-time P50 is outcomes.predicted_s; its P95 is that times its plan's P95 / P50
(the band is mostly systematic: it scales with the steps). Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from planner.calibration.record import CalibrationRecord
from planner.history.database import connect, history_path, stored_partition_name
from planner.model.correction import Correction
from planner.model.coverage import Check, Widening, widening_from
from planner.model.kind import kind_key
from planner.slurm.partition import PartitionLimits
from planner.spec.run_spec import RunSpec

_RUN_TIMES = """
SELECT o.elapsed_s, o.predicted_s, p.p50_s, p.p95_s, COALESCE(p.p95_widening, 1.0) AS widening,
       COALESCE(o.plan_correction, 1.0) AS correction, p.nodes
FROM outcomes o
JOIN plans p ON p.id = (SELECT MAX(id) FROM plans WHERE run_dir = o.run_dir)
WHERE p.kind = ? AND p.partition = ? AND o.learned = 1 AND o.elapsed_s > 0
  AND o.predicted_s > 0 AND p.p50_s > 0 AND p.p95_s > 0
ORDER BY COALESCE(o.end_time, o.recorded), o.id
"""
_WAITS = """
SELECT o.start_time - o.eligible_time AS wait_s, o.predicted_wait_s, o.predicted_wait_p95_s
FROM outcomes o
JOIN plans p ON p.id = (SELECT MAX(id) FROM plans WHERE run_dir = o.run_dir)
WHERE p.kind = ? AND p.partition = ? AND o.start_time IS NOT NULL
  AND o.eligible_time IS NOT NULL AND o.start_time >= o.eligible_time
ORDER BY COALESCE(o.end_time, o.recorded), o.id
"""


@dataclass(frozen=True)
class RunTime:
    """One learned job's elapsed time and what its plan predicted for its steps."""

    check: Check  # against the P50 and the P95 as emitted
    model_p95_s: float  # the P95 before its plan's own widening
    correction: float  # the step correction its plan carried (1.0: none)
    nodes: int


def run_times(kind: str, partition: str, path: Path | None = None) -> list[RunTime]:
    """Every learned job of this kind and partition, oldest first."""
    if not history_path(path).exists():
        return []  # a plan only reads: it creates no database
    with connect(path) as db:
        rows = db.execute(_RUN_TIMES, (kind, partition)).fetchall()
    found = []
    for row in rows:
        p95 = row["predicted_s"] * row["p95_s"] / row["p50_s"]
        found.append(
            RunTime(
                Check(row["elapsed_s"], row["predicted_s"], p95),
                p95 / row["widening"],
                row["correction"],
                int(row["nodes"] or 0),
            )
        )
    return found


def queue_waits(kind: str, partition: str, path: Path | None = None) -> list[Check]:
    """Every job of this kind and partition with an eligible and a start time: its wait
    against the P50 and P95 its plan predicted (None where it predicted none)."""
    if not history_path(path).exists():
        return []
    with connect(path) as db:
        rows = db.execute(_WAITS, (kind, partition)).fetchall()
    return [Check(r["wait_s"], r["predicted_wait_s"], r["predicted_wait_p95_s"]) for r in rows]


def widening_ratios(
    jobs: list[RunTime], corrections: Mapping[int, Correction] | None = None
) -> list[float]:
    """Each job's actual / the P95 the next plan would give it: its model P95 (before its
    own plan's widening), moved by the step correction now applied at its node count over
    the one its plan carried (whole-job ratio: the steps dominate a job)."""
    ratios = []
    for job in jobs:
        now = (corrections or {}).get(job.nodes)
        factor = now.factor if now is not None and now.applied else 1.0
        ratios.append(job.check.actual_s / (job.model_p95_s * factor / job.correction))
    return ratios


def widening_for(
    spec: RunSpec,
    partition: PartitionLimits | None,
    path: Path | None = None,
    *,
    record: CalibrationRecord | None,
    corrections: Mapping[int, Correction] | None = None,
) -> Widening | None:
    """The P95 widening for a new plan of the spec's kind on its partition (None: fewer than
    MIN_JOBS jobs, or its P95 covered enough of them). ``corrections``: the step
    corrections the new plan applies (planner.history.correction.corrections_for)."""
    kind, where = kind_key(spec, record), stored_partition_name(spec, partition)
    return widening_from(widening_ratios(run_times(kind, where, path), corrections), where)
