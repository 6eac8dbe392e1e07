"""What a new user reads: help texts as printed, and a CPU-only plan said in CPU terms.

The golden file is regenerated only on request:

    PLANJOB_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/test_wording.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from planner.model.plan import Plan
from planner.model.report import plan_table
from tests.builders import plan_for, record_for, spec_with
from tests.in_process import invoke

GOLDEN = Path(__file__).parent / "golden"

COMMANDS = ["calibrate", "plan", "emit", "submit", "eta", "resubmit", "tighten", "history"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_prints_no_escaped_percent(command: str, tmp_path: Path) -> None:
    proc = invoke([command, "--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # click prints help as written: a "%%" meant for %-formatting shows up doubled.
    assert "%%" not in proc.stdout


def test_target_ci_help_says_95_percent(tmp_path: Path) -> None:
    proc = invoke(["calibrate", "--help"], cwd=tmp_path)
    assert "Stop when the 95% CI half-width / mean reaches this" in " ".join(proc.stdout.split())


# -- a CPU-only spec (cluster.gpus_per_node 0) ----------------------------------------------------


def cpu_plan() -> Plan:
    spec = spec_with(
        cluster__gpus_per_node=0,
        cluster__cpus_per_task=2,
        batch__global_batch=64,
        plan__gpu_hour_cost=0.5,
        plan__mtbf_hours=None,
        plan__max_nodes=2,
    )
    record = record_for(spec, device_kind="cpu", device_name="AMD EPYC 7B13")
    return plan_for(spec, record=record, deadline_hours=100)


def test_a_cpu_only_plan_counts_tasks_and_node_hours() -> None:
    plan = cpu_plan()
    text = plan_table(plan, width=200)
    assert "1 node x 1 CPU task of 2 CPUs (no partition limits read)" in text
    assert "fewest node-hours with P95 within the 100 h deadline" in text
    hours = plan.gpu_hours
    assert (
        f"node-hours     {hours:,.4g} at P50 = {2 * hours:,.4g} core-hours (one task of 2 CPUs a "
        f"node), cost {plan.cost:,.2f} at 0.5 per node-hour"
    ) in text
    assert "interruptions per GPU-day x 1 CPU task(s)" in text
    header = next(line for line in text.splitlines() if " accum " in line)
    assert header.split() == [
        "nodes", "tasks", "accum", "step", "efficiency", "P50", "P95", "jobs", "node-h", "cost",
        "note",
    ]  # fmt: skip
    assert "more node-hours" in text
    for gpu_words in ("GPUs", "GPU-hours", "GPU-h ", "per GPU-hour"):
        assert gpu_words not in text


def test_a_gpu_plan_still_counts_gpus() -> None:
    text = plan_table(plan_for(spec_with(plan__gpu_hour_cost=2.0)), width=200)
    assert "2 nodes x 4 GPUs (no partition limits read)" in text
    assert "GPU-hours      " in text and "per GPU-hour" in text and "core-hours" not in text


def test_cpu_plan_golden() -> None:
    text = plan_table(cpu_plan(), width=100)
    golden = GOLDEN / "plan-cpu-100.txt"
    if os.environ.get("PLANJOB_REGENERATE_GOLDEN") == "1":
        golden.write_text(text + "\n")
        pytest.fail(f"regenerated {golden}: review `git diff` and commit it")
    assert text + "\n" == golden.read_text(), (
        "the CPU plan's table changed; if on purpose, regenerate with "
        "PLANJOB_REGENERATE_GOLDEN=1 and review the diff"
    )
