"""The node's guards of a long run on the real test cluster (issues 20 and 21): a hung rank of
a two-node job, a user's command whose progress lines stop, a chain whose workload fails at
start, and an orphaned trainer beside its requeued job.

The runs are emitted by `plan-job emit` from one calibration of the paced test workload; the
tests then change what the user would have broken (train.json's workload or command) and
give the chain the segments it needs by copying the first script, as `submit` chains them.
Each job is short: the partition's MaxTime is 3 minutes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from jobs.node import trainer_lock
from jobs.progress import read_progress
from tests.builders import paced_spec, write_spec
from tests.paths import REPO
from tests.processes import cli_env, run_cli, wait_for_chain
from tests.slurm_cluster import SlurmCluster
from tests.training_runs import final_weights, reference_weights

pytestmark = pytest.mark.slurm

PACED = REPO / "tests" / "fixtures" / "user_scripts" / "paced_train.py"


@pytest.fixture(scope="module")
def guards_calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One local calibration of the paced workload, for every run of this module."""
    folder = tmp_path_factory.mktemp("calibrated")
    spec = write_spec(folder, spec_of(400))
    proc = run_cli(["calibrate", str(spec), "-o", "cal.yaml"], cwd=folder)
    assert proc.returncode == 0, proc.stderr
    return folder / "cal.yaml"


def spec_of(samples: int) -> dict[str, Any]:
    spec = paced_spec(samples, "guards")
    # 8 samples a step on one node (grad_accum 2) or two (one rank each, grad_accum 1).
    spec["batch"] = {"micro_batch": 4, "global_batch": 8}
    return spec


