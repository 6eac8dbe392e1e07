"""Checkpoints a run can trust and one trainer per run (issue 20, the node's side): the
checksum inside every checkpoint, a bad one set aside, no silent start from step 0, the
trainer lock, the named causes of a failure and the room check at a segment's start. Real
`python -m jobs.train` processes on CPU with the tiny presets; the cluster's share is in
tests/test_guards_slurm.py.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from jobs.contract.failure import CAUSES, EXIT_REFUSED, Refusal
from jobs.contract.train_config import TrainConfig
from jobs.node import trainer_lock
from jobs.node.signals import StopRequest
from jobs.node.world import detect
from jobs.progress import read_progress
from jobs.training import builtin, checksum
from tests.paths import REPO
from tests.training_runs import (
    PACED,
    TOTAL_STEPS,
    assert_same_run,
    checkpoint_steps,
    command,
    command_config,
    copy_run,
    env,
    events,
    run_command,
    run_train,
    train_json,
)


@pytest.fixture(scope="module")
def reference_jit_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One uninterrupted tiny-JiT run, which the tests copy and damage."""
    folder = tmp_path_factory.mktemp("reference-jit")
    proc = run_train(train_json(folder, "jit"))
    assert proc.returncode == 0, proc.stderr
    assert not failures(folder)  # a new run starts from step 0 without being told
    return {"jit": folder}


def train_here(config_path: Path) -> int:
    """One job in this process (no torch import to wait for): train_rank, as main calls it."""
    config = TrainConfig.from_json(config_path.read_text())
    return builtin.train_rank(config, None, StopRequest(), detect({}))


def failures(folder: Path) -> list[dict[str, Any]]:
    return events(folder, "failure")


def ckpt(folder: Path, step: int) -> Path:
    return folder / "ck" / f"ckpt-{step:09d}.pt"


# --- the checksum ------------------------------------------------------------------------------


def test_the_checksum_survives_any_split_of_the_writes(tmp_path: Path) -> None:
    """torch.save writes in chunks of any size; the last 22 bytes (the zip's end record) must
    be held back whatever they were split into."""
    state = {"model": {"w": torch.arange(1000.0)}, "optimizer": {}, "step": 3}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    rng = random.Random(7)
    for attempt in range(20):
        path = tmp_path / f"split-{attempt}.pt"
        with open(path, "wb") as handle:
            writer = checksum.HashingWriter(handle)
            at = 0
            while at < len(data):
                size = rng.choice([1, 2, 5, 21, 22, 23, 100, 4096])
                writer.write(data[at : at + size])
                at += size
            writer.finish()
        assert checksum.verify(path)
        loaded = torch.load(path, weights_only=True)  # a plain torch.load reads it
        assert torch.equal(loaded["model"]["w"], state["model"]["w"])


@pytest.mark.slow
def test_a_checkpoint_without_a_checksum_loads_and_the_log_says_so(
    tmp_path: Path, reference_jit_run: dict[str, Path]
) -> None:
    folder = tmp_path / "run"
    config = copy_run(reference_jit_run["jit"], folder)
    newest = ckpt(folder, TOTAL_STEPS)
    assert checksum.verify(newest)
    torch.save(torch.load(newest, weights_only=False), newest)  # as plan-job saved before
    assert not checksum.verify(newest)
    proc = run_train(config)
    assert proc.returncode == 0, proc.stderr
    assert f"{newest.name} carries no checksum" in proc.stderr
    assert events(folder, "stop")[-1]["reason"] == "done"


@pytest.mark.slow
def test_a_flipped_bit_sets_the_newest_aside_and_the_run_ends_as_if_uninterrupted(
    tmp_path: Path, reference_jit_run: dict[str, Path]
) -> None:
    folder = tmp_path / "run"
    config = copy_run(reference_jit_run["jit"], folder)
    newest = ckpt(folder, TOTAL_STEPS)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x04  # inside the tensors' bytes: torch.load does not notice
    newest.write_bytes(bytes(data))
    proc = run_train(config)
    assert proc.returncode == 0, proc.stderr
    (bad,) = events(folder, "checkpoint_bad")
    assert bad == {
        **bad,
        "path": str(newest),
        "moved_to": f"{newest}.bad",
        "reason": "checksum mismatch",
        "step": TOTAL_STEPS,
    }
    assert Path(f"{newest}.bad").exists()
    assert events(folder, "resume")[-1]["step"] == 10
    # Written after the job's start line, as the job's own.
    found = [e["event"] for e in events(folder)]
    assert found.index("checkpoint_bad") > [i for i, e in enumerate(found) if e == "start"][-1]
    assert checkpoint_steps(folder) == [10, TOTAL_STEPS]
    assert_same_run(folder, reference_jit_run["jit"])


