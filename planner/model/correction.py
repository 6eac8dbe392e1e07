"""The correction a new plan learns from the history: of its step time, per node count, from
jobs of its own kind.

What strays between plan and run is, on a GPU, the step time (a busier machine, another
fabric, a modelled all-reduce that the nodes do not reach); start-up, saves and loads are
measured per job and were scaled wrongly along with it when the factor came from whole jobs:
a x4.23 factor learned from one mis-scaled 2-node run made every later plan, on any node
count, 18x longer in start-up and saves as well. And a correction keyed by workload name,
partition and node count alone doubled a fresh, accurate local plan of jit:tiny from 13 jobs
of a paced test variant of it (x3.22, spread 47.6%). So:

- a job's bias is its own steady step time (from its progress lines, warm-up cut) over the
  step the model gave for it, before any correction (planner.history.database.record_outcomes);
  only attempts that stopped cleanly count: a failed, hung or killed one is kept, not learned;
- a correction is learned per kind (planner.model.kind: what sets the step: workload and
  preset or command, overrides, compile, micro-batch and global batch, precision, the
  calibration's device and executor), partition and node count, and applied only to the
  step time of that node count: outcomes of other kinds or node counts are ignored;
- the factor is the median bias of the newest RECENT jobs, raised to the mean of the last two
  when the newest ran over its plan's step (Tsafrir, Etsion and Feitelson, "Backfilling using
  system-generated predictions rather than user runtime estimates", IEEE TPDS 18(6), 2007);
- its effect is capped at MAX_FACTOR either way, and the plan says so: a bias that large
  means the model is wrong at that node count (calibrate it), not that the machine drifted;
- the same newest biases give the run-to-run spread, which widens a plan's P95 when it is
  larger than plan.run_to_run_spread; newest jobs that disagree among themselves by more
  than MAX_SPREAD (sample standard deviation over the factor) are shown, not applied: one
  factor cannot stand for them;
- the plan says in one line what a correction rests on: how many jobs, when they ended,
  which runs.

This module is the arithmetic and the Correction the plan applies; the biases are read from
the database by planner.history.correction (corrections_for), which sits above the plan.
Torch-free.
"""

from __future__ import annotations

import datetime as dt
import statistics
from dataclasses import dataclass
from pathlib import Path

from planner.model.kind import describe

RECENT = 5
MIN_OUTCOMES = 2
MIN_SPREAD_OUTCOMES = 3  # a standard deviation of two jobs says little
MAX_FACTOR = 2.0
MAX_SPREAD = 0.25  # newest jobs' spread above which their factor is not applied


@dataclass(frozen=True)
class Bias:
    """One ended job's step against the model's (``bias``) and against its plan's step as
    emitted (``planned``), where it ran and when it ended."""

    bias: float
    planned: float
    run_dir: str
    job_id: str
    moment: float


Biases = list[Bias]


@dataclass(frozen=True)
class Correction:
    workload: str  # the workload's key (database.workload_key), for tables
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
    kind: str = ""  # planner.model.kind.kind_key: what sets the step of these jobs
    runs: tuple[str, ...] = ()  # the run folders of the newest RECENT jobs, oldest first
    first: float | None = None  # when the oldest and newest of them ended
    last: float | None = None
    recent: int = 0  # jobs the factor comes from (the newest RECENT)

    @property
    def capped(self) -> bool:
        return self.factor != self.learned

    @property
    def applied(self) -> bool:
        """Whether plans apply it: the newest jobs agree within MAX_SPREAD."""
        return self.spread <= MAX_SPREAD

    def rests_on(self) -> str:
        """What it comes from, in one line: jobs, dates, runs, kind."""
        when = ""
        if self.first is not None and self.last is not None:
            first, last = _date(self.first), _date(self.last)
            when = f", ended {first}" if first == last else f", ended {first} to {last}"
        names = ", ".join(dict.fromkeys(Path(run).name for run in self.runs))
        return (
            f"the newest {self.recent} of {self.outcomes} job(s) of this kind at {self.nodes} "
            f"node(s) on partition {self.partition}{when}, run(s) {names}; kind: "
            f"{describe(self.kind)}"
        )


def correction_from(
    workload: str, partition: str, nodes: int, biases: Biases, kind: str = ""
) -> Correction | None:
    """The correction ``biases`` (step_biases at ``nodes`` nodes) give, if there are enough."""
    if len(biases) < MIN_OUTCOMES:
        return None
    model = [b.bias for b in biases]
    newest = biases[-RECENT:]
    recent = model[-RECENT:]
    learned = statistics.median(recent)
    rule = f"median step time / model step of the newest {len(recent)} jobs"
    if biases[-1].planned > 1:
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
        kind=kind,
        runs=tuple(b.run_dir for b in newest),
        first=newest[0].moment,
        last=newest[-1].moment,
        recent=len(newest),
    )


def _date(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment).astimezone().strftime("%Y-%m-%d")
