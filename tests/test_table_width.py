"""Every table plan-job prints fits 100 columns (its notes reached 168), wrapping its long text
columns instead of cutting them; a terminal's own width (or $COLUMNS) is used when known.

The golden file is regenerated only on request:

    PLANJOB_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/test_table_width.py
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from tabulate import tabulate

from planner.calibration.report import calibration_table, scaling_table
from planner.eta import estimate as estimator
from planner.eta.report import eta_table
from planner.eta.source import load_source
from planner.followup.report import jobs_table, resubmission_text, tighten_text
from planner.followup.resubmit import prepare
from planner.followup.state import inspect_run
from planner.followup.tighten import plan_tightening
from planner.history import database as history
from planner.history.report import history_text
from planner.model.report import plan_table
from planner.runs.run_folder import SubmittedJob
from planner.textwidth import fit_table, output_width
from tests.builders import (
    add_outcomes,
    plan_for,
    record_for,
    recorded_run,
    reference_files,
    scaled_record,
    spec_with,
)
from tests.in_process import invoke
from tests.processes import no_slurm_env
from tests.progress_logs import fake_runner, queue_text
from tests.run_folders import FakeSlurm, accounted, running_folder, stopped_folder

GOLDEN = Path(__file__).parent / "golden"
WIDTH = 100
LONG = "a note long enough to need wrapping " * 6


def widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


def words(text: str) -> str:
    return " ".join(text.split())


# -- the fitting itself ----------------------------------------------------------------------


def test_a_table_that_fits_is_tabulates_own() -> None:
    rows = [("a", "short"), ("bb", "text")]
    assert fit_table(rows, ("key", "value"), width=WIDTH) == tabulate(
        rows, headers=("key", "value"), tablefmt="simple"
    )


def test_the_long_column_wraps_and_nothing_is_cut() -> None:
    text = fit_table([("key", LONG), ("other", "short")], ("what", "text"), width=60)
    assert widest(text) <= 60
    assert words(LONG) in words(text)  # every word kept, in order
    lines = text.splitlines()
    assert lines[2].startswith("key    a note long") and lines[3].startswith("       ")


def test_a_note_that_cannot_wrap_enough_goes_under_the_table() -> None:
    rows = [("* 1", "x" * 30, "chosen: " + LONG), ("2", "y" * 30, "slower")]
    text = fit_table(rows, ("nodes", "numbers", "note"), wrap={-1: 30}, width=60, detach=-1)
    assert widest(text) <= 60
    table, notes = text.split("\n\n")
    assert "note" not in table and "chosen" not in table
    assert notes.splitlines()[:2] == [
        "note (nodes):",
        "  * 1  chosen: a note long enough to need wrapping a note",
    ]
    assert notes.splitlines()[-1] == "    2  slower"


def test_the_width_comes_from_columns_else_100_off_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Pipe:
        def isatty(self) -> bool:
            return False

    monkeypatch.delenv("COLUMNS", raising=False)
    assert output_width(Pipe()) == 100  # type: ignore[arg-type]
    monkeypatch.setenv("COLUMNS", "132")
    assert output_width(Pipe()) == 132  # type: ignore[arg-type]
    monkeypatch.setenv("COLUMNS", "10")
    assert output_width(Pipe()) == 40  # type: ignore[arg-type]


# -- every table at 100 columns ----------------------------------------------------------------


def plans() -> dict[str, object]:
    cost = spec_with(plan__gpu_hour_cost=2.5)
    cpu = spec_with(
        cluster__gpus_per_node=0, batch__global_batch=64, cluster__cpus_per_task=2, plan={}
    )
    return {
        "reference": plan_for(),
        "measured and cost": plan_for(cost, record=scaled_record(1e-3, 400e9, 0.56)),
        "CPU only, deadline": plan_for(cpu, deadline_hours=100),
        "many node counts": plan_for(spec_with(plan__max_nodes=64)),
    }


@pytest.mark.parametrize("name", list(plans()))
def test_plan_tables_fit(name: str) -> None:
    text = plan_table(plans()[name], width=WIDTH)  # type: ignore[arg-type]
    assert widest(text) <= WIDTH, text


def test_calibration_tables_fit() -> None:
    record = record_for(spec_with())
    path = "/a/rather/long/path/to/the/calibrations/of/this/project/" + "x" * 60 + ".yaml"
    assert widest(calibration_table(record, path, width=WIDTH)) <= WIDTH
    section = scaled_record(1e-3, 400e9, 0.56).scaling
    assert section is not None
    assert widest(scaling_table(section, width=WIDTH)) <= WIDTH


def test_eta_table_fits(eta_run_dir: Path) -> None:
    source = load_source(str(eta_run_dir))
    last = source.history.last_time
    assert last is not None
    runner = fake_runner({"squeue": queue_text(math.floor(last), "10:00")})
    eta = estimator.estimate(source, estimator.observe_slurm(source, runner), now=last)
    text = eta_table(eta, width=WIDTH)
    assert widest(text) <= WIDTH, text
    assert "NOT enough" in text and "segment stop" in text  # the long rows are there


def test_resubmit_tighten_and_jobs_tables_fit(tmp_path: Path) -> None:
    stopped = stopped_folder(tmp_path / "stopped")
    slurm = FakeSlurm(sacct=accounted())
    resub = prepare(inspect_run(str(stopped), slurm), runner=slurm)
    assert widest(resubmission_text(resub, width=WIDTH)) <= WIDTH
    running = running_folder(tmp_path / "running")
    queue = "\n".join(f"{i}|PENDING|N/A|N/A|30:00|Dependency" for i in (12, 13, 14, 15))
    text = tighten_text(plan_tightening(str(running), FakeSlurm(squeue=queue)), width=WIDTH)
    assert widest(text) <= WIDTH, text
    jobs = [
        SubmittedJob(i, str(stopped / f"segment-{i:02d}.sbatch"), str(40 + i), "afterany:40", "")
        for i in (1, 2)
    ]
    assert widest(jobs_table(jobs, width=WIDTH)) <= WIDTH


def test_history_table_fits(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    run = recorded_run(db, tmp_path, "a-run-folder-with-a-rather-long-descriptive-name")
    add_outcomes(db, run, [1.5, 1.2, 0.9])
    long_path = tmp_path / ("calibrations-" + "y" * 80) / "cal.yaml"
    history.record_calibration(record_for(spec_with()), long_path, db)
    text = history_text(db, width=WIDTH)
    assert widest(text) <= WIDTH, text
    assert "x1.20" in text  # the correction column is there


def test_plan_table_golden() -> None:
    text = plan_table(plans()["measured and cost"], width=WIDTH)  # type: ignore[arg-type]
    golden = GOLDEN / "plan-table-100.txt"
    if os.environ.get("PLANJOB_REGENERATE_GOLDEN") == "1":
        golden.write_text(text + "\n")
        pytest.fail(f"regenerated {golden}: review `git diff` and commit it")
    assert text + "\n" == golden.read_text(), (
        "the plan table changed; if on purpose, regenerate with PLANJOB_REGENERATE_GOLDEN=1 "
        "and review the diff"
    )


# -- the command line ----------------------------------------------------------------------------


def test_cli_plan_fits_100_columns_unless_told_wider(tmp_path: Path) -> None:
    spec, cal = reference_files(tmp_path, plan__gpu_hour_cost=2.5)
    args = ["plan", str(spec), "--calibration", str(cal)]
    proc = invoke(args, cwd=tmp_path, env=no_slurm_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert widest(proc.stdout) <= WIDTH, proc.stdout
    wide = invoke(args, cwd=tmp_path, env=no_slurm_env(tmp_path, COLUMNS="200"))
    assert wide.returncode == 0, wide.stderr
    assert WIDTH < widest(wide.stdout) <= 200
    note = next(line for line in wide.stdout.splitlines() if "chosen:" in line)
    assert note.lstrip().startswith("* 2")  # at 200 columns the note stays in its row
