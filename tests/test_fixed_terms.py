"""The time model's fixed terms against what the training entry really does: the saves it
makes, the evaluation it pays, its start-up and warm-up. CPU, tiny presets, real runs."""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from jobs import train
from jobs.training.loop import Run
from jobs.workloads import jit
from jobs.workloads.base import Workload, WorkloadConfig
from planner.model.timemodel import job_saves, run_saves
from tests.paths import REPO
from tests.tiny_requests import tiny_request_fields
from tests.training_runs import env, events, run_in_process, train_json

# Every test here starts processes or trains: the slow tier.
pytestmark = pytest.mark.slow


def _count_probes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The probe saves of the jobs run in this process (the probe leaves no file or event)."""
    probes: list[int] = []
    real = Run._probe_save

    def counted(self: Run) -> float:
        probes.append(self.saved_step)
        return real(self)

    monkeypatch.setattr(Run, "_probe_save", counted)
    return probes


@pytest.mark.parametrize(
    ("interval", "saved_at"),
    [
        # 12 steps, a save every 4: 4, 8 and 12, the last step being a multiple (no extra).
        (4, [4, 8, 12]),
        # every 5: 5, 10 and the last step, 12: ceil(12 / 5) = 3 as well.
        (5, [5, 10, 12]),
    ],
)
def test_one_job_saves_as_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: int, saved_at: list[int]
) -> None:
    probes = _count_probes(monkeypatch)
    config = train_json(tmp_path, "jit", checkpoint_interval_steps=interval)
    # A stop time, as every emitted segment has ($PLANJOB_STOP_AT): the job probes one save.
    assert run_in_process(config, stop_at=time.time() + 3600) == train.EXIT_OK
    made = [e["step"] for e in events(tmp_path, "checkpoint")]
    assert made == saved_at
    assert probes == [0]
    # The plan's count: 3 saves + the probe = 4, for the job and for the one-job run.
    assert job_saves(0, 12, interval, first_job=True) == len(made) + len(probes) == 4
    assert run_saves(12, interval, segments=1) == 4


def test_without_a_stop_time_no_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A direct `python -m jobs.train` with neither --stop-at nor $PLANJOB_STOP_AT: 3 saves,
    # no probe. A benchmark comparing with the plan must give its run a stop time.
    probes = _count_probes(monkeypatch)
    config = train_json(tmp_path, "jit", checkpoint_interval_steps=5)
    assert run_in_process(config) == train.EXIT_OK
    assert len(events(tmp_path, "checkpoint")) == 3 and probes == []


def test_two_jobs_save_as_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probes = _count_probes(monkeypatch)
    # 40 steps of 0.25 s against a stop time 6 s away: the first job stops part-way, however
    # slow this machine is to build the model (seconds, under load) before its first step.
    total = 40
    config = train_json(
        tmp_path,
        "jit",
        slow="slower",
        stop_lead_s=1.0,
        checkpoint_interval_steps=4,
        total_steps=total,
    )
    assert run_in_process(config, time.time() + 6.0) == train.EXIT_OK
    stopped = events(tmp_path, "stop")[-1]["step"]
    assert 0 < stopped < total
    first: list[Any] = [e["step"] for e in events(tmp_path, "checkpoint")]
    assert run_in_process(config, time.time() + 3600) == train.EXIT_OK
    second = [e["step"] for e in events(tmp_path, "checkpoint")][len(first) :]
    # The second job reads the first one's save time from the progress file: no probe.
    assert probes == [0]
    assert len(first) + 1 == job_saves(0, stopped, 4, first_job=True)
    assert len(second) == job_saves(stopped, total, 4, first_job=False)
    if stopped % 4:
        # e.g. a stop at 6: 4 and 6, then 8, ..., 40; the plan's 2 jobs: ceil(40 / 4) + 1
        # stop save + the probe = 2 + 9 + the probe.
        assert run_saves(total, 4, segments=2) == len(first) + len(second) + 1


# --- evaluation, start-up, warm-up and exit, as a training job pays them ---------------------

FIRST_PROCESS_MARK = "PLANJOB_TEST_FIRST_PROCESS_MARK"
FIRST_USE_S, NODE_FIRST_S, FIRST_EVAL_S, EXIT_S = 1.0, 1.5, 1.0, 1.0
SUBMITIT_S = 5.0  # what submitit does before the harness runs: its start, the unpickling


def first_use_jit(config: WorkloadConfig) -> Workload:
    """The tiny JiT with the costs a new process pays, in sleeps a reader can add up: every
    process's first step FIRST_USE_S (a kernel's first use), the first process's on this
    "node" NODE_FIRST_S more (a cold page cache); the first evaluation FIRST_EVAL_S; the exit
    EXIT_S. Each a second or more: the assertions compare them with the same run's other
    figures, and on a loaded 2-core machine a tiny step's noise reaches tenths of a second."""
    workload = jit.build(config)
    step, evaluate = workload.train_step, workload.eval_step
    assert evaluate is not None
    paid = {"step": False, "eval": False}

    def train_step(batch: Any) -> Any:
        if not paid["step"]:
            paid["step"] = True
            time.sleep(FIRST_USE_S)
            mark = Path(os.environ[FIRST_PROCESS_MARK])
            if not mark.exists():
                mark.touch()
                time.sleep(NODE_FIRST_S)
        return step(batch)

    def eval_step(batch: Any) -> Any:
        if not paid["eval"]:
            paid["eval"] = True
            time.sleep(FIRST_EVAL_S)
        return evaluate(batch)

    atexit.register(time.sleep, EXIT_S)
    workload.train_step, workload.eval_step = train_step, eval_step
    return workload


