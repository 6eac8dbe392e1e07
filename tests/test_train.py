"""The training entry (python -m jobs.train): runs to the target, stops cleanly on a signal or
before the stop time, resumes bit-identically, survives a torn checkpoint. CPU, tiny presets.

Most runs are real subprocesses, as the batch script starts them. The builders below slow a
built-in workload's step down (a sleep changes no numbers) so that a test can interrupt it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from jobs import train
from jobs.contract.measurement import CalibrationRequest
from jobs.contract.train_config import TrainConfig
from jobs.contract.work import WORK_FIELDS, Work
from jobs.progress import ProgressWriter, read_progress
from tests.paths import REPO
from tests.training_runs import (
    TOTAL_STEPS,
    assert_same_run,
    checkpoint_steps,
    command,
    copy_run,
    env,
    events,
    run_in_process,
    run_train,
    train_json,
)


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One uninterrupted run per workload, shared by the tests (they copy it to change it)."""
    folders = {}
    for name in ("jit", "gpt"):
        folder = tmp_path_factory.mktemp(f"reference-{name}")
        proc = run_train(train_json(folder, name), extra_env={"SLURM_JOB_ID": "4242"})
        assert proc.returncode == 0, proc.stderr
        folders[name] = folder
    return folders


# --- whole runs ------------------------------------------------------------------------------


@pytest.mark.slow
def test_uninterrupted_run_reaches_total_steps(reference_runs: dict[str, Path]) -> None:
    folder = reference_runs["jit"]
    found = events(folder)
    assert [e["event"] for e in found if e["event"] != "step"] == [
        "start",
        "checkpoint",
        "checkpoint",
        "checkpoint",
        "stop",
    ]
    start, stop = found[0], found[-1]
    assert start["step"] == 0 and start["restart"] == 0 and start["job_id"] == "4242"
    assert start["total_steps"] == TOTAL_STEPS and start["pid"] > 0 and start["host"]
    assert stop == {**stop, "step": TOTAL_STEPS, "reason": "done", "signal": None}
    steps = events(folder, "step")
    assert [e["step"] for e in steps] == list(range(1, TOTAL_STEPS + 1))
    assert steps[-1]["samples"] == 2 * TOTAL_STEPS and steps[-1]["tokens"] > 0
    assert all(e["step_s"] > 0 and e["loss"] > 0 for e in steps)
    times = [e["time"] for e in found]
    assert times == sorted(times)
    saves = events(folder, "checkpoint")
    assert [e["step"] for e in saves] == [5, 10, TOTAL_STEPS]
    assert all(e["bytes"] > 0 and e["save_s"] > 0 for e in saves)
    assert checkpoint_steps(folder) == [10, TOTAL_STEPS]  # pruned to keep_checkpoints
    state = torch.load(saves[-1]["path"], weights_only=False)
    assert state["step"] == TOTAL_STEPS
    assert {"extra.data_rng", "extra.noise_rng", "rng"} <= state.keys()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "signum"), [("jit", signal.SIGUSR2), ("gpt", signal.SIGTERM)])
