"""Tables and paragraphs that fit the terminal: long text columns wrap instead of running
past the edge (plan-job's notes reached 168 columns).

The width is $COLUMNS when set, else the terminal's on a terminal, else 100 (a log file or
a pipe: wide enough for every table, narrow enough to read). Torch-free.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

import tabulate as tabulate_module
from tabulate import tabulate

DEFAULT_WIDTH = 100
MIN_WIDTH = 40  # narrower than this, wrapped columns would hold a word or two a line
MIN_COLUMN = 12  # a wrapped column is never made narrower than this
# A number and its unit stay on one line: "1 h 15 min" wraps as "1 h" / "15 min".
_UNIT_RE = re.compile(r"(\d) (ms|s|min|h|d|GB/s|TFLOP/s|B|KiB|MiB|GiB|TiB)\b")
_GLUE = "\x00"  # stands for a space textwrap must not break at


def output_width(stream: TextIO | None = None) -> int:
    """The columns to fit: $COLUMNS, the terminal's, or DEFAULT_WIDTH when not a terminal."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return max(int(columns), MIN_WIDTH)
    stream = stream or sys.stdout
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    if tty:
        return max(shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns, MIN_WIDTH)
    return DEFAULT_WIDTH


def widest_line(text: str) -> int:
    return max((len(line) for line in text.splitlines()), default=0)


def wrap_lines(text: str, width: int, indent: str = "") -> list[str]:
    """``text`` wrapped at ``width``, never between a number and its unit ("1.06 s")."""
    glued = _UNIT_RE.sub(lambda m: m.group(1) + _GLUE + m.group(2), text)
    lines = textwrap.wrap(glued, width, subsequent_indent=indent, break_on_hyphens=False)
    return [line.replace(_GLUE, " ") for line in lines] or [""]


def wrap_text(text: str, width: int | None = None, indent: str = "") -> str:
    """Each line of ``text`` wrapped at ``width``; continuation lines get ``indent``."""
    width = width or output_width()
    return "\n".join(
        "\n".join(wrap_lines(line, width, indent)) if line else line for line in text.splitlines()
    )


def fit_table(
    rows: Sequence[Sequence[Any]],
    headers: Sequence[str] = (),
    *,
    wrap: Mapping[int, int] | None = None,
    width: int | None = None,
    detach: int | None = None,
    **kwargs: Any,
) -> str:
    """tabulate(rows, headers, tablefmt="simple") no wider than ``width`` where it can be.

    ``wrap`` maps the columns that may wrap (negative indices count from the end) to the
    narrowest each may become; by default the last column, down to MIN_COLUMN. A table that
    fits is rendered exactly as tabulate would. One that does not loses tabulate's padding
    beside the headers, then its wrappable columns shrink, widest first, together. Column
    ``detach`` (a long note) wraps alone first; if that is not enough it leaves the table and
    follows it as a list keyed by each row's first cell, and the rest shrink as above.
    """
    width = width or output_width()
    kwargs.setdefault("tablefmt", "simple")
    cells = [["" if cell is None else str(cell) for cell in row] for row in rows]
    heads = [str(h) for h in headers]
    text = tabulate(cells, headers=heads, **kwargs) if heads else tabulate(cells, **kwargs)
    if widest_line(text) <= width or not cells:
        return text
    count = max(len(row) for row in cells)
    limits = {c % count: m for c, m in (wrap or {-1: MIN_COLUMN}).items()}
    with _no_header_padding():
        if detach is None:
            return _shrunk(cells, heads, limits, width, kwargs)
        column = detach % count
        text = _shrunk(cells, heads, {column: limits.get(column, MIN_COLUMN)}, width, kwargs)
        if widest_line(text) <= width:
            return text
        kept = [[c for i, c in enumerate(row) if i != column] for row in cells]
        kept_heads = [h for i, h in enumerate(heads) if i != column]
        moved = {(i - (i > column)): m for i, m in limits.items() if i != column}
        table = (
            _shrunk(kept, kept_heads, moved, width, kwargs)
            if moved
            else _render(kept, kept_heads, {}, kwargs)
        )
    return table + "\n\n" + _listing(cells, heads, column, width)


def _listing(cells: list[list[str]], heads: list[str], column: int, width: int) -> str:
    """A detached column under its table: each row's first cell, then its text."""
    keys = [row[0].strip() for row in cells]
    pad = max(len(k) for k in keys)
    title = f"{heads[column]} ({heads[0]})" if heads else "notes"
    lines = [f"{title}:"]
    for key, row in zip(keys, cells, strict=True):
        if row[column].strip():
            line = f"  {key.rjust(pad)}  {row[column]}"
            lines.append(wrap_text(line, width, indent=" " * (pad + 4)))
    return "\n".join(lines)


def _shrunk(
    cells: list[list[str]],
    heads: list[str],
    limits: Mapping[int, int],
    width: int,
    kwargs: Mapping[str, Any],
) -> str:
    """The table with its wrappable columns narrowed (water-filling) until it fits."""
    natural = _column_widths(cells, heads)
    allowed = dict.fromkeys(limits, 0) | {c: natural.get(c, 0) for c in limits}
    text = _render(cells, heads, allowed, kwargs)
    for _ in range(4):  # wrapping may leave lines shorter than allowed: a few passes settle it
        excess = widest_line(text) - width
        if excess <= 0:
            break
        allowed = _water_fill(allowed, limits, excess)
        text = _render(cells, heads, allowed, kwargs)
    return text


def _water_fill(
    widths: Mapping[int, int], floors: Mapping[int, int], excess: int
) -> dict[int, int]:
    """Lower the widest columns to one level so that together they give up ``excess``."""
    out = dict(widths)
    for level in range(max(widths.values(), default=0), 0, -1):
        saved = sum(max(w - max(level, floors[c]), 0) for c, w in widths.items())
        if saved >= excess or level <= min(floors.values(), default=0):
            for c, w in widths.items():
                out[c] = min(w, max(level, floors[c]))
            break
    return out


def _render(
    cells: list[list[str]], heads: list[str], widths: Mapping[int, int], kwargs: Mapping[str, Any]
) -> str:
    def cut(text: str, column: int) -> str:
        limit = widths.get(column)
        if not limit:
            return text
        return "\n".join(
            line for part in text.splitlines() or [""] for line in wrap_lines(part, limit)
        )

    rows = [[cut(cell, i) for i, cell in enumerate(row)] for row in cells]
    wrapped_heads = [cut(h, i) for i, h in enumerate(heads)]
    if wrapped_heads:
        return tabulate(rows, headers=wrapped_heads, **kwargs)
    return tabulate(rows, **kwargs)


def _column_widths(cells: list[list[str]], heads: list[str]) -> dict[int, int]:
    widths: dict[int, int] = {}
    for row in [heads, *cells]:
        for i, cell in enumerate(row):
            widths[i] = max(widths.get(i, 0), widest_line(cell))
    return widths


@contextmanager
def _no_header_padding() -> Iterator[None]:
    """tabulate widens every column to its header + 2 (MIN_PADDING, a module setting with no
    argument); a table that has to shrink gives those columns back first. The CLI renders
    one table at a time, so the setting is restored before anything else reads it."""
    saved = tabulate_module.MIN_PADDING
    tabulate_module.MIN_PADDING = 0
    try:
        yield
    finally:
        tabulate_module.MIN_PADDING = saved
