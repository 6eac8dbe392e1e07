"""jobs.calibration.command: calibrating a user's command by running it, on paced scripts
whose step time is known (tests/fixtures/user_scripts). Real processes, local, a few
seconds each; every test also checks that nothing of the command is left running."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from jobs.calibration.command import calibrate_command
from jobs.contract.failure import NodeError
from jobs.contract.measurement import STOP_REASONS, CalibrationRequest
from tests.processes import new_marker, pids_with
from tests.training_runs import FAKE_HF, PACED

PACE_S = 0.05


@pytest.fixture(autouse=True)
def young_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's Python is new when it calibrates and its age is start-up; this test process
    may be minutes old, which is not the command's start-up."""
    from jobs.calibration import host

    monkeypatch.setattr(host, "process_age_s", lambda: 0.0)


@pytest.fixture(autouse=True)
def no_launcher_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test may itself run in a Slurm job or under a launcher: one rank here.
    for name in list(os.environ):
        if name.startswith(("PLANJOB_", "SLURM_")) or name in ("WORLD_SIZE", "RANK"):
            monkeypatch.delenv(name)


def make_request(tmp_path: Path, argv: Sequence[str], **changes: Any) -> CalibrationRequest:
    fields: dict[str, Any] = {
        "builder_path": "",
        "workload_name": "command",
        "preset": "",
        "overrides": {},
        "micro_batch": 2,
        "grad_accum": 3,
        "precision": "fp32",
        "device": "cpu",
        "seed": 0,
        "min_steps": 10,
        "max_steps": 300,
        "max_seconds": 20.0,
        "target_ci": 0.05,
        "scratch_dir": str(tmp_path / "scratch" / ".calibration-probe-x"),
        "progress_path": str(tmp_path / "job" / "calibration-progress.jsonl"),
        "command": tuple(argv),
        "stop_grace_s": 5.0,
        "workdir": str(tmp_path),
        "checkpoint_interval_steps": 10,
    }
    fields.update(changes)
    return CalibrationRequest.from_flat(fields)


def paced(marker: str, *flags: str, pace: float = PACE_S) -> list[str]:
    return [sys.executable, str(PACED), "--pace", str(pace), "--marker", marker, *flags]


@pytest.fixture
def marker() -> Iterator[str]:
    value = new_marker()
    yield value
    # A SIGKILLed process may take a moment to be gone.
    deadline = time.monotonic() + 2.0
    while pids_with(value) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = pids_with(value)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"


@pytest.mark.slow
def test_paced_command_measured(tmp_path: Path, marker: str) -> None:
    request = make_request(tmp_path, paced(marker))
    m = calibrate_command(request)
    assert m.stopped_by in ("ci_target", "time_cap")
    assert m.step_mean_s == pytest.approx(PACE_S, rel=0.15)
    assert m.step_median_s == pytest.approx(PACE_S, rel=0.15)
    assert m.steady_steps >= request.min_steps
    assert m.steps_run == len(m.step_times_s) == m.warmup_steps + m.steady_steps
    if m.stopped_by == "ci_target":
        assert m.step_ci_relative <= request.target_ci
    # The counts came from the start line's extra fields.
    assert (m.params, m.samples_per_step, m.tokens_per_sample) == (1000, 7, 3)
    assert m.token_unit == "test tokens" and m.flops_per_step == 6000.0
    # A save was seen (every 10 steps, or on the stop signal): its time and size are real.
    assert 0 < m.checkpoint_save_s < 5 and m.checkpoint_bytes == 65536
    assert m.checkpoint_load_s == m.checkpoint_save_s  # no resume: the save stands in
    assert m.loss_first == 1.0 and 0 < m.loss_last < 1.0
    assert m.memory_kind == "rss_peak" and 1e6 < m.peak_memory_bytes < 16e9
    assert m.device_kind == "cpu"
    assert 0 < m.startup_s < 30 and m.import_s == 0.0
    assert m.eval_batches == 0 and m.eval_s == 0.0
    # The CLI's live progress file got the harness's lines.
    live = [json.loads(line) for line in Path(request.progress_path).read_text().splitlines()]
    assert live and set(live[-1]) == {"step", "elapsed_s", "ci_rel"}
    assert [line["step"] for line in live] == list(range(1, len(live) + 1))
    # The command's own lines and output are kept next to it; its checkpoints are not.
    own = Path(request.progress_path + ".command.jsonl")
    assert own.is_file() and Path(request.progress_path + ".command.log").is_file()
    assert not Path(request.scratch_dir).exists()


@pytest.mark.slow
def test_step_cap_and_reported_peak_memory(tmp_path: Path, marker: str) -> None:
    argv = paced(marker, "--peak-bytes", "123456789", pace=0.02)
    request = make_request(tmp_path, argv, max_steps=12, min_steps=5, target_ci=1e-9)
    m = calibrate_command(request)
    assert m.stopped_by == "step_cap"
    assert m.steps_run == 12
    assert m.memory_kind == "cuda_max_allocated" and m.peak_memory_bytes == 123456789
    assert m.device_kind == "cuda"


@pytest.mark.slow
def test_a_command_that_ends_by_itself(tmp_path: Path, marker: str) -> None:
    # It trains 30 steps whatever {total_steps} says.
    argv = paced(marker, "--total-steps", "30", pace=0.02)
    m = calibrate_command(make_request(tmp_path, argv, target_ci=1e-9))
    assert m.stopped_by == "exited" and "exited" in STOP_REASONS
    assert m.steps_run == 30
    argv = paced(marker, "--total-steps", "4", pace=0.02)
    (tmp_path / "again").mkdir()
    with pytest.raises(NodeError) as failed:
        calibrate_command(make_request(tmp_path / "again", argv))
    assert failed.value.kind == "too_few_steps"
    assert "{total_steps}" in str(failed.value) and "min_steps" in str(failed.value)


