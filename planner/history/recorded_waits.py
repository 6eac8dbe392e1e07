"""The waits from eligible to start that the history recorded for jobs of a plan's kind on
its partition, by node count: the plan's own waits, which the queue model takes before the
partition's accounting (planner.model.queue_finish.prefer_recorded). They are plan-job's own
jobs, whose eligible time the history stores beside their start (sacct's Eligible, Start),
so they are the jobs most like the one being planned. Torch-free.
"""

from __future__ import annotations

import time
from pathlib import Path

from planner.calibration.record import CalibrationRecord
from planner.history.database import connect, history_path, stored_partition_name
from planner.model.kind import kind_key
from planner.slurm.partition import PartitionLimits
from planner.spec.run_spec import RunSpec

DAY_S = 86_400.0

_WAITS = """
SELECT p.nodes, o.start_time - o.eligible_time AS wait_s
FROM outcomes o
JOIN plans p ON p.id = (SELECT MAX(id) FROM plans WHERE run_dir = o.run_dir)
WHERE p.kind = ? AND p.partition = ? AND p.nodes IS NOT NULL
  AND o.start_time IS NOT NULL AND o.eligible_time IS NOT NULL
  AND o.start_time >= o.eligible_time AND o.start_time >= ?
ORDER BY o.start_time, o.id
"""


def recorded_waits(
    spec: RunSpec,
    partition: PartitionLimits | None,
    days: int,
    path: Path | None = None,
    *,
    record: CalibrationRecord | None,
    now: float | None = None,
) -> dict[int, list[float]]:
    """Seconds from eligible to start of every recorded job of the spec's kind on its
    partition that started in the last ``days`` days, by its plan's node count. Raises
    HistoryError when the database cannot be read; {} without one (a plan creates none)."""
    if not history_path(path).exists():
        return {}
    kind, where = kind_key(spec, record), stored_partition_name(spec, partition)
    since = (time.time() if now is None else now) - days * DAY_S
    with connect(path) as db:
        rows = db.execute(_WAITS, (kind, where, since)).fetchall()
    found: dict[int, list[float]] = {}
    for row in rows:
        found.setdefault(int(row["nodes"]), []).append(float(row["wait_s"]))
    return found
