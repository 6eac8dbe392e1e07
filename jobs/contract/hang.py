"""The hang watchdog's timeouts, as train.json carries them (``hang_timeouts``). Torch-free.

`plan-job emit` sets them from the calibration (planner.runs.hang_timeouts): each phase's
measured time times ``factor`` (plan.hang_factor), with a floor. The training entry's
watchdog (jobs.node.watchdog) ends a rank that spends longer than one of them in its phase.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

# Which part of a job each timeout bounds (the `phase` of a `hang` progress event).
PHASES = ("startup", "load", "compile", "step", "save", "eval", "progress")


@dataclass(frozen=True)
class HangTimeouts:
    startup_s: float  # process start to the first step (imports, rendezvous, build)
    load_s: float  # reading and applying the checkpoint resumed from
    compile_s: float  # workload.compile's compile and first compiled step
    step_s: float  # one optimizer step, with the collectives and progress line around it
    save_s: float  # one checkpoint save
    eval_s: float  # one evaluation
    progress_s: float  # a user's command: the longest gap between its progress lines
    factor: float  # the safety factor the measured times were multiplied by
    source: str  # one line: what each timeout came from

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name == "source":
                if not isinstance(value, str):
                    raise ValueError(f"field 'hang_timeouts.source': got {value!r}; a string")
                continue
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value <= 0:
                raise ValueError(
                    f"field 'hang_timeouts.{name}': got {value!r}; must be a number of seconds > 0"
                )

    def timeout(self, phase: str) -> float:
        return float(getattr(self, f"{phase}_s"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> HangTimeouts:
        """ValueError naming the field (``hang_timeouts.NAME``)."""
        if not isinstance(raw, Mapping):
            raise ValueError(
                f"field 'hang_timeouts': got {raw!r}; must be null (off) or an object of timeouts"
            )
        names = [f"{phase}_s" for phase in PHASES] + ["factor", "source"]
        unknown = sorted(set(raw) - set(names))
        if unknown:
            raise ValueError(f"field 'hang_timeouts': unknown key(s) {', '.join(unknown)}")
        missing = [name for name in names if name not in raw]
        if missing:
            raise ValueError(f"field 'hang_timeouts': missing key(s) {', '.join(missing)}")
        return cls(**{name: raw[name] for name in names})
