"""Time to result on the real test cluster (two nodes n1, n2 of 2 fake GPUs; MaxTime 3 min).

Blocker jobs of a known --time hold whole nodes (`sleep` longer than their limit, so they end
at it exactly); the plan asks `sbatch --test-only` and must find the blockers' ends. Every
test cancels its blockers, and nothing here trains: the chain of (c) is cancelled while it is
still queued. The planning calibration is a record written from known figures (1 s a step on
one node), so the run times are arithmetic, not measurements.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from planner.clock import clock_text
from planner.slurm.queue import parse_slurm_time
from planner.slurm.queue_waits import partition_waits
from tests.builders import reference_files
from tests.cli_helpers import run_cli
from tests.slurm_cluster import SlurmCluster

pytestmark = pytest.mark.slurm

# 2 GPUs a node, one CPU a task, 1 s a step on one node (16 micro-batches), 0.51 s on two.
CHANGES: dict[str, Any] = {
    "cluster__gpus_per_node": 2,
    "cluster__cpus_per_task": 1,
    "plan__max_nodes": 2,
    "plan__mtbf_hours": 1000,
}
MEASURED = dict(
    startup_s=5.0,
    import_s=1.0,
    build_s=2.0,
    warmup_extra_s=1.0,
    checkpoint_save_s=1.0,
    checkpoint_load_s=1.0,
    params=1000,
)


def planned_files(folder: Path, samples: int) -> tuple[Path, Path]:
    changes = {**CHANGES, "data__samples": samples, "checkpoint__dir": str(folder / "ck")}
    return reference_files(folder, MEASURED, **changes)


def squeue(job_ids: list[str], fmt: str) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-j", ",".join(job_ids), "-o", fmt],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.split()


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=30, check=False)


class Blockers:
    """Jobs holding whole nodes until their --time; their ends once running."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def hold(self, node: str, minutes: int) -> str:
        argv = ["sbatch", "--parsable", "--partition=gpu", f"--nodelist={node}", "--exclusive"]
        argv += [f"--time={minutes}", "--output=/dev/null", "--wrap=sleep 600"]
        job = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
        self.ids.append(job.stdout.strip().split(";")[0])
        return self.ids[-1]

    def ends(self) -> dict[str, float]:
        """Each blocker's end (squeue %e) once all run: generous wait, the cluster may be
        finishing another test's jobs."""
        deadline = time.monotonic() + 240
        while True:
            lines = squeue(self.ids, "%i|%T|%e")
            states = dict(line.split("|", 2)[:2] for line in lines)
            if len(lines) == len(self.ids) and set(states.values()) == {"RUNNING"}:
                return {
                    line.split("|")[0]: parse_slurm_time(line.split("|")[2]) or 0.0
                    for line in lines
                }
            if time.monotonic() > deadline:
                pytest.fail(f"blockers not running after 240 s: {lines}")
            time.sleep(1)


@pytest.fixture
def blockers(slurm_cluster: SlurmCluster) -> Iterator[Blockers]:
    held = Blockers()
    try:
        yield held
    finally:
        cancel(held.ids)


def plan_json(spec: Path, cal: Path, folder: Path, *extra: str) -> dict[str, Any]:
    proc = run_cli(["plan", str(spec), "--calibration", str(cal), "--json", *extra], cwd=folder)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_a_expected_start_is_the_blockers_end_for_every_node_count(
    tmp_path: Path, blockers: Blockers
) -> None:
    # The same --time on both: which node the scheduler would free for one node is its
    # business (22.05 picks either when their ends differ); when both end, it is not.
    n1 = blockers.hold("n1", 2)
    n2 = blockers.hold("n2", 2)
    ends = blockers.ends()
    assert ends[n1] == pytest.approx(ends[n2], abs=2)
    spec, cal = planned_files(tmp_path, 6000)
    out = plan_json(spec, cal, tmp_path)
    options = {o["nodes"]: o for o in out["plan"]["options"]}
    assert options[1]["start_status"] == options[2]["start_status"] == "ok"
    assert options[1]["start_time"] == pytest.approx(min(ends.values()), abs=1.0)
    assert options[2]["start_time"] == pytest.approx(max(ends.values()), abs=1.0)
    assert out["start_time"] == options[out["nodes"]]["start_time"]
    assert out["queue_took_s"] is not None and out["queue_took_s"] > 0


