"""What a calibration record read back from disk must hold before a plan is made of it.

Records are YAML that people open and edit. A negative step time gave a negative plan and a
string where a number belongs gave a traceback deep in the report: every measured field is
checked on load against its declared type and range, and the error names the field, the
value and what is allowed. Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Set as AbstractSet
from typing import Any

from jobs.contract.measurement import STOP_REASONS, Measurement
from planner.errors import RecordFieldError

# Fields that are divided by, or that a plan multiplies by the step count: zero is as wrong
# as a negative value.
_POSITIVE = {"step_mean_s", "step_median_s", "samples_per_step", "target_ci", "ranks", "nodes"}
_POSITIVE_POINT = {"nodes", "ranks", "tasks_per_node", "grad_accum", "step_mean_s"}
_ALLOWED = {
    "stopped_by": STOP_REASONS,
    "device_kind": ("cpu", "cuda"),
    "compile_cache": ("", "cold", "warm", "partly warm", "unknown"),
}
# Beyond these a value was not measured: a duration of more than a year, a model of more
# than a quadrillion parameters, a count past 64 bits.
YEAR_S = 365 * 86_400.0
_MAXIMA = {"params": 10**15}
_INT64_MAX = 2**63 - 1


def check_measurement(m: Measurement, source: str) -> None:
    for f in dataclasses.fields(m):
        value = getattr(m, f.name)
        _check_value(f"measurement.{f.name}", value, str(f.type), source, f.name in _POSITIVE)
        if f.name in _ALLOWED and value not in _ALLOWED[f.name]:
            allowed = ", ".join(v or "''" for v in _ALLOWED[f.name])
            _fail(f"measurement.{f.name}", value, f"allowed: {allowed}", source)
    if m.steady_steps > m.steps_run:
        rule = "must be <= measurement.steps_run"
        _fail("measurement.steady_steps", m.steady_steps, rule, source)


def check_dataclass(
    obj: Any, prefix: str, source: str, positive: AbstractSet[str] = frozenset()
) -> None:
    """Every numeric field of ``obj`` finite and >= 0 (> 0 for ``positive``); strings
    strings. For the record's job, derived and scaling sections."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        field = f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(value):
            check_dataclass(value, field, source)
            continue
        if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            for index, item in enumerate(value):
                check_dataclass(item, f"{field}[{index}]", source, positive)
            continue
        _check_value(field, value, str(f.type), source, f.name in positive)


def check_scaling_points(points: tuple[Any, ...], source: str) -> None:
    for index, point in enumerate(points):
        check_dataclass(point, f"scaling.points[{index}]", source, _POSITIVE_POINT)


def _check_value(
    field: str, value: Any, annotation: str, source: str, positive: bool = False
) -> None:
    optional = annotation.endswith("| None")
    if value is None:
        if not optional:
            _fail(field, value, f"must be {annotation}", source)
        return
    base = annotation.removesuffix(" | None")
    if base in ("float", "int"):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (base == "int" and not isinstance(value, int)):
            kind = "a whole number" if base == "int" else "a number"
            _fail(field, value, f"must be {kind}", source)
        if not math.isfinite(value) and not (field.endswith("bytes_per_s") and value > 0):
            _fail(field, value, "must be a finite number", source)
        if positive and not value > 0:
            _fail(field, value, "must be > 0", source)
        if value < 0:
            _fail(field, value, "must be >= 0", source)
        name = field.rpartition(".")[2]
        if name.endswith("_s") and value > YEAR_S:
            _fail(field, value, "must be at most a year of seconds (3.15e7)", source)
        most = _MAXIMA.get(name, _INT64_MAX)
        if value > most:
            _fail(field, value, f"must be at most {most:.3g}", source)
    elif base == "str":
        if not isinstance(value, str):
            _fail(field, value, "must be a string", source)
    elif base.startswith("tuple[float"):
        for item in value:
            bad = isinstance(item, bool) or not isinstance(item, int | float)
            if bad or not math.isfinite(item) or not 0 <= item <= YEAR_S:
                unit = "watts" if field.endswith("power_w") else "seconds"
                _fail(field, item, f"every entry must be a number of {unit} >= 0", source)
    elif base.startswith("tuple[tuple[int, float]"):
        for size, seconds in value:
            if size < 0 or not math.isfinite(seconds) or seconds < 0:
                _fail(field, [size, seconds], "entries are [bytes >= 0, seconds >= 0]", source)


def _fail(field: str, value: Any, allowed: str, source: str) -> None:
    raise RecordFieldError(
        field,
        value,
        f"{allowed}; this record was edited or damaged: calibrate again, or restore the value "
        "plan-job wrote",
        source,
    )