_CALIBRATE_LATE = """
import dataclasses, json, sys, time
time.sleep(float(sys.argv[2]))  # submitit's start and unpickling, before the harness runs
from jobs.calibration import builtin as harness
from jobs.contract.measurement import CalibrationRequest
m = harness.calibrate(CalibrationRequest.from_flat(json.loads(sys.argv[1])))
print(json.dumps(dataclasses.asdict(m)))
"""


def test_start_up_warm_up_exit_and_evaluation_as_a_job_pays_them(tmp_path: Path) -> None:
    request = tiny_request_fields(
        tmp_path / "probe",
        builder_path="tests.test_fixed_terms:first_use_jit",
        max_steps=40,
        eval_batches=3,
    )
    proc = subprocess.run(
        [sys.executable, "-c", _CALIBRATE_LATE, json.dumps(request), str(SUBMITIT_S)],
        cwd=REPO,
        env=env(**{FIRST_PROCESS_MARK: str(tmp_path / "node-touched")}),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    # The sleeps are floors whatever the load; what lies beyond them is compared with the
    # same run's other figures, as half a sleep, never with a wall-clock bound.
    # Start-up: the calibration process waited SUBMITIT_S before calibrating, which its own
    # figure counts; the training entry it started (python -m jobs.train) has no such wait,
    # and otherwise does the same (imports, build).
    assert m["harness_startup_s"] >= SUBMITIT_S
    assert 0 < m["startup_s"] < m["harness_startup_s"] - SUBMITIT_S / 2
    assert m["fresh_steps"] >= 6  # at least the first step and 5 steady ones after it
    # Warm-up: the calibration process's first step paid FIRST_USE_S + NODE_FIRST_S; a new
    # process pays FIRST_USE_S only (the rest is the node's first process's). The plan takes
    # the latter.
    assert m["harness_warmup_extra_s"] >= FIRST_USE_S + NODE_FIRST_S / 2
    assert m["warmup_extra_s"] >= FIRST_USE_S / 2
    assert m["warmup_extra_s"] < m["harness_warmup_extra_s"] - NODE_FIRST_S / 2
    # Evaluation: the first paid FIRST_EVAL_S more than three forward passes; the second is
    # what each of a run's evaluations costs.
    assert m["eval_first_s"] >= FIRST_EVAL_S
    assert 0 < m["eval_s"] < m["eval_first_s"] - FIRST_EVAL_S / 2
    # Exit: the training entry's EXIT_S after its last line, in the job's end until a Slurm
    # job's script says otherwise.
    assert m["job_end_s"] >= EXIT_S
