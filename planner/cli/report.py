"""plan-job report: one HTML page, with figures, of a calibration and its plan, of a run, or
of the history; a single file that opens anywhere after `scp`, fetching nothing."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from planner.cli.common import (
    DEADLINE,
    NO_CORRECTION,
    NODES,
    SETS,
    BadInputExit,
    fail,
)
from planner.errors import PlanJobError

if TYPE_CHECKING:  # the command imports them when it runs: --help needs none of it
    from planner.calibration.record import CalibrationRecord
    from planner.history.corrected_plan import CorrectedPlan
    from planner.pages.html import Page

RECORD_SUFFIXES = (".yaml", ".yml")


@click.command("report")
@click.argument("target", metavar="[TARGET]", required=False)
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The HTML file to write (replaced whole).",
)
@click.option(
    "--history",
    "history_file",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[PATH]",
    help="Without TARGET: a page of the history. With a record: the database the plan's "
    "correction comes from. PATH defaults to $PLANJOB_HISTORY, else "
    "~/.local/share/plan-job/history.sqlite.",
)
@click.option(
    "--spec",
    "spec_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A record's page: plan this spec with it [default: the spec the record ran].",
)
@SETS
@DEADLINE
@NODES
@NO_CORRECTION
@click.option(
    "--total-steps",
    type=click.IntRange(min=1),
    help="A run's page: its last step, for progress files without a `start` line.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="The history's page: the newest runs shown.",
)
def report(
    target: str | None,
    out: Path,
    history_file: str | None,
    spec_path: Path | None,
    sets: tuple[str, ...],
    deadline: float | None,
    nodes: int | None,
    no_correction: bool,
    total_steps: int | None,
    limit: int,
) -> None:
    """Write one self-contained HTML page of figures: TARGET's, or the history's.

    \b
    TARGET is one of:
      a calibration record (cal.yaml)   what it measured, and the plan made from it
      a run (runs/x, a progress.jsonl,  steps against time beside the plan, step times,
        a trainer_state.json, a job id)   loss; the plan it was emitted with
    or give --history (and no TARGET) for predicted against actual, per workload.

    \b
    The numbers are those of `plan --json`, `eta --json` and `history --json`; the page
    loads no script, font or image, so it opens the same after `scp` to a laptop.
    """
    from planner.pages.build import history_page, run_page, write_page

    history = Path(history_file).expanduser() if history_file else None
    plan_options = {
        "--spec": spec_path is not None,
        "--set": bool(sets),
        "--deadline": deadline is not None,
        "--nodes": nodes is not None,
        "--no-correction": no_correction,
    }
    try:
        if target is None:
            if history_file is None:
                raise BadInputExit(
                    "give TARGET (a calibration record, a run folder, a progress file or a job "
                    "id) or --history for the history's page"
                )
            _refuse(plan_options, "a calibration record's page")
            _refuse({"--total-steps": total_steps is not None}, "a run's page")
            page = history_page(history, limit)
        elif _is_record(target):
            _refuse({"--total-steps": total_steps is not None}, "a run's page")
            page = _record_page(
                Path(target), spec_path, sets, deadline, nodes, history, not no_correction
            )
        else:
            _refuse(plan_options, "a calibration record's page")
            built = run_page(target, total_steps)
            for note in built.notes:
                click.echo(f"note: {note}", err=True)
            page = built.page
        size = write_page(page, out)
    except PlanJobError as exc:
        fail(exc)
    except OSError as exc:
        raise BadInputExit(f"-o {out}: cannot write ({exc.strerror or exc})") from exc
    figures = sum(len(section.charts) for section in page.sections)
    click.echo(f"wrote {out}")
    click.echo(
        f"{page.kind} page, {figures} figures, {size / 1024:,.0f} KiB: one file that fetches "
        "nothing; open it in any browser",
        err=True,
    )


def _is_record(target: str) -> bool:
    """A YAML file that is not a run folder's plan.yaml: read as a calibration record (whose
    loader says so when it is not one)."""
    path = Path(target).expanduser()
    return path.is_file() and path.suffix in RECORD_SUFFIXES and path.name != "plan.yaml"


def _refuse(given: dict[str, bool], applies_to: str) -> None:
    wrong = [name for name, present in given.items() if present]
    if wrong:
        raise BadInputExit(f"{', '.join(wrong)}: only for {applies_to}")


def _record_page(
    record_path: Path,
    spec_path: Path | None,
    sets: tuple[str, ...],
    deadline: float | None,
    nodes: int | None,
    history: Path | None,
    correct: bool,
) -> Page:
    from planner.calibration.record import load_record
    from planner.pages.build import calibration_page

    record = load_record(record_path)
    planned = _plan(record, record_path, spec_path, sets, deadline, nodes, history, correct)
    return calibration_page(record, str(record_path), planned)


def _plan(
    record: CalibrationRecord,
    record_path: Path,
    spec_path: Path | None,
    sets: tuple[str, ...],
    deadline: float | None,
    nodes: int | None,
    history: Path | None,
    correct: bool,
) -> CorrectedPlan:
    """The plan `plan-job plan` makes: the spec (or the one the record ran, with --set), the
    partition's limits where Slurm is here, the history's correction."""
    from planner.cli.common import partition_or_note
    from planner.history.corrected_plan import corrected_plan
    from planner.spec.load import apply_override, load_spec, parse_spec

    if spec_path is not None:
        spec = load_spec(spec_path, sets)
    else:
        raw = record.spec.to_dict()
        for item in sets:
            apply_override(raw, item)
        spec = parse_spec(raw, source=f"{record_path} (spec)")
    partition, _ = partition_or_note(spec.cluster.partition)
    planned = corrected_plan(
        spec,
        record,
        partition,
        str(record_path),
        deadline_hours=deadline,
        nodes=nodes,
        history=history,
        correct=correct,
    )
    if planned.warning:
        click.echo(f"warning: {planned.warning}", err=True)
    return planned
