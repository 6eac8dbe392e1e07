"""The report pages in a real browser (Debian's Chromium, headless, over its DevTools
protocol: tests/browser.py), at a desktop's 1280 px and a phone's 400 px: each page loads
with no console error and asks for nothing, every figure is drawn (its region of a
screenshot is not blank and holds the data's colours) under an accessible title, nothing
spills sideways, and every number the page shows equals the one --json prints.

The inputs are real: a tiny JiT calibrated on this machine, a run of it in two jobs (the
second resumed), a history database (tests/report_examples.py). Slow-ish (a calibration,
two short training jobs, Chromium): marked ``browser``; never skipped where Chromium is
missing, which fails them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from planner.pages.html import lookup
from planner.units import fmt_duration
from tests.browser import Chromium, View
from tests.processes import no_slurm_env, run_cli
from tests.report_examples import calibrated, history_db, ran

pytestmark = pytest.mark.browser

WIDTHS = (1280, 400)
FIGURES = {"calibration": 5, "run": 6, "history": 1}


@dataclass(frozen=True)
class Built:
    html: Path
    sources: dict[str, Any]  # what --json printed, by the page's source names


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    folder = tmp_path_factory.mktemp("report-pages")
    env = no_slurm_env(folder, PLANJOB_HISTORY=str(folder / "own-history.sqlite"))
    spec, cal = calibrated(folder)
    run_dir = ran(folder, spec, cal)
    db = history_db(folder)

    def cli(*args: str) -> str:
        proc = run_cli(list(args), folder, env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    plan = json.loads(cli("plan", str(spec), "--calibration", str(cal), "--json"))
    built = {
        "calibration": Built(
            folder / "calibration.html",
            {"plan": plan, "calibration": yaml.safe_load(cal.read_text())},
        ),
        # The run folder's plan.yaml is the plan emit made from the same spec and record.
        "run": Built(
            folder / "run.html",
            {"eta": json.loads(cli("eta", str(run_dir), "--json")), "plan": plan},
        ),
        "history": Built(
            folder / "history.html",
            {"history": json.loads(cli("history", "--history", str(db), "--json"))},
        ),
    }
    cli("report", str(cal), "--spec", str(spec), "-o", str(built["calibration"].html))
    cli("report", str(run_dir), "-o", str(built["run"].html))
    cli("report", "--history", str(db), "-o", str(built["history"].html))
    return built


@pytest.fixture(scope="module")
def chromium() -> Iterator[Chromium]:
    with Chromium() as browser:
        yield browser


_FIGURES_JS = """
Array.from(document.querySelectorAll('figure')).map(f => {
  const shown = Array.from(f.querySelectorAll('svg.chart'))
    .filter(s => s.getBoundingClientRect().width > 0);
  const svg = shown[0];
  const r = svg ? svg.getBoundingClientRect() : null;
  const label = svg ? document.getElementById(svg.getAttribute('aria-labelledby')) : null;
  return {
    id: f.id,
    heading: (f.querySelector('figcaption strong') || {}).textContent || '',
    shown: shown.length,
    title: svg && svg.querySelector('title') ? svg.querySelector('title').textContent : '',
    labelled: label ? label.textContent : '',
    rect: r ? {x: r.left + window.scrollX, y: r.top + window.scrollY,
               width: r.width, height: r.height} : null,
  };
})
"""


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("kind", sorted(FIGURES))
def test_the_page_loads_clean_and_draws_every_figure(
    pages: dict[str, Built], chromium: Chromium, kind: str, width: int
) -> None:
    view = chromium.open(pages[kind].html, width)
    assert view.errors == []
    assert view.requests == []  # nothing fetched: no script, font, image or stylesheet
    assert view.evaluate("document.body.dataset.page") == kind
    assert view.evaluate("document.documentElement.scrollWidth") <= width  # no sideways spill
    figures = view.evaluate(_FIGURES_JS)
    assert len(figures) == FIGURES[kind], [f["id"] for f in figures]
    for figure in figures:
        name = figure["id"]
        assert figure["shown"] == 1, f"{name}: one drawing per screen width"
        assert figure["title"] and figure["title"] == figure["heading"] == figure["labelled"]
        rect = figure["rect"]
        assert rect["width"] >= min(width - 40, 1000) * 0.9, (name, rect)
        assert rect["x"] + rect["width"] <= width and rect["height"] >= 100, (name, rect)
        ink, colour = inked(view, rect)
        assert ink > 0.005, f"{name}: the figure's region is blank ({ink:.3%} drawn)"
        assert colour > 150, f"{name}: no data drawn in colour ({colour} pixels)"


def inked(view: View, rect: dict[str, float]) -> tuple[float, int]:
    """Of the rectangle's pixels: the share not white, and how many are in a colour (not
    grey or black: axes and text are those, the data the palette's)."""
    png = view.screenshot(rect["x"], rect["y"], rect["width"], rect["height"])
    data = Image.open(io.BytesIO(png)).convert("RGB").tobytes()
    pixels = [data[i : i + 3] for i in range(0, len(data), 3)]
    drawn = sum(1 for p in pixels if min(p) < 225)
    coloured = sum(1 for p in pixels if max(p) - min(p) > 60)
    return drawn / len(pixels), coloured


_NUMBERS_JS = """
Array.from(document.querySelectorAll('[data-json]'))
  .map(e => [e.dataset.json, e.dataset.value, e.textContent])
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(FIGURES))
def test_the_numbers_are_those_of_json(
    pages: dict[str, Built], chromium: Chromium, kind: str
) -> None:
    built = pages[kind]
    view = chromium.open(built.html, 1280)
    shown = view.evaluate(_NUMBERS_JS)
    assert len(shown) >= {"calibration": 20, "run": 12, "history": 12}[kind]
    sources = built.sources
    for tag, value, _text in shown:
        source, key = tag.split(":", 1)
        expected = lookup(sources[source], key)
        if source == "eta" and key in ("finish_p50", "finish_p95"):
            # A moment: now + the remaining time; the page and eta --json ran moments apart.
            page_now = view.evaluate(
                "JSON.parse(document.getElementById('plan-job-data').textContent).eta.now"
            )
            assert json.loads(value) - page_now == pytest.approx(
                expected - sources["eta"]["now"], abs=1e-6
            ), tag
            continue
        assert json.loads(value) == expected, tag
    texts = {tag: text for tag, _value, text in shown}
    if kind != "history":
        assert texts["plan:wall_p50_s"] == fmt_duration(sources["plan"]["wall_p50_s"])


@pytest.mark.slow
def test_the_example_run_is_what_the_page_says(pages: dict[str, Built]) -> None:
    """The run's inputs are what the figures need: two jobs, the second resumed."""
    eta = pages["run"].sources["eta"]
    assert eta["jobs_seen"] == 2 and eta["status"] == "stopped"
    assert 0 < eta["done_step"] < eta["total_steps"]
