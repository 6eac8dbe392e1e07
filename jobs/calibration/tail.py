"""The tail of the steady step times: how slow a step gets now and then, which the training's
hang watchdog must allow (planner.runs.hang_timeouts). Pure Python, as jobs.calibration.stats.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def p99(values: Sequence[float]) -> float:
    """The 99th percentile (inclusive method: never beyond the slowest); 0.0 for no values."""
    if len(values) < 2:
        return float(values[0]) if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[-1]