def test_signal_stop_then_resume_is_bit_identical(
    tmp_path: Path, reference_runs: dict[str, Path], name: str, signum: signal.Signals
) -> None:
    config = train_json(tmp_path, name, slow="slow")
    proc = subprocess.Popen(
        command(config), cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while len(events(tmp_path, "step")) < 3 and proc.poll() is None:
        assert time.monotonic() < deadline, "the run never got to step 3"
        time.sleep(0.02)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    stop = events(tmp_path, "stop")[-1]
    assert stop["reason"] == "signal" and stop["signal"] == signum.name
    stopped_at = stop["step"]
    assert 3 <= stopped_at < TOTAL_STEPS
    assert stopped_at in checkpoint_steps(tmp_path)

    assert run_in_process(config) == train.EXIT_OK
    found = events(tmp_path)
    second_job = [i for i, e in enumerate(found) if e["event"] == "start"][1]
    start, resume = found[second_job : second_job + 2]
    assert start == {**start, "event": "start", "step": stopped_at, "restart": 1}
    assert resume == {**resume, "event": "resume", "step": stopped_at}
    assert events(tmp_path, "stop")[-1]["reason"] == "done"
    assert_same_run(tmp_path, reference_runs[name])


@pytest.mark.slow
def test_time_limit_stop_then_resume_is_bit_identical(
    tmp_path: Path, reference_runs: dict[str, Path]
) -> None:
    # 1 s of stop_lead_s on top of the measured step and save: room for a step slowed by a
    # busy machine, so the stop still comes before the stop time.
    config = train_json(tmp_path, "jit", slow="slower", stop_lead_s=1.0)
    # The build and some 0.25 s steps fit before the stop time, twelve steps do not. (The
    # first step of a run has no time to go by: the margin keeps it clear of the stop.)
    stop_at = time.time() + 3.5
    assert run_in_process(config, stop_at) == train.EXIT_OK
    stop = events(tmp_path, "stop")[-1]
    assert stop["reason"] == "time_limit" and stop["signal"] is None
    stopped_at = stop["step"]
    assert 0 < stopped_at < TOTAL_STEPS
    assert stopped_at in checkpoint_steps(tmp_path)
    assert stop["time"] <= stop_at  # saved and out before the stop time
    assert not list((tmp_path / "ck").glob("probe.pt"))  # the save-time probe cleaned up

    # Past the stop time already: leaves at once, and has nothing new to save.
    saved = checkpoint_steps(tmp_path)
    past = run_train(config, extra_env={"PLANJOB_STOP_AT": str(time.time())})
    assert past.returncode == 0, past.stderr
    assert events(tmp_path, "stop")[-1] == {
        **events(tmp_path, "stop")[-1],
        "step": stopped_at,
        "reason": "time_limit",
    }
    assert checkpoint_steps(tmp_path) == saved

    assert run_in_process(config, time.time() + 3600) == train.EXIT_OK
    assert [e["restart"] for e in events(tmp_path, "start")] == [0, 1, 2]
    assert_same_run(tmp_path, reference_runs["jit"])


@pytest.mark.slow
def test_torn_newest_checkpoint_is_skipped(tmp_path: Path, reference_runs: dict[str, Path]) -> None:
    folder = tmp_path / "run"
    config = copy_run(reference_runs["jit"], folder)
    newest = folder / "ck" / f"ckpt-{TOTAL_STEPS:09d}.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    proc = run_train(config, "--stop-at", str(time.time() + 3600))
    assert proc.returncode == 0, proc.stderr
    assert f"cannot load {newest}" in proc.stderr
    assert (folder / "ck" / f"{newest.name}.bad").exists()
    assert events(folder, "resume")[-1]["step"] == 10
    assert checkpoint_steps(folder) == [10, TOTAL_STEPS]
    assert_same_run(folder, reference_runs["jit"])


@pytest.mark.slow
def test_rerun_after_completion_stops_at_once(
    tmp_path: Path, reference_runs: dict[str, Path]
) -> None:
    folder = tmp_path / "run"
    config = copy_run(reference_runs["gpt"], folder)
    before = events(folder)
    proc = run_train(config)
    assert proc.returncode == 0, proc.stderr
    start, stop = events(folder)[len(before) :]
    assert start == {**start, "event": "start", "step": TOTAL_STEPS, "restart": 1}
    assert stop == {**stop, "event": "stop", "step": TOTAL_STEPS, "reason": "done"}


@pytest.mark.slow
def test_workload_error_exits_1(tmp_path: Path) -> None:
    builder = "tests.fixtures.user_workloads:raises_in_step"
    proc = run_train(train_json(tmp_path, builder_path=builder))
    assert proc.returncode == 1
    assert "training step 1 raised ValueError: shape mismatch" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.slow
def test_bad_config_file_exits_2_naming_the_field(tmp_path: Path) -> None:
    config = train_json(tmp_path)
    data = json.loads(config.read_text())
    del data["total_steps"]
    config.write_text(json.dumps(data))
    proc = run_train(config)
    assert proc.returncode == 2
    assert "missing field(s) 'total_steps'" in proc.stderr
    bad_env = run_train(train_json(tmp_path), extra_env={"PLANJOB_STOP_AT": "tomorrow"})
    assert bad_env.returncode == 2
    assert "PLANJOB_STOP_AT='tomorrow'" in bad_env.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"totl_steps": 3}, "unknown field(s) 'totl_steps'"),
        ({"format": "plan-job/train/v0"}, "field 'format'"),
        ({"micro_batch": 0}, "field 'micro_batch': got 0"),
        ({"micro_batch": "2"}, "field 'micro_batch': got str '2'"),
        ({"seed": True}, "field 'seed': got bool"),
        ({"precision": "fp64"}, "field 'precision': got 'fp64'; allowed: fp32, bf16, fp16"),
        ({"device": "tpu"}, "field 'device'"),
        ({"builder_path": "jobs.workloads.jit"}, "field 'builder_path'"),
        ({"overrides": [1]}, "field 'overrides'"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    data = json.loads(train_json(tmp_path).read_text())
    with pytest.raises(ValueError) as error:
        TrainConfig.from_json(json.dumps({**data, **change}))
    assert message in str(error.value)


def test_config_round_trips_and_defaults(tmp_path: Path) -> None:
    data = json.loads(train_json(tmp_path, overrides={"depth": 1}).read_text())
    assert data["format"] == "plan-job/train/v1"
    config = TrainConfig.from_json(json.dumps(data))
    assert TrainConfig.from_json(config.to_json()) == config
    del data["log_every"], data["stop_lead_s"]
    defaults = TrainConfig.from_json(json.dumps(data))
    assert (defaults.log_every, defaults.stop_lead_s) == (1, 0.0)


def test_the_work_is_checked_once_for_the_training_and_the_calibration(tmp_path: Path) -> None:
    work = TrainConfig.from_json(train_json(tmp_path).read_text()).work
    for change, message in [
        ({"precision": "fp64"}, "field 'precision': got 'fp64'; allowed: fp32, bf16, fp16"),
        ({"report": "trainer_state", "command": ("t.py",)}, "field 'output_dir'"),
        ({"builder_path": "jobs.workloads.jit"}, "field 'builder_path'"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            dataclasses.replace(work, **change)
        request = {"min_steps": 1, "max_steps": 2, "max_seconds": 1.0, "target_ci": 0.1}
        with pytest.raises(ValueError, match=re.escape(message)):
            CalibrationRequest.from_flat({**work.flat(), **change, **request, "scratch_dir": "s"})


@pytest.mark.parametrize("name", ["builtin-v1.json", "command-v1.json"])
def test_a_train_json_emitted_before_the_shared_work_loads_and_writes_back_the_same(
    name: str,
) -> None:
    """train.json as `plan-job emit` wrote it before TrainConfig embedded a Work (copied from
    an emit on main at 94f7ff8): a run folder of then resumes and resubmits as it is."""
    text = (REPO / "tests" / "fixtures" / "train_json" / name).read_text()
    config = TrainConfig.from_json(text)
    assert config.to_json() == text.rstrip("\n")  # the same keys, values and order
    data = json.loads(text)
    assert config.work == Work(
        **{key: data[key] for key in WORK_FIELDS if key not in ("overrides", "command")},
        overrides=data["overrides"],
        command=tuple(data["command"]),
    )
    assert config.total_steps == data["total_steps"] == 3907
    assert config.checkpoint_interval_steps == data["checkpoint_interval_steps"] == 100
    assert (config.run_id, config.progress_path) == (data["run_id"], data["progress_path"])


# --- the progress file -----------------------------------------------------------------------


def test_progress_survives_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    with ProgressWriter(path) as writer:
        writer.start(0, 10, 0)
        writer.step(1, 4, 64, 0.5, 2.0)
    with open(path, "a") as handle:
        handle.write('{"event": "step", "time": 1.0, "st')  # killed mid-write
    assert [e["event"] for e in read_progress(path)] == ["start", "step"]
    with ProgressWriter(path) as writer:  # the next job starts on a fresh line
        writer.stop(1, "signal", "SIGUSR2")
    assert [e["event"] for e in read_progress(path)] == ["start", "step", "stop"]
    assert read_progress(tmp_path / "missing.jsonl") == []
    with ProgressWriter(path) as writer, pytest.raises(ValueError, match="stop reason"):
        writer.stop(1, "crashed")


@pytest.mark.slow
def test_login_node_modules_do_not_import_torch() -> None:
    code = (
        "import sys; import jobs.train, jobs.contract.train_config, jobs.progress; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env())