# --- no silent start from step 0 ---------------------------------------------------------------


@pytest.mark.slow
def test_when_no_checkpoint_loads_the_job_refuses_and_restart_from_scratch_starts_over(
    tmp_path: Path, reference_jit_run: dict[str, Path]
) -> None:
    folder = tmp_path / "run"
    config = copy_run(reference_jit_run["jit"], folder)
    for path in (folder / "ck").glob("ckpt-*.pt"):
        path.write_bytes(path.read_bytes()[:1000])  # a full disk, a kill during a copy
    before = len(events(folder))
    proc = run_train(config)
    assert proc.returncode == EXIT_REFUSED, proc.stderr
    assert "no checkpoint in" in proc.stderr and "past step 0" in proc.stderr
    new = events(folder)[before:]
    assert [e["event"] for e in new] == ["checkpoint_bad", "checkpoint_bad", "failure"]
    failure = new[-1]
    assert failure["cause"] == "no_checkpoint_loads"
    for step in (10, TOTAL_STEPS):
        assert f"ckpt-{step:09d}.pt:" in failure["message"]  # each file, and what was wrong
    assert f"a checkpoint of step {TOTAL_STEPS} (" in failure["message"]
    assert not list((folder / "ck").glob("ckpt-*.pt"))  # nothing trained over them

    # Still refused on the next try: the .bad files and the progress file remember.
    again = run_train(config)
    assert again.returncode == EXIT_REFUSED, again.stderr
    assert "set aside by earlier jobs" in again.stderr

    scratch = run_train(config, "--restart-from-scratch")
    assert scratch.returncode == 0, scratch.stderr
    assert "restart_from_scratch: starting over from step 0" in scratch.stderr
    assert events(folder, "start")[-1]["step"] == 0
    assert_same_run_weights(folder, reference_jit_run["jit"])


def assert_same_run_weights(folder: Path, reference_folder: Path) -> None:
    model = torch.load(ckpt(folder, TOTAL_STEPS), weights_only=False)["model"]
    expected = torch.load(ckpt(reference_folder, TOTAL_STEPS), weights_only=False)["model"]
    assert all(torch.equal(model[k], expected[k]) for k in expected)


@pytest.mark.slow
def test_command_mode_refuses_when_the_checkpoints_it_recorded_are_gone(tmp_path: Path) -> None:
    argv = [sys.executable, str(PACED), "--pace", "0.01"]
    config = command_config(tmp_path, argv, total_steps=4)
    status, _, err = run_command(tmp_path, config)
    assert status == 0, err
    shutil.rmtree(tmp_path / "ck")  # a scratch filesystem purged between two segments
    longer = command_config(tmp_path, argv, total_steps=8)
    status, _, err = run_command(tmp_path, longer)
    assert status == EXIT_REFUSED, err
    failure = [e for e in json_lines(tmp_path) if e["event"] == "failure"][-1]
    assert failure["cause"] == "no_checkpoint_loads"
    assert "none of the 2 checkpoint(s) it names is left" in failure["message"]


def json_lines(folder: Path) -> list[dict[str, Any]]:
    return read_progress(folder / "progress.jsonl")