@pytest.mark.slow
def test_failing_command_names_its_status_and_output(tmp_path: Path, marker: str) -> None:
    request = make_request(tmp_path, paced(marker, "--fail-at", "3", pace=0.02))
    with pytest.raises(NodeError) as failed:
        calibrate_command(request)
    text = str(failed.value)
    assert failed.value.kind == "command_failed"
    assert "exited with status 3" in text and "after 2 step(s)" in text
    assert "boom at step 3" in text  # the tail of its output
    assert request.progress_path + ".command.log" in text


@pytest.mark.slow
def test_silent_command_fails_with_how_to_report(tmp_path: Path, marker: str) -> None:
    # It also started a child of its own: the kill must reach that one too.
    argv = paced(marker, "--silent", "--grandchild")
    request = make_request(tmp_path, argv, max_seconds=1.5, stop_grace_s=30.0)
    with pytest.raises(NodeError) as failed:
        calibrate_command(request)
    text = str(failed.value)
    assert failed.value.kind == "no_steps"
    assert "jobs.report" in text and "trainer_state" in text
    assert "training without reporting" in text


def test_missing_program(tmp_path: Path) -> None:
    request = make_request(tmp_path, ["/no/such/train.sh", "{total_steps}"])
    with pytest.raises(NodeError) as failed:
        calibrate_command(request)
    assert failed.value.kind == "command_not_found" and "/no/such/train.sh" in str(failed.value)


@pytest.mark.slow
def test_trainer_state_command_measured(tmp_path: Path, marker: str) -> None:
    pace = 0.03
    argv = [
        sys.executable,
        str(FAKE_HF),
        "--output_dir",
        "{output_dir}",
        "--max_steps",
        "{total_steps}",
        "--save_steps",
        "{checkpoint_interval_steps}",
        "--pace",
        str(pace),
        "--marker",
        marker,
    ]
    scratch = tmp_path / "scratch" / ".calibration-probe-x"
    request = make_request(
        tmp_path,
        argv,
        report="trainer_state",
        output_dir=str(scratch / "trainer-output"),
        checkpoint_interval_steps=5,
        target_ci=0.1,
    )
    m = calibrate_command(request)
    assert m.stopped_by in ("ci_target", "time_cap")
    # Each save interval gives one time: 5 steps' mean, between one save's end and the next's.
    assert m.step_mean_s == pytest.approx(pace, rel=0.25)
    assert m.steady_steps >= 10 and m.steps_run % 5 == 0
    assert m.checkpoint_bytes > 147 * 1024 and 0 <= m.checkpoint_save_s < 5
    assert m.samples_per_step == 6 and m.memory_kind == "rss_peak"
    assert m.loss_last == pytest.approx(3.0 / (m.steps_run + 5), rel=0.01)
    assert 0 < m.startup_s < 30
    assert not scratch.exists()


def _interrupt_soon(signum: int, after_s: float) -> threading.Timer:
    timer = threading.Timer(after_s, os.kill, (os.getpid(), signum))
    timer.start()
    return timer


@pytest.mark.slow
def test_ctrl_c_stops_the_command(tmp_path: Path, marker: str) -> None:
    request = make_request(tmp_path, paced(marker), target_ci=1e-9, max_seconds=60.0)
    timer = _interrupt_soon(signal.SIGINT, 1.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            calibrate_command(request)
    finally:
        timer.cancel()


class UncompletedJobError(Exception):
    """Named as submitit's, which its time-limit signal handler raises."""


@pytest.mark.slow
def test_time_limit_while_waiting(tmp_path: Path, marker: str) -> None:
    def on_signal(_signum: int, _frame: object) -> None:
        raise UncompletedJobError("timed out")

    previous = signal.signal(signal.SIGUSR1, on_signal)
    request = make_request(tmp_path, paced(marker), target_ci=1e-9, max_seconds=60.0)
    timer = _interrupt_soon(signal.SIGUSR1, 1.5)
    try:
        with pytest.raises(NodeError) as failed:
            calibrate_command(request)
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert failed.value.kind == "time_limit"
    assert "calibration.time_limit_minutes" in str(failed.value)


@pytest.mark.slow
def test_counts_default_without_the_start_lines_extras(tmp_path: Path, marker: str) -> None:
    """A command without the start line's extras: the counts fall back to the request's."""
    argv = [
        sys.executable,
        "-c",
        "import os, time\n"
        "from jobs.progress import ProgressWriter\n"
        "with ProgressWriter(os.environ['PLANJOB_PROGRESS_PATH']) as p:\n"
        "    p.start(0, 20, 0)\n"
        "    last = time.time()\n"
        "    for step in range(1, 21):\n"
        "        time.sleep(0.02)\n"
        "        now = time.time()\n"
        "        p.step(step, step, 0, now - last, None)\n"
        "        last = now\n"
        "    p.stop(20, 'done')\n",
        marker,
    ]
    m = calibrate_command(make_request(tmp_path, argv, min_steps=5, target_ci=1e-9))
    assert m.samples_per_step == 6 and m.params == 0 and m.token_unit == ""
    assert math.isnan(m.loss_first) and math.isnan(m.loss_last)
    assert m.checkpoint_save_s == 0.0 and m.checkpoint_bytes == 0
    assert m.stopped_by == "exited" and m.steps_run == 20
