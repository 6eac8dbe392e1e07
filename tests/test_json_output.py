"""plan --json and history --json: one strict JSON object with the keys README's "JSON
output" documents, for scripts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from planner.history import database as history
from tests.builders import add_outcomes, record_for, recorded_run, reference_files, spec_with
from tests.in_process import invoke
from tests.processes import no_slurm_env

PLAN_KEYS = {
    "schema", "name", "nodes", "gpus", "units", "grad_accum", "total_steps", "step_s",
    "step_p95_s", "wall_p50_s", "wall_p95_s", "gpu_hours", "cost", "checkpoint_interval_steps",
    "partition", "segments", "choice_reason", "notes", "correction", "plan",
    "energy_kwh", "power_w_per_gpu", "pue", "energy_note",
    "choose_by", "start_time", "finish_p50", "finish_p95", "queue_note", "queue_took_s",
    "segment_length",
}  # fmt: skip


def strict(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_plan_json(tmp_path: Path) -> None:
    spec, cal = reference_files(tmp_path)
    env = no_slurm_env(tmp_path, PLANJOB_HISTORY=str(tmp_path / "h.sqlite"))
    proc = invoke(["plan", str(spec), "--calibration", str(cal), "--json"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    out = strict(proc.stdout)
    assert set(out) == PLAN_KEYS
    assert out["schema"] == "plan-job.plan/1" and out["name"] == "plan-test"
    # tests/test_planning.py's reference: 2 nodes of 4 GPUs, 3907 steps, one job.
    assert (out["nodes"], out["gpus"], out["total_steps"]) == (2, 8, 3907)
    assert out["units"] == {
        "device": "gpu",
        "per_node": 4,
        "cpus_per_task": 2,
        "gpus_counts": "GPUs",
        "gpu_hours_unit": "GPU-hours",
    }
    assert out["wall_p50_s"] <= out["wall_p95_s"] and out["gpu_hours"] > 0
    assert [s["index"] for s in out["segments"]] == [1] and out["partition"] is None
    assert out["correction"] is None and out["plan"]["spec"]["name"] == "plan-test"
    assert out["plan"]["wall"]["p50_s"] == out["wall_p50_s"]
    # The reference record has no power reading: the energy is unknown, never made up.
    assert out["energy_kwh"] is None and out["power_w_per_gpu"] is None and out["pue"] == 1.0
    assert out["energy_note"].startswith("unknown: ")
    assert "no Slurm client here" in proc.stderr  # notes stay on stderr, off the JSON
    # Without Slurm the queue is unknown: no start or finish, chosen by run time.
    assert (out["start_time"], out["finish_p50"], out["queue_took_s"]) == (None, None, None)
    assert out["choose_by"] == "run" and out["queue_note"].startswith("unknown: no Slurm client")


def test_plan_json_of_a_cpu_spec_and_a_correction(tmp_path: Path) -> None:
    spec, cal = reference_files(
        tmp_path, cluster__gpus_per_node=0, batch__global_batch=64, plan__max_nodes=1
    )
    db = tmp_path / "h.sqlite"
    # Jobs of the same kind: the CPU spec's, at its global batch.
    same = spec_with(cluster__gpus_per_node=0, batch__global_batch=64, plan__max_nodes=8)
    add_outcomes(db, recorded_run(db, tmp_path, "old", spec=same), [1.5, 1.5])
    env = no_slurm_env(tmp_path, PLANJOB_HISTORY=str(db))
    proc = invoke(["plan", str(spec), "--calibration", str(cal), "--json"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    out = strict(proc.stdout)
    assert out["units"]["device"] == "cpu" and out["units"]["gpu_hours_unit"] == "node-hours"
    assert out["units"]["gpus_counts"] == "tasks" and out["gpus"] == 1
    correction = out["correction"]
    assert correction["step_factor"] == pytest.approx(1.5)
    assert any(note.startswith("history: steps x1.50 at 1 node(s)") for note in out["notes"])
    assert correction["uncorrected_wall_p50_s"] < out["wall_p50_s"]


def test_history_json(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    run = recorded_run(db, tmp_path, "old")
    add_outcomes(db, run, [1.5, 1.5])
    history.record_calibration(record_for(spec_with()), tmp_path / "cal.yaml", db)
    env = no_slurm_env(tmp_path, PLANJOB_HISTORY=str(db))
    proc = invoke(["history", "--json"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    out = strict(proc.stdout)
    assert out["schema"] == "plan-job.history/1" and out["history"] == str(db)
    (row,) = out["runs"]
    assert row["run_dir"] == run and row["jobs"] == 2
    assert row["actual_over_predicted"] == pytest.approx(1.5)
    (bias,) = out["biases"]
    assert (bias["workload"], bias["partition"], bias["jobs"]) == ("jit:tiny", "gpu", 2)
    assert bias["next_factor"] == pytest.approx(1.5)
    (calibration,) = out["calibrations"]
    assert calibration["name"] == "plan-test" and calibration["step_mean_s"] == 1.0