# --- one trainer per run -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_trainer_refuses_while_the_first_one_beats(tmp_path: Path) -> None:
    config = train_json(tmp_path, slow="slow", total_steps=60, lock_heartbeat_s=0.5)
    first = subprocess.Popen(
        command(config), cwd=REPO, env=env(SLURM_JOB_ID="101"), stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while len(events(tmp_path, "step")) < 2:
            assert first.poll() is None and time.monotonic() < deadline, "no first steps"
            time.sleep(0.05)
        holder = trainer_lock.read_holder(tmp_path / "ck")
        assert holder is not None and holder.pid == first.pid and holder.job_id == "101"
        second = run_train(config, extra_env={"SLURM_JOB_ID": "102"})
        assert second.returncode == EXIT_REFUSED, second.stderr
        assert f"job 101 on {socket.gethostname()} pid {first.pid}" in second.stderr
        (failure,) = failures(tmp_path)
        assert failure["cause"] == "trainer_running" and failure["job_id"] == "102"
        assert failure["detail"]["holder"]["pid"] == first.pid
        assert first.poll() is None  # the first one trains on, undisturbed
    finally:
        first.send_signal(signal.SIGUSR2)
        _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert not (tmp_path / "ck" / trainer_lock.LOCK_FILE).exists()  # removed at its exit
    assert [e["job_id"] for e in events(tmp_path, "start")] == ["101"]


def write_lock(folder: Path, **changes: Any) -> None:
    now = time.time()
    holder = {
        "job_id": "77",
        "restart": 0,
        "host": socket.gethostname(),
        "pid": 2**22 + 12345,  # above pid_max's default: no such process
        "started": now - 100,
        "heartbeat": now,
        "heartbeat_s": 30.0,
        "stale_after_s": 120.0,
        **changes,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / trainer_lock.LOCK_FILE).write_text(json.dumps(holder))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"host": "elsewhere", "heartbeat": time.time() - 600}, "stale (no heartbeat for 120 s)"),
        ({}, "that process is gone"),  # this host, its pid dead: no need to wait
    ],
)
def test_a_dead_trainers_lock_is_taken_over(
    tmp_path: Path, changes: dict[str, Any], said: str
) -> None:
    config = train_json(tmp_path, total_steps=2)
    write_lock(tmp_path / "ck", **changes)
    proc = run_train(config)
    assert proc.returncode == 0, proc.stderr
    assert "taking over the run's lock from job 77" in proc.stderr and said in proc.stderr
    assert not (tmp_path / "ck" / trainer_lock.LOCK_FILE).exists()


def test_a_lock_whose_heartbeat_moves_is_refused_one_that_stops_is_taken(tmp_path: Path) -> None:
    """acquire's decision with the clock in the test's hands: a heartbeat that moves while
    the newcomer waits means a live trainer; one that stays put goes stale and is taken."""
    folder = tmp_path / "ck"
    me = trainer_lock.Holder.me({"SLURM_JOB_ID": "9", "SLURM_RESTART_COUNT": "1"}, 30.0)
    now = [1000.0]
    beats = {"moving": True}

    def sleep(seconds: float) -> None:
        now[0] += seconds
        if beats["moving"]:
            write_lock(folder, host="other", pid=1, started=1.0, heartbeat=now[0])

    write_lock(folder, host="other", pid=1, started=1.0, heartbeat=now[0])
    said: list[str] = []
    with pytest.raises(Refusal) as refused:
        trainer_lock.acquire(folder, me, said.append, clock=lambda: now[0], sleep=sleep)
    assert refused.value.cause == "trainer_running"
    assert refused.value.detail["holder"]["host"] == "other"
    assert "waiting to see whether its heartbeat moves" in said[0]

    beats["moving"] = False
    write_lock(folder, host="other", pid=1, started=1.0, heartbeat=now[0])
    lock = trainer_lock.acquire(folder, me, said.append, clock=lambda: now[0], sleep=sleep)
    assert "stale" in said[-1]
    holder = trainer_lock.read_holder(folder)
    assert holder is not None and (holder.job_id, holder.restart) == ("9", 1)
    lock.release()
    assert trainer_lock.read_holder(folder) is None


# --- named causes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("builder", "cause", "said"),
    [
        ("tests.fixtures.no_such_module:build", "import_error", "cannot import workload"),
        ("tests.fixtures.user_workloads:out_of_memory", "out_of_memory", "out of memory"),
        ("tests.fixtures.user_workloads:host_out_of_memory", "host_out_of_memory", "64 GiB"),
        ("tests.fixtures.user_workloads:raises_in_step", "exception", "shape mismatch"),
    ],
)
def test_a_failure_names_its_cause(tmp_path: Path, builder: str, cause: str, said: str) -> None:
    assert train_here(train_json(tmp_path, builder_path=builder, total_steps=3)) == 1
    (failure,) = failures(tmp_path)
    assert failure["cause"] == cause and cause in CAUSES
    assert said in failure["message"] and failure["job_id"] is None
    assert "\n" not in failure["message"] and len(failure["message"]) <= 500


