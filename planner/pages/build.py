"""A report page of each kind, from the objects the other commands print:

- a calibration record: what it measured, and the plan made from it (the CorrectedPlan that
  `plan-job plan` shows, its numbers as `plan --json`'s);
- a run (a run folder, a progress file or a job id, as `plan-job eta` takes): where it stands
  (the Eta, `eta --json`'s numbers), its progress and step times, and the plan.yaml it was
  emitted with;
- the history: `history --json`'s runs, predicted against actual.

write_page writes the HTML atomically. matplotlib is imported when the first figure is drawn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from jobs.progress import read_progress
from planner.atomic import write_text_atomic
from planner.calibration.record import CalibrationRecord
from planner.errors import PlanFileError
from planner.eta.estimate import estimate, observe_slurm
from planner.eta.source import load_source
from planner.history.corrected_plan import CorrectedPlan
from planner.history.report import history_json, history_text
from planner.model.plan import Plan
from planner.model.plan_json import plan_json
from planner.pages.calibration import calibration_section
from planner.pages.history import history_section
from planner.pages.html import Page, render_page
from planner.pages.plan import plan_section
from planner.pages.run import job_events, queue_waits, run_section
from planner.runs.run_folder import PLAN_FILE, load_plan
from planner.slurm.queue import Runner


def calibration_page(record: CalibrationRecord, record_path: str, planned: CorrectedPlan) -> Page:
    plan = planned.plan
    data = {
        "calibration": record.to_dict(),
        "plan": json.loads(plan_json(plan, planned.model)),
    }
    where = f"partition {plan.partition.name}" if plan.partition else "no partition limits read"
    corrected = " with the history's correction" if planned.corrected else ""
    intro = (
        f"The plan `plan-job plan` makes from this record for {plan.spec.source or 'its spec'}"
        f" ({where}){corrected}."
    )
    return Page(
        "calibration",
        f"plan-job report: {record.spec.name}",
        f"Calibration {record.created} and its plan",
        [
            calibration_section(record, record_path, data),
            plan_section(plan, data, record, intro=intro),
        ],
        data,
    )


@dataclass(frozen=True)
class RunPage:
    page: Page
    notes: tuple[str, ...]  # what could not be read, for the command's stderr


def run_page(
    target: str,
    total_steps: int | None = None,
    runner: Runner | None = None,
    now: float | None = None,
) -> RunPage:
    """TARGET as `plan-job eta` takes it; the page's numbers are that Eta's."""
    source = load_source(target, total_steps, runner)
    eta = estimate(source, observe_slurm(source, runner), now)
    history = source.history
    jobs = job_events(read_progress(history.path) if history.kind == "progress" else [])
    plan: Plan | None = None
    notes: list[str] = []
    folder = source.run_dir
    if folder is not None and (folder / PLAN_FILE).is_file():
        try:
            plan = load_plan(folder)
        except PlanFileError as exc:
            notes.append(f"the plan is left out: {exc}")
    data = {"eta": eta.to_dict()}
    sections = []
    if plan is not None:
        data["plan"] = json.loads(plan_json(plan))
    name = plan.spec.name if plan is not None else Path(eta.run_dir or eta.path).name
    sections.append(run_section(eta, data, jobs, plan, name))
    if plan is not None and folder is not None:
        intro = f"The plan this run was emitted with ({folder / PLAN_FILE})."
        sections.append(plan_section(plan, data, None, queue_waits(source, jobs), intro))
    page = Page(
        "run",
        f"plan-job report: run {name}",
        f"{eta.status}, step {eta.done_step:,} of {eta.total_steps:,}",
        sections,
        data,
    )
    return RunPage(page, tuple(notes))


def history_page(path: Path | None = None, limit: int = 20) -> Page:
    data = {"history": json.loads(history_json(path, limit))}
    text = history_text(path, limit, width=100)
    return Page(
        "history",
        "plan-job report: history",
        f"predicted against actual, from {data['history']['history']}",
        [history_section(data, text)],
        data,
    )


def write_page(page: Page, out: Path) -> int:
    """The page as one HTML file, written whole or not at all; its size in bytes."""
    text = render_page(page)
    write_text_atomic(out, text)
    return len(text.encode("utf-8"))