def test_b_one_node_starts_now_two_wait_for_the_blocker_and_one_is_chosen(
    tmp_path: Path, blockers: Blockers
) -> None:
    blocker = blockers.hold("n1", 3)
    end = blockers.ends()[blocker]
    # 330 steps: about 6 min on 1 node (3 segments under MaxTime 3 min), 3 on 2 (2 segments).
    spec, cal = planned_files(tmp_path, 330 * 256)
    out = plan_json(spec, cal, tmp_path)
    options = {o["nodes"]: o for o in out["plan"]["options"]}
    asked = out["plan"]["queue_checked_at"]
    one, two = options[1], options[2]
    assert 5 * 60 < one["wall_p50_s"] < 7 * 60 and 2.5 * 60 < two["wall_p50_s"] < 4 * 60
    assert one["start_time"] <= asked + 5  # n2 is free: now
    assert two["start_time"] == pytest.approx(end, abs=1.0)  # both nodes: after the blocker
    # By run time 2 nodes would win; by finish, 1 node, and the plan says both.
    figures = {k: (o["start_time"], o["finish_p50"], o["queue_note"]) for k, o in options.items()}
    assert out["nodes"] == 1 and out["choose_by"] == "finish", (figures, out["plan"]["wait_source"])
    assert one["finish_p50"] < two["finish_p50"]
    assert "by run time alone 2 node(s) would be chosen" in out["plan"]["choice_other"]
    table = run_cli(["plan", str(spec), "--calibration", str(cal)], cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    for option in (one, two):
        # HH:MM, each row. The table's plan is made a few seconds later, and a start "now"
        # moves with it: its finish may have crossed into the next minute.
        minutes = {clock_text(option["finish_p50"] + d).split()[1] for d in (0.0, 15.0)}
        assert any(m in table.stdout for m in minutes), (minutes, table.stdout)


def test_c_eta_shows_when_the_second_segment_of_a_queued_chain_starts(
    tmp_path: Path, blockers: Blockers
) -> None:
    blockers.hold("n1", 2)
    blockers.hold("n2", 2)
    end = min(blockers.ends().values())
    spec, cal = planned_files(tmp_path, 175 * 256)  # about 3 min on 1 node: two segments
    run = tmp_path / "run"
    db = tmp_path / "history.sqlite"
    args = ["emit", str(spec), "--calibration", str(cal), "--nodes", "1", "-o", str(run)]
    emitted = run_cli([*args, "--history", str(db)], cwd=tmp_path)
    assert emitted.returncode == 0, emitted.stderr
    scripts = sorted(run.glob("segment-*.sbatch"))
    assert len(scripts) == 2
    # emit keeps the plan's queue forecast beside its jobs-to-be: the first wait is Slurm's
    # start (the blockers' end) counted from when it was asked.
    asked = yaml.safe_load((run / "plan.yaml").read_text())["queue_checked_at"]
    with sqlite3.connect(db) as conn:
        first_wait, finish_p50 = conn.execute(
            "SELECT first_wait_s, finish_p50_s FROM plans"
        ).fetchone()
    assert first_wait == pytest.approx(end - asked, abs=2.0)
    assert finish_p50 > first_wait
    submitted = run_cli(["submit", str(run)], cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    chain = submitted_chain(run)
    try:
        # Slurm places segment 1 at the blockers' end; segment 2 waits on segment 1 and has
        # no start from Slurm.
        start1 = wait_for_start(chain[0])
        assert start1 == pytest.approx(end, abs=2.0)
        limit1 = int(squeue([chain[0]], "%l")[0].split(":")[0]) * 60  # "3:00"
        waits = partition_waits("gpu", 1, 14)
        second = start1 + limit1 + (waits.median_s or 0.0 if waits.known else 0.0)
        eta = run_cli(["eta", str(run)], cwd=tmp_path)
        text = eta.stdout + eta.stderr
        assert parse_slurm_time(squeue([chain[0]], "%S")[0]) == start1, "Slurm moved it"
        assert f"segment 1 (job {chain[0]}) starts {clock_text(start1)}" in text, text
        assert f"segment 2 (job {chain[1]}) starts {clock_text(second)}" in text, text
        assert "when the job before it reaches its --time" in text
    finally:
        cancel(chain)


def submitted_chain(run: Path) -> list[str]:
    """The chain's job ids in segment order, from jobs.yaml."""
    jobs = yaml.safe_load((run / "jobs.yaml").read_text())["jobs"]
    return [str(job["job_id"]) for job in sorted(jobs, key=lambda j: j["segment"])]


def wait_for_start(job_id: str) -> float:
    """The pending job's expected start once the scheduler has placed it and its backfill
    pass agrees twice in a row (squeue %S)."""
    deadline = time.monotonic() + 120
    seen = None
    while True:
        start = parse_slurm_time(squeue([job_id], "%S")[0])
        if start is not None and start == seen:
            return start
        seen = start
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} has no expected start after 120 s")
        time.sleep(1)