@pytest.mark.slow
def test_a_checkpoint_that_does_not_fit_the_workload_is_named(
    tmp_path: Path, reference_jit_run: dict[str, Path]
) -> None:
    folder = tmp_path / "run"
    copy_run(reference_jit_run["jit"], folder)
    wider = train_json(folder, total_steps=TOTAL_STEPS + 2, overrides={"depth": 3})
    assert train_here(wider) == 1
    (failure,) = failures(folder)
    assert failure["cause"] == "checkpoint_mismatch"
    assert "does not fit the workload" in failure["message"]


def in_small_filesystem(
    size_kib: int, folder: Path, argv: list[str]
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with a tmpfs of ``size_kib`` mounted on ``folder``, in a mount namespace
    of its own: a real full disk, gone with the process, no root needed where user
    namespaces are allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    script = 'mount -t tmpfs -o size="$1"k tmpfs "$2" && shift 2 && exec "$@"'
    return subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            script,
            "sh",
            str(size_kib),
            str(folder),
            *argv,
        ],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_a_save_that_fills_the_disk_is_named_no_space(tmp_path: Path) -> None:
    config = train_json(tmp_path, total_steps=3, checkpoint_interval_steps=2)
    proc = in_small_filesystem(64, tmp_path / "ck", command(config))
    assert proc.returncode == 1, proc.stderr
    (failure,) = failures(tmp_path)
    assert failure["cause"] == "no_space" and failure["step"] == 2
    assert failure["detail"]["path"] == str(tmp_path / "ck")
    assert failure["detail"]["free_bytes"] <= 64 * 1024


@pytest.mark.slow
def test_a_segment_without_room_for_its_checkpoints_refuses_at_start(tmp_path: Path) -> None:
    config = train_json(tmp_path, total_steps=3, checkpoint_bytes=300 * 1024)
    proc = in_small_filesystem(512, tmp_path / "ck", command(config))
    assert proc.returncode == EXIT_REFUSED, proc.stderr
    (failure,) = failures(tmp_path)
    assert failure["cause"] == "no_space"
    detail = failure["detail"]
    assert detail["needed_bytes"] == 3 * 300 * 1024  # keep (2) + 1, none there yet
    assert detail["free_bytes"] <= 512 * 1024
    assert "missing" in failure["message"] and "checkpoint.keep + 1 = 3" in failure["message"]
    assert not events(tmp_path, "start")  # refused before anything started


def test_the_room_check_counts_the_checkpoints_already_there() -> None:
    from jobs.node.space import needed_bytes

    assert needed_bytes(2, 100, []) == 300
    assert needed_bytes(2, 100, [100]) == 200
    assert needed_bytes(2, 100, [100, 100, 100]) == 100  # never less than the next one


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flag", "detail", "said"),
    [
        ("--fail-at=2", {"exit_code": 3, "signal": None}, "exited with status 3 at step 1"),
        ("--die-at=2", {"exit_code": None, "signal": "SIGKILL"}, "was killed by SIGKILL"),
    ],
)
def test_a_command_that_fails_is_named_with_its_status_or_signal(
    tmp_path: Path, flag: str, detail: dict[str, Any], said: str
) -> None:
    config = command_config(tmp_path, [sys.executable, str(PACED), "--pace", "0.02", flag])
    status, _, err = run_command(tmp_path, config)
    assert status != 0, err
    (failure,) = [e for e in json_lines(tmp_path) if e["event"] == "failure"]
    assert failure["cause"] == "command_failed" and failure["detail"] == detail
    assert said in failure["message"] and failure["step"] == 1


@pytest.mark.slow
def test_a_command_that_ignores_the_stop_signal_is_named(tmp_path: Path) -> None:
    argv = [sys.executable, str(PACED), "--pace", "0.05", "--deaf"]
    config = command_config(tmp_path, argv, total_steps=400, stop_grace_s=1.0)
    (tmp_path / "train.json").write_text(config.to_json())
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.train", str(tmp_path / "train.json")],
        cwd=tmp_path,
        env=env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not any(e["event"] == "step" for e in json_lines(tmp_path)):
        assert proc.poll() is None and time.monotonic() < deadline, "no step"
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR2)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    (failure,) = [e for e in json_lines(tmp_path) if e["event"] == "failure"]
    assert failure["cause"] == "command_ignored_stop"
    assert "did not exit within stop_grace_s (1 s) of SIGUSR2" in failure["message"]
