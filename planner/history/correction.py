"""The corrections a new plan learns from the history: every learned ended job's step bias of
the plan's kind and partition, read from the database and turned into a Correction per node
count (planner.model.correction: what a correction is, how it is learned from the biases and
applied). Torch-free.
"""

from __future__ import annotations

from pathlib import Path

from planner.calibration.record import CalibrationRecord
from planner.history.database import connect, history_path, stored_partition_name, workload_key
from planner.model.correction import Bias, Biases, Correction, correction_from
from planner.model.kind import kind_key
from planner.slurm.partition import PartitionLimits
from planner.spec.run_spec import RunSpec

_BIASES = """
SELECT p.nodes, o.step_s, o.model_step_s, o.plan_correction, o.run_dir, o.job_id,
       COALESCE(o.end_time, o.recorded) AS moment
FROM outcomes o
JOIN plans p ON p.id = (SELECT MAX(id) FROM plans WHERE run_dir = o.run_dir)
WHERE p.kind = ? AND p.partition = ? AND p.nodes > 0 AND o.step_s > 0 AND o.model_step_s > 0
  AND o.learned = 1
ORDER BY COALESCE(o.end_time, o.recorded), o.id
"""


def step_biases_by_nodes(kind: str, partition: str, path: Path | None = None) -> dict[int, Biases]:
    """Every learned ended job of this kind and partition, oldest first, by the node count its
    run was planned on. One query: a plan reads every node count's at once."""
    if not history_path(path).exists():
        return {}  # a plan only reads: it creates no database
    with connect(path) as db:
        rows = db.execute(_BIASES, (kind, partition)).fetchall()
    found: dict[int, Biases] = {}
    for row in rows:
        bias = row["step_s"] / row["model_step_s"]
        found.setdefault(int(row["nodes"]), []).append(
            Bias(
                bias,
                bias / (row["plan_correction"] or 1.0),
                row["run_dir"],
                row["job_id"],
                row["moment"],
            )
        )
    return dict(sorted(found.items()))


def step_biases(kind: str, partition: str, nodes: int, path: Path | None = None) -> Biases:
    """step_biases_by_nodes at one node count."""
    return step_biases_by_nodes(kind, partition, path).get(nodes, [])


def correction_for(
    kind: str, partition: str, nodes: int, path: Path | None = None, workload: str = ""
) -> Correction | None:
    """The step correction for ``nodes`` nodes; None with fewer than MIN_OUTCOMES jobs."""
    biases = step_biases(kind, partition, nodes, path)
    return correction_from(workload, partition, nodes, biases, kind)


def corrections_for(
    spec: RunSpec,
    partition: PartitionLimits | None,
    path: Path | None = None,
    *,
    record: CalibrationRecord | None,
) -> dict[int, Correction]:
    """Every node count's correction for plans of the spec's kind (from its calibration
    ``record``: the device and executor are part of it) on its partition: what
    planner.model.planning.make_plan takes as ``corrections``. Those whose jobs disagree
    (Correction.applied false) are there too: the plan says why it does not apply them."""
    kind, where = kind_key(spec, record), stored_partition_name(spec, partition)
    workload = workload_key(spec)
    by_nodes = step_biases_by_nodes(kind, where, path)
    found = {n: correction_from(workload, where, n, pairs, kind) for n, pairs in by_nodes.items()}
    return {n: c for n, c in found.items() if c is not None}
