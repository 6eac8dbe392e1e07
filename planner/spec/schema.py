"""Reading one mapping of a YAML document with field-named errors.

A Section reads typed values out of a dict, remembers which keys it consumed and rejects the
rest, so a misspelt key fails loudly instead of silently falling back to a default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from planner.errors import SpecError, UnknownKeysError, close_match

_MISSING = object()


class Section:
    def __init__(self, raw: Any, path: str, source: str | None = None) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise SpecError(
                path or "<top level>", raw, "expected a mapping of keys to values", source
            )
        self.raw = dict(raw)
        self.path = path
        self.source = source
        self._seen: set[str] = set()

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, value: Any, allowed: str) -> SpecError:
        return SpecError(self.field(key), value, allowed, self.source)

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def get(self, key: str, default: Any = _MISSING) -> Any:
        self._seen.add(key)
        if key in self.raw and self.raw[key] is not None:
            return self.raw[key]
        if default is _MISSING:
            typo = self._misspelling_of(key)
            if typo is not None:
                # `micro_bach: 8` is a typo of the required key, not a missing value.
                raise self.error(
                    typo,
                    self.raw[typo],
                    f"unknown key; did you mean {key!r}? ({self.field(key)} is required)",
                )
            raise self.error(key, None, "this field is required")
        return default

    def _misspelling_of(self, key: str) -> str | None:
        """A key of the document, not otherwise known, that looks like a typo of ``key``."""
        for given in self.raw:
            # A stricter cutoff than for unknown keys: this one is reported before the
            # section's other keys are known, and max_steps/min_steps are 0.78 alike.
            if isinstance(given, str) and given != key and close_match(given, [key], 0.8):
                return given
        return None

    def section(self, key: str) -> Section:
        return Section(self.get(key, {}), self.field(key), self.source)

    def string(self, key: str, default: Any = _MISSING) -> Any:
        value = self.get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, value, "expected a non-empty string")
        return value

    def choice(self, key: str, choices: Sequence[str], default: Any = _MISSING) -> Any:
        value = self.get(key, default)
        if value is default and default is not _MISSING:
            return value
        if value not in choices:
            raise self.error(key, value, f"allowed: {', '.join(choices)}")
        return value

    def integer(
        self,
        key: str,
        default: Any = _MISSING,
        minimum: int | None = None,
        maximum: int | None = None,
        why: str = "",
    ) -> Any:
        """A whole number; ``maximum`` is a sane upper bound, ``why`` says why it is one."""
        value = self.get(key, default)
        if value is default and default is not _MISSING:
            return value
        value = _as_int(value)
        if value is None:
            raise self.error(key, self.raw.get(key), "expected a whole number (1000, 1e9, 10_000)")
        if minimum is not None and value < minimum:
            raise self.error(key, value, f"must be >= {minimum}")
        if maximum is not None and value > maximum:
            raise self.error(key, value, f"must be at most {maximum:,}{why}")
        return value

    def number(
        self,
        key: str,
        default: Any = _MISSING,
        minimum: float | None = None,
        maximum: float | None = None,
        exclusive_min: bool = False,
        why: str = "",
    ) -> Any:
        value = self.get(key, default)
        if value is default and default is not _MISSING:
            return value
        value = _as_float(value)
        if value is None or not math.isfinite(value):
            raise self.error(key, self.raw.get(key), "expected a finite number")
        if minimum is not None and (value <= minimum if exclusive_min else value < minimum):
            raise self.error(key, value, f"must be {'>' if exclusive_min else '>='} {minimum:g}")
        if maximum is not None and value > maximum:
            raise self.error(key, value, f"must be <= {maximum:g}{why}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, value, "expected true or false")
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.get(key, {})
        if not isinstance(value, Mapping):
            raise self.error(key, value, "expected a mapping of keys to values")
        return dict(value)

    def done(self) -> None:
        """Reject keys nobody asked for."""
        unknown = set(self.raw) - self._seen
        if unknown:
            raise UnknownKeysError(self.path, unknown, self._seen, self.source)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        # YAML 1.1 reads "1e9" as a string; users write data sizes that way.
        as_float = _as_float(value)
        if as_float is not None and as_float.is_integer():
            return int(as_float)
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:  # an integer past 1.8e308
            return math.inf
    if isinstance(value, str):
        try:
            return float(value.replace("_", ""))
        except ValueError:
            return None
    return None