def emit_run(
    tmp_path: Path,
    calibration: Path,
    samples: int,
    segments: int,
    change: Callable[[dict[str, Any]], None],
    *emit_args: str,
) -> Path:
    """A run folder of ``segments`` copies of the first script, train.json changed."""
    spec = write_spec(tmp_path, spec_of(samples))
    run = tmp_path / "run"
    proc = run_cli(
        [
            "emit",
            str(spec),
            "--calibration",
            str(calibration),
            "-o",
            str(run),
            "--set",
            "checkpoint.interval_steps=10",
            *emit_args,
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads((run / "train.json").read_text())
    change(data)
    (run / "train.json").write_text(json.dumps(data, indent=2))
    first = run / "segment-01.sbatch"
    for index in range(2, segments + 1):
        (run / f"segment-{index:02d}.sbatch").write_text(first.read_text())
    return run


def submit(run: Path, cwd: Path) -> list[str]:
    proc = run_cli(["submit", str(run)], cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return re.findall(r"submitted segment \d+: job (\d+)", proc.stderr)


def job_info(job_id: str) -> dict[str, str]:
    """scontrol's fields of a job (ended jobs stay visible: MinJobAge is 10 minutes)."""
    out = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30
    ).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def seconds(text: str) -> int:
    """Slurm's [D-]HH:MM:SS or MM:SS."""
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return int(days or 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def logs(run: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((run / "logs").iterdir()))


def events_of(run: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in read_progress(run / "progress.jsonl") if e["event"] == kind]


# --- (a) a rank that hangs -------------------------------------------------------------------


def test_a_rank_that_hangs_ends_its_job_within_the_step_timeout_and_the_next_resumes(
    slurm_cluster: SlurmCluster, guards_calibration: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "hung-once"

    def hang_rank_1(data: dict[str, Any]) -> None:
        data["builder_path"] = "tests.fixtures.user_workloads:hangs_once"
        data["overrides"] = {
            **data["overrides"],
            "hang_at": 25,  # after the checkpoint of step 20
            "hang_rank": 1,
            "marker": str(marker),
        }

    run = emit_run(tmp_path, guards_calibration, 400, 2, hang_rank_1, "--nodes", "2")
    step_timeout = json.loads((run / "train.json").read_text())["hang_timeouts"]["step_s"]
    first, second = submit(run, tmp_path)
    wait_for_chain([first, second], timeout_s=360)
    text = logs(run)

    hung = job_info(first)
    assert (hung["JobState"], hung["ExitCode"]) == ("FAILED", "124:0"), text
    assert seconds(hung["RunTime"]) < seconds(hung["TimeLimit"])  # not its --time
    hangs = events_of(run, "hang")
    assert {e["rank"] for e in hangs} == {0, 1}, text  # every rank's watchdog fired
    for hang in hangs:
        assert hang == {**hang, "phase": "step", "step": 24, "job_id": first}
        assert hang["timeout_s"] == step_timeout
    # Both ranks' stacks in the job's log: rank 1 in the user's step, rank 0 waiting for it.
    assert "rank 1/2 on n2: hang watchdog" in text or "rank 1/2" in text, text
    assert text.count("most recent call first") >= 4, text
    assert "in stuck" in text and "in average_gradients" in text, text

    done = job_info(second)
    assert (done["JobState"], done["ExitCode"]) == ("COMPLETED", "0:0"), text
    resume = events_of(run, "resume")[-1]
    assert resume["step"] == 20  # the newest checkpoint before the hang
    assert events_of(run, "stop")[-1] == {**events_of(run, "stop")[-1], "reason": "done"}
    # What the login side makes of it: a hang, kept in the history and not learned from.
    proc = run_cli(["history", "--update", str(run), "--json"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (row,) = [r for r in json.loads(proc.stdout)["not_learned"] if r["job_id"] == first]
    assert row["cause"] == "hang" and row["why"].startswith("hung in step 25 for "), row
    assert "on ranks 0, 1" in row["why"], row


# --- (b) a user's command that stops reporting -----------------------------------------------


@pytest.fixture(scope="module")
def command_calibrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("command")
    spec = write_spec(folder, command_spec())
    proc = run_cli(["calibrate", str(spec), "-o", "cal.yaml"], cwd=folder)
    assert proc.returncode == 0, proc.stderr
    return folder / "cal.yaml"


def command_spec() -> dict[str, Any]:
    run = f"{shlex.quote(sys.executable)} {shlex.quote(str(PACED))} --pace 0.1 --ckpt-bytes 4096"
    return {
        "name": "command-guards",
        "command": {"run": run, "stop_grace_s": 5},
        "data": {"samples": 4 * 60},
        "batch": {"micro_batch": 4},
        "precision": "fp32",
        "cluster": {"partition": "gpu", "gpus_per_node": 0, "cpus_per_task": 1},
        "checkpoint": {"dir": "ck", "interval_steps": 10},
        "calibration": {"executor": "local", "device": "cpu", "max_seconds": 5},
    }


def test_a_command_that_stops_writing_progress_is_ended_and_the_next_resumes(
    slurm_cluster: SlurmCluster, command_calibrated: Path, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, command_spec())
    run = tmp_path / "run"
    cal = str(command_calibrated)
    proc = run_cli(["emit", str(spec), "--calibration", cal, "-o", str(run)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((run / "train.json").read_text())
    data["command"] += ["--hang-at", "25", "--hang-marker", str(tmp_path / "hung-once")]
    (run / "train.json").write_text(json.dumps(data, indent=2))
    (run / "segment-02.sbatch").write_text((run / "segment-01.sbatch").read_text())
    first, second = submit(run, tmp_path)
    wait_for_chain([first, second], timeout_s=360)
    text = logs(run)

    hung = job_info(first)
    assert (hung["JobState"], hung["ExitCode"]) == ("FAILED", "124:0"), text
    assert seconds(hung["RunTime"]) < seconds(hung["TimeLimit"])
    (hang,) = events_of(run, "hang")
    assert hang == {**hang, "phase": "progress", "step": 24, "rank": 0, "job_id": first}
    assert hang["timeout_s"] == data["hang_timeouts"]["progress_s"]
    # The script's own stacks, which it dumped when the launcher asked, before the kill.
    assert "paced_train.py" in text and "most recent call first" in text, text
    done = job_info(second)
    assert (done["JobState"], done["ExitCode"]) == ("COMPLETED", "0:0"), text
    assert events_of(run, "resume")[-1]["step"] == 20
    assert events_of(run, "stop")[-1]["reason"] == "done"


# --- (c) a chain that makes no progress ------------------------------------------------------


def test_a_chain_whose_workload_fails_at_start_stops_after_three_segments(
    slurm_cluster: SlurmCluster, guards_calibration: Path, tmp_path: Path
) -> None:
    def broken(data: dict[str, Any]) -> None:
        data["builder_path"] = "tests.fixtures.user_workloads:raises_in_build"

    run = emit_run(tmp_path, guards_calibration, 400, 5, broken)
    jobs = submit(run, tmp_path)
    assert len(jobs) == 5
    wait_for_chain(jobs, timeout_s=300)
    text = logs(run)

    states = [(job_info(j)["JobState"], job_info(j)["ExitCode"]) for j in jobs]
    assert states[:3] == [("FAILED", "1:0"), ("FAILED", "1:0"), ("FAILED", "3:0")], text
    assert [s for s, _ in states[3:]] == ["CANCELLED", "CANCELLED"], states
    assert len(list((run / "logs").iterdir())) == 3  # the cancelled ones never ran
    failures = events_of(run, "failure")
    assert [e["job_id"] for e in failures] == jobs[:2]
    assert all("the user's data path" in e["message"] for e in failures)
    (stopped,) = events_of(run, "chain_stopped")
    assert stopped == {
        **stopped,
        "stalled": 2,
        "cancelled": jobs[3:],
        "step": 0,
        "job_id": jobs[2],
    }
    assert f"jobs {jobs[0]}, {jobs[1]}" in stopped["reason"]
    assert "the user's data path" in stopped["reason"]
    assert any("the user's data path" in line for line in stopped["log_tail"])
    assert "`scancel " in text and "exited 0" in text  # the one function reported its call
    # eta and resubmit say why the chain stopped and what it cancelled.
    proc = run_cli(["eta", str(run)], cwd=tmp_path, timeout=120)
    said = " ".join(proc.stdout.split())
    assert "the chain stopped itself:" in said, proc.stdout + proc.stderr
    assert f"cancelled job(s) {jobs[3]}, {jobs[4]}" in said, said
    proc = run_cli(["resubmit", str(run), "--dry-run"], cwd=tmp_path, timeout=120)
    refused = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "the chain stopped itself:" in refused, refused
    assert "--force-retry" in refused


# --- an orphaned trainer beside its requeued job ---------------------------------------------


def orphan_script(run: Path, python: str) -> Path:
    """The first attempt leaves a trainer running that the job's end does not stop (as when
    a node's slurmd dies: Slurm requeues the job, the training goes on); later attempts
    train as an emitted segment does."""
    train = shlex.quote(str(run / "train.json"))
    script = run / "orphan.sbatch"
    script.write_text(
        "#!/bin/bash\n"
        "#SBATCH --requeue\n"
        "#SBATCH --open-mode=append\n"
        f"#SBATCH --output={shlex.quote(str(run / 'logs' / 'orphan-%j.out'))}\n"
        f"cd {shlex.quote(str(REPO))}\n"
        "unset PLANJOB_STOP_AT\n"
        'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then\n'
        f"    setsid -f {shlex.quote(python)} -m jobs.train {train} "
        f"> {shlex.quote(str(run / 'orphan.log'))} 2>&1 < /dev/null\n"
        "    sleep 170\n"
        "else\n"
        f"    srun --kill-on-bad-exit=1 {shlex.quote(python)} -m jobs.train {train}\n"
        "fi\n"
    )
    return script


def wait_for(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.5)


def requeue_now(job_id: str) -> None:
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)
    # A requeued job waits for a BeginTime two minutes away; the test need not.
    wait_for(lambda: job_info(job_id).get("JobState") == "PENDING", 60, "the requeue")
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_a_requeued_job_refuses_beside_its_live_orphan_and_takes_over_once_it_is_dead(
    slurm_cluster: SlurmCluster, guards_calibration: Path, tmp_path: Path
) -> None:
    def beat_fast(data: dict[str, Any]) -> None:
        data["lock_heartbeat_s"] = 1.0

    run = emit_run(tmp_path, guards_calibration, 8 * 250, 1, beat_fast)
    checkpoints = Path(json.loads((run / "train.json").read_text())["checkpoint_dir"])
    script = orphan_script(run, sys.executable)
    proc = subprocess.run(
        ["sbatch", "--parsable", "--partition=gpu", "--time=3", str(script)],
        capture_output=True,
        text=True,
        env=cli_env(),
        check=True,
        timeout=60,
    )
    job = proc.stdout.strip().split(";")[0]
    orphan = 0
    try:
        holder = wait_for(
            lambda: (
                (h := trainer_lock.read_holder(checkpoints)) and events_of(run, "checkpoint") and h
            ),
            120,
            "the first trainer's lock and checkpoint",
        )
        orphan = holder.pid
        assert (holder.job_id, holder.restart) == (job, 0)
        requeue_now(job)
        wait_for(lambda: job_info(job).get("JobState") == "FAILED", 120, "the requeued attempt")
        assert alive(orphan)  # left running by the requeue
        info = job_info(job)
        assert (info["ExitCode"], info["Restarts"]) == ("2:0", "1"), logs(run)
        (refusal,) = events_of(run, "failure")
        assert refusal["cause"] == "trainer_running" and refusal["job_id"] == job
        assert refusal["detail"]["holder"] == {
            **refusal["detail"]["holder"],
            "pid": orphan,
            "job_id": job,
            "restart": 0,
        }
        assert f"pid {orphan}" in logs(run)
        saved = events_of(run, "checkpoint")[-1]["step"]
        wait_for(lambda: events_of(run, "checkpoint")[-1]["step"] > saved, 60, "more saves")

        os.kill(orphan, signal.SIGKILL)  # now it dies, its lock left behind
        wait_for(lambda: not alive(orphan), 30, "the orphan's end")
        requeue_now(job)
        wait_for(lambda: job_info(job).get("JobState") == "COMPLETED", 170, "the takeover")
    finally:
        if orphan and alive(orphan):
            os.kill(orphan, signal.SIGKILL)
        subprocess.run(["scancel", job], check=False, timeout=30)
    text = logs(run)
    assert "that process is gone" in text, text
    starts = events_of(run, "start")
    assert [s["job_id"] for s in starts] == [job, job]
    assert starts[-1]["step"] > 0  # resumed from the orphan's newest checkpoint
    assert events_of(run, "stop")[-1]["reason"] == "done"
    assert not (checkpoints / trainer_lock.LOCK_FILE).exists()
    total = json.loads((run / "train.json").read_text())["total_steps"]
    chained = final_weights(checkpoints, total)
    reference = reference_weights(run / "train.json", tmp_path)
    assert all(torch.equal(chained[name], reference[name]) for name in reference)
