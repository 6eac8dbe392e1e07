"""plan-job report without a browser: the command's arguments and errors, the page's
markup (its numbers tagged with their --json keys, its data block that cannot close early),
the SVG it inlines (ids of its own, a title, a size that follows the page, the same bytes
every time), and the arithmetic behind the figures (the CI curve, the jobs' timeline, the
planned pace across queue waits, the queue waits a run showed). The browser's view of the
pages is tests/test_report_browser.py."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.calibration.stats import steady_estimate
from planner.eta.source import Source
from planner.history.corrected_plan import CorrectedPlan
from planner.model.plan_json import plan_json
from planner.pages.build import calibration_page, run_page
from planner.pages.calibration import ci_curve
from planner.pages.html import Number, Page, Section, Table, lookup, number, render_page
from planner.pages.plan import _save_ticks, segment_spans
from planner.pages.run import JobEvents, planned_steps, queue_waits
from planner.pages.svg import WIDE, Chart, render
from planner.runs.progress import load_progress
from planner.runs.run_folder import SubmittedJob
from tests.builders import SPEC, partition, plan_for, record_for, spec_with, write_spec
from tests.in_process import invoke
from tests.paths import REPO
from tests.processes import no_slurm_env


def steps_record(n: int = 200, warmup: int = 10, seed: int = 0) -> object:
    """The reference record with per-step times: a slow warm-up, then 1.0 s +- 2%."""
    rng = random.Random(seed)
    times = [3.0 - 0.2 * i for i in range(warmup)] + [rng.gauss(1.0, 0.02) for _ in range(n)]
    est = steady_estimate(times)
    return record_for(
        spec_with(),
        step_times_s=tuple(times),
        steps_run=len(times),
        warmup_steps=est.warmup_steps,
        steady_steps=est.n,
        step_mean_s=est.mean,
        step_ci_half_s=est.ci_half_width,
    )


# -- the command ---------------------------------------------------------------------------


@pytest.mark.slow
def test_help_imports_neither_torch_nor_matplotlib() -> None:
    code = (
        "import sys; from planner.cli import cli; from click.testing import CliRunner; "
        "r = CliRunner().invoke(cli, ['report', '--help']); assert r.exit_code == 0, r.output; "
        "from planner import calibration_page, run_page, history_page, write_page; "
        "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "x.html"], "give TARGET"),
        (["--history", "--spec", "run.yaml", "-o", "x.html"], "--spec: only for a calibration"),
        (["cal.yaml", "--total-steps", "5", "-o", "x.html"], "--total-steps: only for a run"),
        (["progress.jsonl", "--nodes", "2", "-o", "x.html"], "--nodes: only for a calibration"),
        (["missing-run", "-o", "x.html"], "no such file or folder"),
        (["cal.yaml", "-o", "cal.yaml/x.html"], "-o cal.yaml/x.html: cannot write"),
    ],
)
def test_bad_arguments_exit_2_and_write_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    write_spec(tmp_path, SPEC)
    from planner.calibration.record import save_record

    save_record(record_for(spec_with()), tmp_path / "cal.yaml")
    (tmp_path / "progress.jsonl").write_text('{"event": "start", "time": 1, "step": 0}\n')
    env = no_slurm_env(tmp_path, PLANJOB_HISTORY=str(tmp_path / "h.sqlite"))
    proc = invoke(["report", *args], tmp_path, env)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr
    assert not list(tmp_path.glob("*.html")) and not list(tmp_path.glob(".*.tmp"))


def test_a_record_page_plans_the_records_own_spec_with_set(tmp_path: Path) -> None:
    from planner.calibration.record import save_record

    save_record(steps_record(), tmp_path / "cal.yaml")  # type: ignore[arg-type]
    env = no_slurm_env(tmp_path, PLANJOB_HISTORY=str(tmp_path / "h.sqlite"))
    out = tmp_path / "page.html"
    proc = invoke(
        ["report", "cal.yaml", "--set", "plan.max_nodes=1", "-o", str(out)], tmp_path, env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {out}"
    data = page_data(out.read_text())
    assert data["plan"]["nodes"] == 1 and len(data["plan"]["plan"]["options"]) == 1
    assert data["calibration"]["measurement"]["steps_run"] == 210


# -- the markup ----------------------------------------------------------------------------


def page_data(html: str) -> dict[str, object]:
    block = re.search(r'<script type="application/json" id="plan-job-data">(.*?)</script>', html)
    assert block is not None
    return dict(json.loads(block.group(1)))


def test_numbers_carry_their_json_key_and_value() -> None:
    data = {"plan": {"wall_p50_s": 3600.5, "options": [{"gpu_hours": 2.25}]}}
    shown = number(data, "plan", "options.0.gpu_hours", "{:.1f} GPU-h".format)
    assert shown == Number("2.2 GPU-h", "plan", "options.0.gpu_hours", 2.25)
    assert lookup(data["plan"], "wall_p50_s") == 3600.5
    page = Page(
        "history",
        "t",
        "s",
        [Section("s", "S", tables=[Table("c", ["a"], [[shown]])])],
        data,
    )
    html = render_page(page)
    assert 'data-json="plan:options.0.gpu_hours" data-value="2.25">2.2 GPU-h</td>' in html


def test_the_data_block_cannot_end_early() -> None:
    hostile = "</script><script>alert(1)</script>"
    html = render_page(Page("history", hostile, hostile, [], {"history": {"name": hostile}}))
    assert "<script>alert" not in html
    assert page_data(html) == {"history": {"name": hostile}}
    assert 'http-equiv="Content-Security-Policy"' in html and "default-src 'none'" in html


def test_an_inline_svg_has_its_own_ids_a_title_and_a_fluid_size() -> None:
    def draw(fig: object, layout: object) -> None:
        ax = fig.add_subplot()  # type: ignore[attr-defined]
        ax.plot([1, 2, 3], [3, 1, 2], label="a line")
        ax.set_title("x < y & z")
        ax.legend()

    chart = Chart("demo", "A <demo> figure", "caption", draw)
    svg = render(chart, WIDE)
    assert svg.startswith("<svg ") and "<?xml" not in svg
    head = svg[: svg.index(">")]
    assert "viewBox=" in head and " width=" not in head and " height=" not in head
    assert 'aria-labelledby="demo-w-title"' in head
    assert '<title id="demo-w-title">A &lt;demo&gt; figure</title>' in svg
    ids = set(re.findall(r'\bid="([^"]+)"', svg))
    assert ids and all(name.startswith("demo-w-") for name in ids)
    references = re.findall(r'(?:url\(#|href="#)([^")]+)', svg)
    assert references and set(references) <= ids  # every reference finds its target
    assert render(chart, WIDE) == svg  # deterministic: no date, a fixed hash salt


def test_the_calibration_page_is_the_same_bytes_every_time() -> None:
    record = steps_record()
    plan = plan_for(spec_with(plan__max_nodes=2), record=record)  # type: ignore[arg-type]
    planned = CorrectedPlan(plan, plan, False)
    first = render_page(calibration_page(record, "cal.yaml", planned))  # type: ignore[arg-type]
    again = render_page(calibration_page(record, "cal.yaml", planned))  # type: ignore[arg-type]
    assert first == again
    assert first.count("<figure") == 5 and first.count('<svg class="chart"') == 10


def test_a_known_energy_is_shown_with_its_key(tmp_path: Path) -> None:
    spec = spec_with(plan__max_nodes=1)
    record = record_for(spec, power_w=(400.0,) * 4, power_source="nvml")
    plan = plan_for(spec, record=record)
    html = render_page(calibration_page(record, "cal.yaml", CorrectedPlan(plan, plan, False)))
    value = json.dumps(plan.energy_kwh)
    assert f'data-json="plan:energy_kwh" data-value="{value}">{plan.energy_kwh:,.4g} kWh' in html
    assert json.loads(plan_json(plan))["energy_kwh"] == plan.energy_kwh


# -- what the figures compute --------------------------------------------------------------


def test_the_ci_curve_ends_at_the_records_ci_and_starts_at_min_steps() -> None:
    record = steps_record()
    curve = ci_curve(record)  # type: ignore[arg-type]
    m = record.measurement  # type: ignore[attr-defined]
    assert curve[0][0] >= record.spec.calibration.min_steps  # type: ignore[attr-defined]
    assert curve[-1][0] == m.steps_run
    assert curve[-1][1] == pytest.approx(m.step_ci_half_s / m.step_mean_s)
    # More steps, a narrower interval: the last quarter is below the first quarter.
    quarter = len(curve) // 4
    assert max(ci for _, ci in curve[-quarter:]) < min(ci for _, ci in curve[:quarter])


def test_the_jobs_timeline_is_the_plans_p50() -> None:
    one = plan_for(spec_with(plan__max_nodes=1))
    (segment, limit_s, expected_s), *_ = segment_spans(one)
    # One job: the whole P50 but the expected cost of interruptions, which no job plans.
    assert expected_s == pytest.approx(one.wall.p50_s - one.wall.failures_s)
    assert limit_s == segment.time_limit_minutes * 60 > expected_s
    chain = plan_for(spec_with(plan__max_nodes=1), partition(1800))
    assert len(chain.segments) > 2
    spans = segment_spans(chain)
    for segment, limit_s, expected_s in spans[:-1]:
        assert limit_s == segment.time_limit_minutes * 60
        assert expected_s == limit_s - chain.signal_lead_s  # runs until its signal
    # The last: a resume and the steps the others left, at the P50 pace.
    left = chain.total_steps - sum(s.steps_p50 for s, _, _ in spans[:-1])
    wall = chain.wall
    pace = (wall.steps_s + wall.checkpoints_s + wall.evals_s) / chain.total_steps
    assert spans[-1][2] == pytest.approx(chain.resume_s + left * pace)
    assert 0 < spans[-1][2] <= spans[-1][1]


def test_save_ticks_fall_at_the_interval_and_the_stop() -> None:
    plan = plan_for(spec_with(plan__max_nodes=1, checkpoint={"interval_steps": 100}))
    per_step = plan.checkpoint_interval_s / 100
    ticks = _save_ticks(plan, 250, 300, 10.0, per_step, 10.0 + 300 * per_step)
    # Steps 251..550: saves at 300, 400 and 500, then the stop save at the end.
    expected = [10.0 + (k - 250) * per_step for k in (300, 400, 500)] + [10.0 + 300 * per_step]
    assert ticks == pytest.approx(expected)


def test_the_planned_pace_pauses_over_a_gap_between_jobs() -> None:
    # 100 steps in 100 s of the jobs' own time; a 50 s wait from t=40 to t=90.
    moments = [0.0, 40.0, 60.0, 90.0, 100.0, 150.0, 200.0]
    steps = planned_steps(moments, 0.0, 100.0, 100, [(40.0, 90.0)])
    assert steps == [0.0, 40.0, 40.0, 40.0, 50.0, 100.0, 100.0]


def test_queue_waits_from_submission_or_the_job_before(tmp_path: Path) -> None:
    lines = [
        {"event": "start", "time": 1000.0, "step": 0, "job_id": "11"},
        {"event": "step", "time": 1100.0, "step": 10, "step_s": 1.0},
        {"event": "stop", "time": 1200.0, "step": 10, "reason": "signal"},
        {"event": "start", "time": 1500.0, "step": 10, "job_id": "12"},
        {"event": "step", "time": 1600.0, "step": 20, "step_s": 1.0},
    ]
    path = tmp_path / "progress.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    from datetime import datetime, timezone

    def iso(moment: float) -> str:
        return datetime.fromtimestamp(moment, timezone.utc).isoformat()

    chain = (
        SubmittedJob(1, "segment-01.sbatch", "11", None, iso(900.0)),
        SubmittedJob(2, "segment-02.sbatch", "12", "afterany:11", iso(905.0)),
    )
    source = Source("run", load_progress(path, 100), chain=chain)
    from jobs.progress import read_progress
    from planner.pages.run import job_events

    jobs = job_events(read_progress(path))
    assert [len(j.steps) for j in jobs] == [1, 1] and jobs[1].start_step == 10
    # The first waited from its submission; the second (afterany) from the first's end.
    assert queue_waits(source, jobs) == {1: 100.0, 2: 300.0}
    assert queue_waits(Source("run", load_progress(path, 100)), jobs) == {}


def test_a_bare_progress_file_gets_a_run_page_without_a_plan(tmp_path: Path) -> None:
    lines = [{"event": "start", "time": 0.0, "step": 0, "total_steps": 50}]
    lines += [
        {"event": "step", "time": float(i), "step": i, "step_s": 1.0, "loss": 5.0 / i}
        for i in range(1, 31)
    ]
    lines += [{"event": "hang", "time": 40.0, "phase": "step", "waited_s": 9.5}]  # no step
    lines += [{"event": "failure", "time": 41.0, "step": 30, "cause": "hang", "message": "x"}]
    path = tmp_path / "progress.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    built = run_page(str(path), now=45.0)
    html = render_page(built.page)
    assert [s.key for s in built.page.sections] == ["run"]
    assert html.count("<figure") == 3  # progress, step times, loss
    assert page_data(html)["eta"]["done_step"] == 30  # type: ignore[index]
    from jobs.progress import read_progress
    from planner.pages.run import job_events

    (job,) = job_events(read_progress(path))
    assert job.hangs == [(40.0, 30)] and JobEvents(1).steps == []  # marked at its last step
    # What the lines say is said on the page.
    assert "job 1: hung in its step phase (no progress for 9.5 s" in html
    assert "job 1: failed after step 30: hang: x" in html
