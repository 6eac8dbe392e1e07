"""jobs.node.process and jobs.training.command: a user's training command started in its own
process group, stopped with a grace and a kill, dead with its parent; ``python -m jobs.train``
running it from train.json (fields, signals, resume, exit statuses, and the progress lines it
writes for a Hugging Face Trainer). Real processes, all local; the scripts are in
tests/fixtures/user_scripts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from jobs.contract.train_config import TrainConfig
from jobs.node import process
from jobs.progress import ProgressWriter, read_progress
from jobs.training import command
from tests.paths import REPO
from tests.processes import alive, new_marker, pids_with, wait_until
from tests.training_runs import (
    FAKE_HF,
    PACED,
    command_config,
    launch_command,
    run_command,
)


def events(config: TrainConfig, kind: str) -> list[dict[str, Any]]:
    return [e for e in read_progress(config.progress_path) if e["event"] == kind]


# spawn and stop


@pytest.mark.slow
def test_stop_kills_a_child_that_ignores_sigterm_and_its_grandchild(tmp_path: Path) -> None:
    marker = new_marker()
    # SIG_IGN survives exec: the grandchild ignores SIGTERM too.
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', sys.argv[1]])\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = process.spawn(
        [sys.executable, "-c", code, marker], os.environ, tmp_path, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        wait_until(lambda: len(pids_with(marker)) == 2, what="child and grandchild")
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
        started = time.monotonic()
        status = process.stop(proc, signal.SIGTERM, 0.5)
        took = time.monotonic() - started
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
    assert status == -signal.SIGKILL
    assert 0.45 <= took < 5.0
    wait_until(lambda: not pids_with(marker), 5.0, "the grandchild to die with the group")


@pytest.mark.slow
def test_stop_lets_a_child_exit_within_the_grace(tmp_path: Path) -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(4))\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = process.spawn([sys.executable, "-c", code], os.environ, tmp_path, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    started = time.monotonic()
    assert process.stop(proc, signal.SIGTERM, 30.0) == 4
    assert time.monotonic() - started < 10.0
    proc.stdout.close()


@pytest.mark.slow
def test_stop_waits_for_workers_that_outlive_their_launcher(tmp_path: Path) -> None:
    """Like torchrun: the launcher dies of SIGUSR2 at once, its worker saves first."""
    saved = tmp_path / "saved"
    worker = (
        "import signal, sys, time\n"
        "def save(*_):\n"
        "    time.sleep(0.5)\n"
        "    open(sys.argv[1], 'w').write('ok')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGUSR2, save)\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    launcher = (
        "import subprocess, sys, time\n"
        "w = subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2]],"
        " stdout=subprocess.PIPE)\n"
        "w.stdout.readline()\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    argv = [sys.executable, "-c", launcher, worker, str(saved)]
    proc = process.spawn(argv, os.environ, tmp_path, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    assert process.stop(proc, signal.SIGUSR2, 10.0) == -signal.SIGUSR2
    assert saved.read_text() == "ok"
    proc.stdout.close()


@pytest.mark.slow
def test_stop_after_the_child_exited(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "raise SystemExit(5)"]
    reaped = process.spawn(argv, os.environ, tmp_path)
    reaped.wait()
    assert process.stop(reaped, signal.SIGTERM, 5.0) == 5
    zombie = process.spawn(argv, os.environ, tmp_path)
    wait_until(lambda: not alive(zombie.pid), what="the child to exit")
    started = time.monotonic()
    assert process.stop(zombie, signal.SIGTERM, 5.0) == 5
    assert time.monotonic() - started < 2.0


def test_spawn_runs_no_shell_and_reports_a_missing_program(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    with open(out, "wb") as handle:
        proc = process.spawn(["echo", "a; echo b", "$HOME"], os.environ, tmp_path, stdout=handle)
        assert proc.wait() == 0
    assert out.read_text() == "a; echo b $HOME\n"
    with pytest.raises(FileNotFoundError):
        process.spawn(["/no/such/program"], os.environ, tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_child_dies_when_its_parent_python_is_killed(tmp_path: Path) -> None:
    marker = new_marker()
    parent_code = (
        "import os, sys, time\n"
        "from jobs.node.process import spawn\n"
        "child = spawn([sys.executable, '-c', 'import time; time.sleep(600)', sys.argv[1]],"
        " os.environ, None)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code, marker + "-child"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.kill()  # SIGKILL: no Python cleanup runs, only the kernel's PDEATHSIG
        parent.wait()
        wait_until(lambda: not alive(child), 5.0, "the child to die with its parent")
    finally:
        if parent.returncode is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()
        for pid in pids_with(marker + "-child"):
            os.kill(pid, signal.SIGKILL)


# resume_from


def test_resume_from_the_newest_checkpoint_that_exists(tmp_path: Path) -> None:
    config = command_config(tmp_path, ["true"])
    assert command.resume_from(config) == (0, None)
    kept = [tmp_path / "ck5", tmp_path / "ck10"]
    for path in kept:
        path.write_text("x")
    with ProgressWriter(config.progress_path) as progress:
        progress.start(0, 20, 0)
        progress.checkpoint(5, 0.1, str(kept[0]), 1)
        progress.checkpoint(10, 0.1, str(kept[1]), 1)
        progress.checkpoint(15, 0.1, str(tmp_path / "pruned"), 1)
    with open(config.progress_path, "a") as handle:
        handle.write('{"event": "checkpoint", "step": 20, "pa')  # torn by a kill
    assert command.resume_from(config) == (10, str(kept[1]))


def test_resume_from_the_newest_complete_trainer_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = command_config(tmp_path, ["true"], report="trainer_state", output_dir=str(out))
    assert command.resume_from(config) == (0, None)
    for step in (5, 10):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"w" * 10)
    state = {"global_step": 5, "max_steps": 20, "log_history": []}
    (out / "checkpoint-5" / "trainer_state.json").write_text(json.dumps(state))
    # checkpoint-10 is still being written: no trainer_state.json yet.
    assert command.resume_from(config) == (5, str(out / "checkpoint-5"))


# python -m jobs.train with a command


@pytest.mark.slow
def test_fields_reach_the_command_as_single_arguments(tmp_path: Path) -> None:
    marker = new_marker()
    checkpoints = tmp_path / "ck dir; echo pwned $(touch hacked)"
    argv = [
        sys.executable,
        str(PACED),
        "--echo-args",
        "--checkpoint-dir",
        "{checkpoint_dir}",
        "--total-steps={total_steps}",
        "--pace",
        "0.02",
        "--marker",
        f"{marker}|{{global_batch}}|{{seed}}|{{stop_at}}|{{resume_from}}|{{{{x}}}}",
    ]
    progress = tmp_path / "run folder" / "progress.jsonl"
    config = command_config(
        tmp_path, argv, checkpoint_dir=str(checkpoints), progress_path=str(progress)
    )
    status, out, err = run_command(tmp_path, config)
    assert status == 0, err
    args = [line[4:] for line in out.splitlines() if line.startswith("ARG ")]
    assert args == [
        "--echo-args",
        "--checkpoint-dir",
        str(checkpoints),
        "--total-steps=8",
        "--pace",
        "0.02",
        "--marker",
        f"{marker}|6|7|||{{x}}",  # 2 x 3 x one rank; no stop time, nothing to resume
    ]
    assert "pwned" not in out.replace(str(checkpoints), "")
    assert not (tmp_path / "hacked").exists()
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "ckpt-000003.txt",
        "ckpt-000006.txt",
        "ckpt-000008.txt",
    ]
    # One line on stderr says what ran, quoted so that it can be pasted into a shell.
    running = [line for line in err.splitlines() if "running" in line]
    assert len(running) == 1 and "'" + str(checkpoints) + "'" in running[0]
    assert [e["step"] for e in events(config, "step")] == list(range(1, 9))
    assert [e["reason"] for e in events(config, "stop")] == ["done"]


@pytest.mark.slow
def test_a_forwarded_signal_stops_and_a_rerun_resumes(tmp_path: Path) -> None:
    marker = new_marker()
    # No fields in argv: the script reads its $PLANJOB_* variables.
    argv = [sys.executable, str(PACED), "--pace", "0.05", "--marker", marker]
    config = command_config(tmp_path, argv, total_steps=30, checkpoint_interval_steps=5)
    proc = launch_command(tmp_path, config)
    try:
        wait_until(lambda: any(e["step"] >= 7 for e in events(config, "step")), 30, "step 7")
        proc.send_signal(signal.SIGUSR2)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert not pids_with(marker)
    (stop,) = events(config, "stop")
    assert stop["reason"] == "signal" and stop["signal"] == "SIGUSR2"
    stopped = stop["step"]
    assert 7 <= stopped < 30
    assert events(config, "checkpoint")[-1]["step"] == stopped  # saved on the signal
    assert command.resume_from(config)[0] == stopped

    status, _out, err = run_command(tmp_path, config)
    assert status == 0, err
    starts = events(config, "start")
    assert [(s["step"], s["restart"]) for s in starts] == [(0, 0), (stopped, 1)]
    (resume,) = events(config, "resume")
    assert resume["step"] == stopped and resume["path"].endswith(f"ckpt-{stopped:06d}.txt")
    assert [e["reason"] for e in events(config, "stop")] == ["signal", "done"]
    steps = [e["step"] for e in events(config, "step")]
    assert steps == list(range(1, stopped + 1)) + list(range(stopped + 1, 31))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("--fail-at=2", 3),  # its own exit status
        ("--die-at=2", 128 + signal.SIGKILL),  # death by a signal nobody sent: 128+n
    ],
)
def test_the_launcher_exits_with_the_commands_status(
    tmp_path: Path, flag: str, expected: int
) -> None:
    argv = [sys.executable, str(PACED), "--pace", "0.02", flag]
    status, _out, err = run_command(tmp_path, command_config(tmp_path, argv))
    assert status == expected, err
    assert "the command" in err


@pytest.mark.slow
def test_a_command_killed_by_the_forwarded_signal_is_a_clean_stop(tmp_path: Path) -> None:
    marker = new_marker()
    argv = [sys.executable, str(PACED), "--pace", "0.05", "--ignore-stop", "--marker", marker]
    config = command_config(tmp_path, argv, total_steps=200)
    proc = launch_command(tmp_path, config)
    try:
        wait_until(lambda: bool(events(config, "step")), 30, "a step")
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "killed by SIGTERM" in err
    assert not pids_with(marker)


def hf_argv(pace: float, marker: str) -> list[str]:
    return [
        sys.executable,
        str(FAKE_HF),
        "--output_dir",
        "{output_dir}",
        "--max_steps",
        "{total_steps}",
        "--save_steps",
        "{checkpoint_interval_steps}",
        "--resume_from_checkpoint",
        "{resume_from}",
        "--pace",
        str(pace),
        "--marker",
        marker,
    ]


@pytest.mark.slow
def test_trainer_state_progress_lines_written_by_the_launcher(tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = command_config(
        tmp_path,
        hf_argv(0.05, new_marker()),
        report="trainer_state",
        output_dir=str(out),
        total_steps=12,
        checkpoint_interval_steps=4,
    )
    status, _out, err = run_command(tmp_path, config)
    assert status == 0, err
    lines = read_progress(config.progress_path)
    assert [e["event"] for e in lines] == ["start"] + ["step", "checkpoint"] * 3 + ["stop"]
    assert (lines[0]["step"], lines[0]["total_steps"], lines[0]["restart"]) == (0, 12, 0)
    steps = events(config, "step")
    assert [e["step"] for e in steps] == [4, 8, 12]
    assert [e["samples"] for e in steps] == [24, 48, 72]
    # The first interval holds the script's start-up; the later ones are 4 paced steps each.
    for event in steps[1:]:
        assert event["step_s"] == pytest.approx(0.05, rel=0.3)
    assert steps[1]["loss"] == pytest.approx(3.0 / 8)
    saves = events(config, "checkpoint")
    assert [e["path"] for e in saves] == [str(out / f"checkpoint-{n}") for n in (4, 8, 12)]
    assert all(e["bytes"] > 147 * 1024 and 0 <= e["save_s"] < 5 for e in saves)
    assert events(config, "stop")[0]["reason"] == "done"
    assert events(config, "stop")[0]["step"] == 12


@pytest.mark.slow
def test_trainer_state_signal_then_resume(tmp_path: Path) -> None:
    marker = new_marker()
    out = tmp_path / "out"
    config = command_config(
        tmp_path,
        hf_argv(0.05, marker),
        report="trainer_state",
        output_dir=str(out),
        total_steps=100,  # the launcher's first look-twice takes 2 s: still running then
        checkpoint_interval_steps=4,
    )
    proc = launch_command(tmp_path, config)
    try:
        wait_until(lambda: bool(events(config, "checkpoint")), 30, "a checkpoint line")
        proc.send_signal(signal.SIGTERM)  # the Trainer has no handler: it dies of it
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert not pids_with(marker)
    (stop,) = events(config, "stop")
    newest = command.resume_from(config)[0]
    assert stop["reason"] == "signal" and stop["signal"] == "SIGTERM"
    assert stop["step"] == newest >= 4

    status, stdout, err = run_command(tmp_path, config)
    assert status == 0, err
    assert f"resumed from {out / f'checkpoint-{newest}'}" in stdout
    starts = events(config, "start")
    assert [(s["step"], s["restart"]) for s in starts] == [(0, 0), (newest, 1)]
    assert events(config, "stop")[-1]["reason"] == "done"
    assert events(config, "step")[-1]["step"] == 100


@pytest.mark.slow
def test_trainer_state_stopped_before_the_stop_time(tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = command_config(
        tmp_path,
        hf_argv(0.05, new_marker()),
        report="trainer_state",
        output_dir=str(out),
        total_steps=1000,
        checkpoint_interval_steps=4,
        stop_grace_s=1.0,
    )
    stop_at = time.time() + 4.0
    proc = launch_command(tmp_path, config, ["--stop-at", repr(stop_at)])
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    (stop,) = events(config, "stop")
    assert stop["reason"] == "time_limit"
    # Stopped stop_grace_s before the stop time, so that a kill still fits before it.
    assert stop_at - 1.0 - 0.5 < stop["time"] < stop_at
