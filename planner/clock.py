"""Moments as a reader needs them: a date, a time and its zone, and how far off it is.

"eta 00:03:45" (the clock at the moment of asking, in the header) read as the ETA; a finish
is shown as "2026-12-01 14:05 UTC (in 2 h 10 min)" instead, in local time with the zone's
name, so it cannot be taken for a duration or another day. Torch-free.
"""

from __future__ import annotations

import datetime as dt

from planner.units import fmt_duration


def local(moment: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(moment).astimezone()


def clock_text(moment: float, seconds: bool = False) -> str:
    """2026-12-01 14:05 UTC (local time and its zone)."""
    return local(moment).strftime("%Y-%m-%d %H:%M" + (":%S" if seconds else "") + " %Z")


def relative_text(moment: float, now: float) -> str:
    """in 2 h 10 min; 5 min 02 s ago; now."""
    delta = moment - now
    if abs(delta) < 1:
        return "now"
    span = fmt_duration(abs(delta))
    return f"in {span}" if delta > 0 else f"{span} ago"


def moment_text(moment: float | None, now: float) -> str:
    """2026-12-01 14:05 UTC (in 2 h 10 min)."""
    if moment is None:
        return "unknown"
    return f"{clock_text(moment)} ({relative_text(moment, now)})"


def short_moment_text(moment: float, now: float) -> str:
    """14:05 UTC (in 58 min) today; with the date on another day."""
    same_day = local(moment).date() == local(now).date()
    text = local(moment).strftime("%H:%M %Z") if same_day else clock_text(moment)
    return f"{text} ({relative_text(moment, now)})"
