"""The report page's markup: one HTML file with its style inline, its figures as inline SVG
(each drawn wide and narrow; CSS shows the one that fits the screen), and nothing to fetch:
a Content-Security-Policy forbids every script, font and remote image, so a page that
tried would say so in the browser's console (which the tests read).

Every headline number is a Number: the text a person reads and, in ``data-json`` and
``data-value``, the --json object and key it came from with the value there, so a script
(and tests/test_report_page.py) can check the page against the command's --json. The JSON
objects themselves are embedded whole (``<script type="application/json">``, data only).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from planner.model.plan_json import json_safe
from planner.pages.svg import NARROW, WIDE, Chart, render


@dataclass(frozen=True)
class Number:
    """A figure as shown, and where its value is in a --json object (``source``: plan, eta,
    history or calibration; ``key``: a dotted path, list items by index)."""

    text: str
    source: str = ""
    key: str = ""
    value: Any = None


@dataclass(frozen=True)
class Fact:
    label: str
    number: Number
    note: str = ""


@dataclass(frozen=True)
class Table:
    caption: str
    headers: Sequence[str]
    rows: Sequence[Sequence[Number | str]]
    wrap_last: bool = False  # the last column is prose that wraps; the others never do


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    intro: str = ""
    facts: Sequence[Fact] = ()
    charts: Sequence[Chart] = ()
    tables: Sequence[Table] = ()
    notes: Sequence[str] = ()
    cli_text: str = ""  # the command's own table, shown folded


@dataclass(frozen=True)
class Page:
    kind: str  # calibration, run or history
    title: str
    subtitle: str
    sections: Sequence[Section]
    data: dict[str, Any] = field(default_factory=dict)  # source -> its --json object


_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #fff; color: #1d1d1f;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 16px 24px 48px; }
header h1 { font-size: 1.45rem; margin: 0.3em 0 0.1em; }
header p { color: #555; margin: 0; }
h2 { font-size: 1.2rem; margin: 1.8em 0 0.4em; padding-bottom: 0.2em;
  border-bottom: 1px solid #ddd; }
p.intro, p.note { color: #444; margin: 0.4em 0; }
dl.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr));
  gap: 8px 14px; margin: 12px 0; }
dl.facts div { background: #f5f6f8; border-radius: 6px; padding: 7px 10px; }
dt { font-size: 0.8rem; color: #555; }
dd { margin: 0; font-weight: 600; font-variant-numeric: tabular-nums;
  overflow-wrap: anywhere; }
dd small { display: block; font-weight: 400; color: #555; font-size: 0.8rem; }
figure { margin: 22px 0; }
figcaption { font-size: 0.9rem; color: #333; margin-bottom: 6px; }
figcaption strong { display: block; font-size: 1rem; color: #111; }
svg.chart { display: block; width: 100%; height: auto; }
.narrow { display: none; }
.table-wrap { overflow-x: auto; margin: 10px 0; }
table { border-collapse: collapse; font-size: 0.85rem; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { padding: 4px 9px; border-bottom: 1px solid #e4e4e4; text-align: right;
  white-space: nowrap; vertical-align: top; }
td.prose { white-space: normal; min-width: 16em; text-align: left; }
th:first-child, td:first-child { text-align: left; }
details { margin: 12px 0; }
details pre { overflow-x: auto; font-size: 0.75rem; background: #f5f6f8; padding: 8px; }
footer { margin-top: 32px; color: #666; font-size: 0.8rem; }
@media (max-width: 640px) {
  main { padding: 10px 12px 32px; }
  .wide { display: none; }
  .narrow { display: block; }
  dl.facts { grid-template-columns: 1fr 1fr; }
}
""".strip()


def render_page(page: Page) -> str:
    title = escape(page.title)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="plan-job report">',
        f"<title>{title}</title>",
        f"<style>\n{_CSS}\n</style>",
        "</head>",
        f'<body data-page="{escape(page.kind)}">',
        "<main>",
        f"<header><h1>{title}</h1><p>{escape(page.subtitle)}</p></header>",
    ]
    parts += [_section(section) for section in page.sections]
    parts.append(
        "<footer>Made by <code>plan-job report</code>; the numbers are those of "
        "<code>--json</code> (embedded below as data), the figures matplotlib's.</footer>"
    )
    parts.append("</main>")
    data = json.dumps(json_safe(page.data), sort_keys=True, separators=(",", ":"))
    # "</" cannot end the block early once escaped: JSON reads \u003c as "<".
    data = data.replace("<", "\\u003c")
    parts.append(f'<script type="application/json" id="plan-job-data">{data}</script>')
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _section(section: Section) -> str:
    out = [f'<section id="{escape(section.key)}">', f"<h2>{escape(section.title)}</h2>"]
    if section.intro:
        out.append(f'<p class="intro">{escape(section.intro)}</p>')
    if section.facts:
        out.append('<dl class="facts">')
        out += [_fact(fact) for fact in section.facts]
        out.append("</dl>")
    out += [f'<p class="note">{escape(note)}</p>' for note in section.notes]
    out += [_figure(chart) for chart in section.charts]
    out += [_table(table) for table in section.tables]
    if section.cli_text:
        out.append(
            "<details><summary>The same as the command prints it</summary>"
            f"<pre>{escape(section.cli_text)}</pre></details>"
        )
    out.append("</section>")
    return "\n".join(out)


def _fact(fact: Fact) -> str:
    note = f"<small>{escape(fact.note)}</small>" if fact.note else ""
    value = f"<dd><span{_data(fact.number)}>{_text(fact.number)}</span>{note}</dd>"
    return f"<div><dt>{escape(fact.label)}</dt>{value}</div>"


def _figure(chart: Chart) -> str:
    return (
        f'<figure id="{escape(chart.key)}">'
        f"<figcaption><strong>{escape(chart.title)}</strong>{escape(chart.caption)}</figcaption>"
        f'<div class="wide">{render(chart, WIDE)}</div>'
        f'<div class="narrow">{render(chart, NARROW)}</div>'
        "</figure>"
    )


def _table(table: Table) -> str:
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in table.headers)
    rows = []
    for row in table.rows:
        cells = []
        for index, cell in enumerate(row):
            prose = ' class="prose"' if table.wrap_last and index == len(row) - 1 else ""
            if isinstance(cell, Number):
                cells.append(f"<td{prose}{_data(cell)}>{_text(cell)}</td>")
            else:
                cells.append(f"<td{prose}>{escape(cell)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="table-wrap"><table><caption>{escape(table.caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _data(number: Number) -> str:
    if not number.source:
        return ""
    value = escape(json.dumps(json_safe(number.value)), quote=True)
    return f' data-json="{escape(number.source)}:{escape(number.key)}" data-value="{value}"'


def _text(number: Number) -> str:
    return escape(number.text)


def lookup(data: Any, key: str) -> Any:
    """The value at a dotted path of a JSON object (list items by index): what a Number's
    ``key`` names."""
    for part in key.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def number(data: dict[str, Any], source: str, key: str, fmt: Callable[[Any], str] = str) -> Number:
    """A Number read from the --json object it names and written by ``fmt``, so the page
    shows that value and no other."""
    value = lookup(data[source], key)
    return Number(fmt(value), source, key, value)
