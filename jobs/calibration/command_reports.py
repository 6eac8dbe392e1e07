"""What a user's command reports, as its calibration reads it: its progress lines, tailed
as they come (Tail) and kept by kind (Seen), and the step times they give (step_timing): one
per step line, or with ``report: trainer_state`` one per save interval; and the steady CI of
those times (steady_ci). Standard library only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.calibration.stats import steady_estimate
from jobs.calibration.steps import ci_if_ready


@dataclass
class Seen:
    """What the command has reported so far (its progress lines)."""

    start: dict[str, Any] | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    saves: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    resumes: list[dict[str, Any]] = field(default_factory=list)

    def add(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start" and self.start is None:
            self.start = event
        elif kind == "step" and isinstance(event.get("step"), int):
            self.steps.append(event)
        elif kind == "checkpoint":
            self.saves.append(event)
        elif kind == "eval":
            self.evals.append(event)
        elif kind == "resume":
            self.resumes.append(event)

    @property
    def first_step(self) -> int:
        start = self.start.get("step") if self.start is not None else 0
        return start if isinstance(start, int) else 0

    @property
    def steps_done(self) -> int:
        return self.steps[-1]["step"] - self.first_step if self.steps else 0


@dataclass(frozen=True)
class Timing:
    """Step times as samples: one per step line (``progress``), or one per save interval
    (``trainer_state``: each the interval's mean, ``weights`` its steps)."""

    times: tuple[float, ...]
    weights: tuple[int, ...]
    began: float | None  # Unix time the first timed step started; None before one


class Tail:
    """Reads the lines appended to a JSONL file since the last call; a line still being
    written waits for its newline."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events


def step_timing(seen: Seen, trainer: bool) -> Timing:
    if not trainer:
        times, began = [], None
        for event in seen.steps:
            step_s = finite(event.get("step_s"))
            if step_s is None:
                continue
            if began is None:
                began = float(event["time"]) - step_s
            times.append(step_s)
        return Timing(tuple(times), (1,) * len(times), began)
    # The first interval runs from the command's start: start-up, not steps.
    times_w: list[tuple[float, int]] = []
    previous, began = seen.first_step, None
    for index, event in enumerate(seen.steps):
        step_s, steps = finite(event.get("step_s")), event["step"] - previous
        previous = event["step"]
        if index == 0:
            began = float(event["time"])
            continue
        if step_s is not None and steps > 0:
            times_w.append((step_s, steps))
    return Timing(tuple(t for t, _ in times_w), tuple(w for _, w in times_w), began)


def steady_ci(timing: Timing, min_steps: int, trainer: bool) -> float | None:
    if not trainer:
        return ci_if_ready(list(timing.times), min_steps)
    # Save intervals are few: the harness's margin from MSER's bound (5 samples) would never
    # be met. Warm-up must still end well inside the series.
    n = len(timing.times)
    if n < 4:
        return None
    est = steady_estimate(timing.times)
    steady_steps = sum(timing.weights[est.warmup_steps :])
    if steady_steps < min_steps or est.warmup_steps >= n // 2:
        return None
    return est.ci_relative


def finite(value: Any) -> float | None:
    """A number from a progress line as a finite float, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None
