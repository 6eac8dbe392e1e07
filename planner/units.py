"""Human-readable numbers for tables: durations, sizes, rates."""

from __future__ import annotations

import math


def fmt_duration(seconds: float) -> str:
    """1.23 ms, 4.56 s, 7 min 08 s, 3 h 12 min, 4 d 05 h."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 60:
        return f"{seconds:.3g} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours:02d} h"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3g} TiB"


def fmt_count(n: float) -> str:
    """12.3k, 4.56M, 1.2B, 3.4T."""
    for threshold, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= threshold:
            return f"{n / threshold:.3g}{suffix}"
    return f"{n:.3g}"


def fmt_percent(x: float) -> str:
    return f"{x * 100:.2g}%" if x < 0.1 else f"{x * 100:.1f}%"


def slurm_minutes(minutes: int) -> str:
    """--time in Slurm's days-hours:minutes:seconds form."""
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00" if days else f"{hours:02d}:{mins:02d}:00"
