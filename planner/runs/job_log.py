"""One job of a run as its progress lines summarise it: what planner.runs.progress_reader keeps
of a job, in memory bounded whatever the job's length.

A job of a million steps is not held step by step. Its summary keeps the first HEAD timed
step times (where its warm-up is looked for), the newest RECENT ones (the window the ETA
averages), how many it timed and their sum, its checkpoints' newest saves and the gaps between
them, and the lines that say why it ended (``failure``, ``hang``, ``chain_stopped``,
``checkpoint_bad``, ``stop``). A job with at most HEAD timed steps is held whole, so every
figure drawn from it is what reading every line gives. Torch-free.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobs.calibration.stats import warmup_cut

HEAD = 2000  # timed steps held from a job's start: its warm-up is looked for in them
RECENT = 200  # newest timed steps held: as many as the ETA's window (planner.eta.steps)
RECENT_SAVES = 8  # newest checkpoints held per job: the ETA and resubmit use the last five
# Events that say how or why a job ended (README "The training entry and its progress file").
NOTABLE_EVENTS = ("failure", "hang", "chain_stopped", "checkpoint_bad", "stop")
NOTABLE_KEPT = 32


@dataclass(frozen=True)
class JobLog:
    """One job of a run: a ``start`` line up to the next one (or the whole file, if the
    writer never wrote a start line)."""

    index: int  # 0-based, in file order
    job_id: str | None
    start_time: float | None
    start_step: int
    load_s: float | None  # checkpoint load of a resumed job
    timed: int  # step lines with a step number and a finite step_s
    timed_s: float  # their step_s summed
    head: tuple[float, ...]  # the first HEAD timed step times, in order
    recent: tuple[float, ...]  # the newest RECENT timed step times, in order
    last_step: int  # the newest step this job reached
    last_time: float | None  # the time of its newest line
    saves: tuple[tuple[int, float], ...]  # (step, save_s) of its newest RECENT_SAVES saves
    save_gaps: tuple[tuple[int, int], ...]  # (steps between two saves, how often), first seen first
    stop_reason: str | None  # None: no stop line (still running, or killed)
    resumed: bool = False  # it wrote a ``resume`` line
    first_step_begin: float | None = None  # its first step line's time less its step_s
    last_event: Mapping[str, Any] | None = None  # its newest line
    notable: tuple[Mapping[str, Any], ...] = ()  # its newest NOTABLE_EVENTS lines, in order

    @property
    def whole(self) -> bool:
        """Every timed step is held (in ``head``)."""
        return self.timed == len(self.head)

    @functools.cached_property
    def warmup_steps(self) -> int:
        """Timed steps at the job's start that are warm-up (jobs.calibration.stats.warmup_cut,
        the calibration's rule) among its first HEAD: warm-up is what every job pays at its
        start, and a slow stretch HEAD/2 steps in is no longer that."""
        return warmup_cut(self.head) if len(self.head) > 1 else 0

    def steady_tail(self, cut: int) -> list[float]:
        """The newest step times after the first ``cut``: all of them when held whole, else the
        newest RECENT (cut <= HEAD / 2 leaves more than RECENT steady steps)."""
        if self.whole:
            return list(self.head[cut:])
        return list(self.recent)

    def steady_mean(self, cut: int) -> float:
        """The mean step time after the first ``cut`` steps, over the whole job."""
        if self.whole or self.timed <= cut:
            return statistics.fmean(self.head[cut:])
        return (self.timed_s - sum(self.head[:cut])) / (self.timed - cut)

    def events(self, *names: str) -> list[Mapping[str, Any]]:
        """The job's notable lines of these events, in file order."""
        return [event for event in self.notable if event.get("event") in names]


def job_from_times(
    step_times: Sequence[float],
    *,
    last_step: int,
    last_time: float | None,
    stop_reason: str | None,
) -> JobLog:
    """A job known only by its step times (a trainer_state.json's save intervals)."""
    times = tuple(step_times)
    return JobLog(
        index=0,
        job_id=None,
        start_time=None,
        start_step=0,
        load_s=None,
        timed=len(times),
        timed_s=sum(times),
        head=times[:HEAD],
        recent=times[-RECENT:],
        last_step=last_step,
        last_time=last_time,
        saves=(),
        save_gaps=(),
        stop_reason=stop_reason,
    )
