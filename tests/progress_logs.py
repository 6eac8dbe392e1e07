"""Progress files written line by line with chosen times (the format of jobs.progress), and Slurm's
recorded answers about them, so that every number an ETA test checks can be worked out by hand."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from planner.shell import CommandResult

T0 = 1_700_000_000.0


class Log:
    """Writes progress lines with chosen times, as jobs.progress.ProgressWriter would."""

    def __init__(self, path: Path, total: int, t: float = T0) -> None:
        self.path, self.total, self.t = path, total, t
        self.events: list[dict[str, Any]] = []
        self.restart = 0

    def job(
        self,
        start: int,
        step_times: Sequence[float],
        *,
        job_id: str | None = None,
        load_s: float | None = None,
        save_every: int | None = None,
        save_s: float = 0.0,
        stop: str | None = None,
    ) -> Log:
        self._add(
            "start",
            step=start,
            total_steps=self.total,
            restart=self.restart,
            job_id=job_id,
            host="n1",
            pid=1,
        )
        self.restart += 1
        if load_s is not None:
            self._add("resume", step=start, load_s=load_s, path="ck")
        step = start
        for step_s in step_times:
            step += 1
            self.t += step_s
            self._add("step", step=step, samples=step, tokens=step, step_s=step_s, loss=1.0)
            if save_every and (step % save_every == 0 or step == self.total):
                self.t += save_s
                self._add("checkpoint", step=step, save_s=save_s, path="ck", bytes=1)
        if stop is not None:
            self._add("stop", step=step, reason=stop, signal=None)
        return self

    def wait(self, seconds: float) -> Log:
        self.t += seconds
        return self

    def write(self) -> Path:
        self.path.write_text("".join(json.dumps(e) + "\n" for e in self.events))
        return self.path

    def _add(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, "time": self.t, **fields})


def wobble(n: int, mean: float, amplitude: float = 0.01) -> list[float]:
    """Steady steps with a small deterministic wobble: mean exactly ``mean``."""
    return [mean + amplitude * ((-1) ** i) for i in range(n)]


def fake_runner(outputs: dict[str, str]) -> Any:
    """A Runner answering each command (by its first word) with recorded output."""

    def run(argv: Sequence[str]) -> CommandResult:
        return CommandResult(tuple(argv), 0, outputs.get(argv[0], ""), "")

    return run


def slurm_time(moment: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(moment).strftime("%Y-%m-%dT%H:%M:%S")


STEP_S = 1.06  # the chained plan's step time (tests/test_planning.py's reference record)


def queue_text(last: float, job5_limit: str) -> str:
    """squeue's answer: segment 1 ended, 2 runs (1000 s left after its newest line)."""
    return "\n".join(
        [
            f"12|RUNNING|{slurm_time(last - 1000)}|{slurm_time(last + 1000)}|30:00|None",
            "13|PENDING|N/A|N/A|30:00|Dependency",
            "14|PENDING|N/A|N/A|30:00|Dependency",
            f"15|PENDING|N/A|N/A|{job5_limit}|Dependency",
        ]
    )
