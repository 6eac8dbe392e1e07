"""The correction a new plan learns from the history: of its step time, per node count.

What strays between plan and run is, on a GPU, the step time (a busier machine, another
fabric, a modelled all-reduce that the nodes do not reach); start-up, saves and loads are
measured per job and were scaled wrongly along with it when the factor came from whole jobs:
a x4.23 factor learned from one mis-scaled 2-node run made every later plan, on any node
count, 18x longer in start-up and saves as well. So:

- a job's bias is its own steady step time (from its progress lines, warm-up cut) over the
  step the model gave for it, before any correction (planner.history.database.record_outcomes);
- a correction is learned per workload, partition and node count, and applied only to the
  step time of that node count: outcomes at other node counts are ignored;
- the factor is the median bias of the newest RECENT jobs, raised to the mean of the last two
  when the newest ran over its plan's step (Tsafrir, Etsion and Feitelson, "Backfilling using
  system-generated predictions rather than user runtime estimates", IEEE TPDS 18(6), 2007);
- its effect is capped at MAX_FACTOR either way, and the plan says so: a bias that large
  means the model is wrong at that node count (calibrate it), not that the machine drifted;
- the same newest biases give the run-to-run spread, which widens a plan's P95 when it is
  larger than plan.run_to_run_spread. Torch-free.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from planner.history.database import connect, history_path, partition_name, workload_key
from planner.slurm.partition import PartitionLimits
from planner.spec.run_spec import RunSpec

RECENT = 5
MIN_OUTCOMES = 2
MIN_SPREAD_OUTCOMES = 3  # a standard deviation of two jobs says little
MAX_FACTOR = 2.0

_BIASES = """
SELECT p.nodes, o.step_s, o.model_step_s, o.plan_correction FROM outcomes o
JOIN plans p ON p.id = (SELECT MAX(id) FROM plans WHERE run_dir = o.run_dir)
WHERE p.workload = ? AND p.partition = ? AND p.nodes > 0 AND o.step_s > 0 AND o.model_step_s > 0
ORDER BY COALESCE(o.end_time, o.recorded), o.id
"""

Biases = list[tuple[float, float]]


@dataclass(frozen=True)
class Correction:
    workload: str
    partition: str
    nodes: int  # the node count it was learned at, and the only one it applies to
    factor: float  # the step time at ``nodes`` is multiplied by this (after the cap)
    learned: float  # the factor the jobs showed, before the cap
    outcomes: int  # jobs it rests on
    recent_median: float
    overall_median: float
    latest: float  # the newest job's bias
    rule: str  # how the factor was chosen, in words
    # Sample standard deviation of the newest jobs' biases over the learned factor: how far
    # one run strays from the corrected pace (0.0 with fewer than MIN_SPREAD_OUTCOMES jobs).
    spread: float = 0.0

    @property
    def capped(self) -> bool:
        return self.factor != self.learned


def step_biases_by_nodes(
    workload: str, partition: str, path: Path | None = None
) -> dict[int, Biases]:
    """(bias against the model's step, ratio against the plan's step as emitted) per ended
    job that timed its steps, oldest first, by the node count its run was planned on. One
    query: a plan reads every node count's at once."""
    if not history_path(path).exists():
        return {}  # a plan only reads: it creates no database
    with connect(path) as db:
        rows = db.execute(_BIASES, (workload, partition)).fetchall()
    found: dict[int, Biases] = {}
    for row in rows:
        bias = row["step_s"] / row["model_step_s"]
        found.setdefault(int(row["nodes"]), []).append(
            (bias, bias / (row["plan_correction"] or 1.0))
        )
    return dict(sorted(found.items()))


def step_biases(workload: str, partition: str, nodes: int, path: Path | None = None) -> Biases:
    """step_biases_by_nodes at one node count."""
    return step_biases_by_nodes(workload, partition, path).get(nodes, [])


def correction_for(
    workload: str, partition: str, nodes: int, path: Path | None = None
) -> Correction | None:
    """The step correction for ``nodes`` nodes; None with fewer than MIN_OUTCOMES jobs."""
    return correction_from(
        workload, partition, nodes, step_biases(workload, partition, nodes, path)
    )


def correction_from(workload: str, partition: str, nodes: int, pairs: Biases) -> Correction | None:
    """The correction ``pairs`` (step_biases at ``nodes`` nodes) give, if there are enough."""
    if len(pairs) < MIN_OUTCOMES:
        return None
    model = [bias for bias, _ in pairs]
    recent = model[-RECENT:]
    learned = statistics.median(recent)
    rule = f"median step time / model step of the newest {len(recent)} jobs"
    if pairs[-1][1] > 1:
        last_two = statistics.fmean(model[-2:])
        if last_two > learned:
            learned = last_two
            rule = (
                "the newest job's steps ran over its plan: the mean of the last two jobs "
                f"(Tsafrir, Etsion and Feitelson 2007), above the median of the newest "
                f"{len(recent)}"
            )
    spread = statistics.stdev(recent) / learned if len(recent) >= MIN_SPREAD_OUTCOMES else 0.0
    return Correction(
        workload=workload,
        partition=partition,
        nodes=nodes,
        factor=min(max(learned, 1 / MAX_FACTOR), MAX_FACTOR),
        learned=learned,
        outcomes=len(model),
        recent_median=statistics.median(recent),
        overall_median=statistics.median(model),
        latest=model[-1],
        rule=rule,
        spread=spread,
    )


def corrections_for(
    spec: RunSpec, partition: PartitionLimits | None, path: Path | None = None
) -> dict[int, Correction]:
    """Every node count's correction for the spec's workload on its partition: what
    planner.model.planning.make_plan takes as ``corrections``."""
    workload, where = workload_key(spec), partition_name(spec, partition)
    by_nodes = step_biases_by_nodes(workload, where, path)
    found = {n: correction_from(workload, where, n, pairs) for n, pairs in by_nodes.items()}
    return {n: c for n, c in found.items() if c is not None}
