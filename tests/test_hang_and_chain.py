"""Long runs (issue 21, the node's side): the hang watchdog of the built-in training and of a
user's command, the chain's progress guard, and the timeouts `emit` writes from the
calibration. Real `python -m jobs.train` processes on CPU; the cluster's share (two nodes,
a chain of five) is in tests/test_guards_slurm.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.contract.failure import EXIT_CHAIN_STOPPED, EXIT_HANG
from jobs.contract.hang import HangTimeouts
from jobs.contract.train_config import TrainConfig
from jobs.node import chain_guard, trainer_lock
from jobs.progress import read_progress
from planner.errors import SpecError
from planner.runs.emit import EmitOptions, emit, train_config
from planner.runs.hang_timeouts import STEP_FLOOR_S, hang_timeouts
from tests.builders import plan_for, record_for, spec_with
from tests.paths import REPO
from tests.processes import alive, new_marker, pids_with
from tests.training_runs import (
    PACED,
    command_config,
    env,
    events,
    run_command,
    run_train,
    train_json,
)


def short_timeouts(**changes: float) -> dict[str, Any]:
    """Timeouts a test can wait for: the phases under test short, the others generous."""
    base = {
        "startup_s": 120.0,
        "load_s": 60.0,
        "compile_s": 120.0,
        "step_s": 2.0,
        "save_s": 60.0,
        "eval_s": 60.0,
        "progress_s": 2.0,
        "factor": 5.0,
        "source": "a test",
    }
    return {**base, **changes}


# --- the hang watchdog -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_hung_step_ends_the_job_with_every_threads_stack_and_the_next_job_resumes(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "hung-once"
    config = train_json(
        tmp_path,
        builder_path="tests.fixtures.user_workloads:hangs_once",
        overrides={"pace_s": 0.0, "hang_at": 5, "marker": str(marker)},
        total_steps=8,
        checkpoint_interval_steps=3,
        hang_timeouts=short_timeouts(),
    )
    proc = run_train(config, extra_env={"SLURM_JOB_ID": "31"})
    assert proc.returncode == EXIT_HANG, proc.stderr
    assert marker.exists()
    assert "hang watchdog: no progress in phase 'step'" in proc.stderr
    # faulthandler's dump of every thread, the hung frame of the user's workload among them
    assert "most recent call first" in proc.stderr
    assert "user_workloads.py" in proc.stderr and "in stuck" in proc.stderr
    (hang,) = events(tmp_path, "hang")
    assert hang == {
        **hang,
        "phase": "step",
        "step": 4,
        "rank": 0,
        "job_id": "31",
        "timeout_s": 2.0,
    }
    assert hang["waited_s"] >= 2.0 and hang["host"]
    assert not (tmp_path / "ck" / trainer_lock.LOCK_FILE).exists()  # released on the way out

    again = run_train(config, extra_env={"SLURM_JOB_ID": "32"})
    assert again.returncode == 0, again.stderr
    assert events(tmp_path, "resume")[-1]["step"] == 3
    assert events(tmp_path, "stop")[-1] == {**events(tmp_path, "stop")[-1], "step": 8}


@pytest.mark.slow
def test_a_command_whose_progress_lines_stop_is_ended_with_its_stacks(tmp_path: Path) -> None:
    marker = new_marker()
    hung = tmp_path / "hung-once"
    argv = [
        sys.executable,
        str(PACED),
        "--pace",
        "0.05",
        "--hang-at",
        "5",
        "--hang-marker",
        str(hung),
        "--marker",
        marker,
    ]
    config = command_config(
        tmp_path,
        argv,
        total_steps=8,
        checkpoint_interval_steps=3,
        hang_timeouts=HangTimeouts(**short_timeouts()),
    )
    status, _out, err = run_command(tmp_path, config)
    assert status == EXIT_HANG, err
    assert "hang watchdog: no progress in phase 'progress'" in err
    # The script's own stacks (it registered jobs.node.signals.dump_stacks_on_signal, as the
    # Reporter does), asked for before it was killed.
    assert "paced_train.py" in err and "most recent call first" in err
    assert not [pid for pid in pids_with(marker) if alive(pid)]
    lines = read_progress(config.progress_path)
    (hang,) = [e for e in lines if e["event"] == "hang"]
    assert hang == {**hang, "phase": "progress", "step": 4, "rank": 0, "timeout_s": 2.0}

    status, _out, err = run_command(tmp_path, config)
    assert status == 0, err
    resumed = [e for e in read_progress(config.progress_path) if e["event"] == "resume"]
    assert resumed[-1]["step"] == 3


@pytest.mark.slow
def test_a_script_with_the_reporter_dumps_its_stacks_when_the_launcher_asks() -> None:
    code = (
        "import os, signal, time\n"
        "from jobs.report import Reporter\n"
        "rep = Reporter(total_steps=5, checkpoint_dir='ck', checkpoint_interval_steps=1)\n"
        "def where_it_is_stuck():\n"
        "    os.kill(os.getpid(), signal.SIGURG)\n"
        "    time.sleep(0.5)\n"
        "where_it_is_stuck()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "most recent call first" in proc.stderr and "in where_it_is_stuck" in proc.stderr


@pytest.mark.slow
def test_the_watchdog_is_off_without_timeouts(tmp_path: Path) -> None:
    """The same hang with train.json of an older emit (no hang_timeouts): nothing fires."""
    marker = tmp_path / "hung-once"
    config = train_json(
        tmp_path,
        builder_path="tests.fixtures.user_workloads:hangs_once",
        overrides={"pace_s": 0.0, "hang_at": 2, "marker": str(marker)},
        total_steps=4,
    )
    assert "hang_timeouts" not in json.loads(config.read_text())
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.train", str(config)],
        cwd=REPO,
        env=env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(4.0)  # twice the short step timeout above, for contrast
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.communicate()


# --- the chain's progress guard --------------------------------------------------------------


def chain_folder(tmp_path: Path, jobs: list[str], ran: list[str]) -> Path:
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    listed = [
        {
            "segment": i,
            "script": f"segment-{i:02d}.sbatch",
            "job_id": job,
            "dependency": None,
            "submitted": "2026-01-01T00:00:00+00:00",
        }
        for i, job in enumerate(jobs, start=1)
    ]
    (run_dir / "jobs.yaml").write_text(yaml.safe_dump({"jobs": listed}))
    for i, job in enumerate(ran, start=1):
        (run_dir / "logs" / f"segment-{i:02d}-{job}.out").write_text(f"log of {job}\nline 2\n")
    return run_dir


def line(event: str, job: str | None, **fields: Any) -> dict[str, Any]:
    return {"event": event, "time": 1.0, "job_id": job, **fields}


def test_segments_without_a_new_checkpoint_count_as_stalled(tmp_path: Path) -> None:
    run_dir = chain_folder(tmp_path, ["1", "2", "3", "4", "5"], ["1", "2", "3"])
    lines = [
        line("start", "1", step=0),
        line("step", None, step=1),  # stepped, but failed before its first save
        line("failure", "2", step=0, cause="import_error", message="no module x"),
    ]
    verdict = chain_guard.assess(lines, run_dir, "3")
    assert (verdict.stalled, verdict.stalled_jobs) == (2, ("1", "2"))
    assert verdict.later_jobs == ("4", "5") and verdict.previous_job == "2"
    assert verdict.last_failure == "import_error: no module x" and verdict.newest_step == 0
    assert "no checkpoint was ever saved" in chain_guard.reason(verdict)
    # A job that ran and left no line at all (a crash at import) is stalled too.
    assert chain_guard.assess(lines[:2], run_dir, "3").stalled == 2


def test_a_segment_that_saved_a_newer_checkpoint_made_progress(tmp_path: Path) -> None:
    run_dir = chain_folder(tmp_path, ["1", "2", "3", "4"], ["1", "2", "3"])
    lines = [
        line("start", "1", step=0),
        line("checkpoint", None, step=100),
        line("start", "2", step=100),
        line("checkpoint", None, step=100),  # the same step again is no progress
        line("start", "3", step=100),
        line("checkpoint", None, step=150),
    ]
    assert chain_guard.assess(lines, run_dir, "4").stalled == 0
    assert chain_guard.assess(lines[:4], run_dir, "4").stalled_jobs == ("2", "3")
    # An orphan of job 1 saving while job 2 refused: the run advanced while 2 held the slot.
    orphan = [
        *lines[:2],
        line("failure", "2", cause="trainer_running"),
        line("checkpoint", None, step=120),
    ]
    assert chain_guard.assess(orphan, run_dir, "3").stalled == 0


def test_a_chain_stopped_line_starts_the_count_afresh(tmp_path: Path) -> None:
    run_dir = chain_folder(tmp_path, ["1", "2", "3", "8", "9"], ["1", "2", "3", "8"])
    lines = [
        line("failure", "1", cause="exception"),
        line("failure", "2", cause="exception"),
        line("chain_stopped", "3", stalled=2),
        line("failure", "8", cause="exception"),  # the resubmitted chain's first job
    ]
    verdict = chain_guard.assess(lines, run_dir, "9")
    assert verdict.stalled_jobs == ("8",)


def test_without_jobs_yaml_the_segments_are_the_job_ids_in_order(tmp_path: Path) -> None:
    lines = [line("start", "5", step=0), line("start", "6", step=0)]
    verdict = chain_guard.assess(lines, tmp_path, "7")
    assert verdict.stalled_jobs == ("5", "6") and verdict.later_jobs == ()
    assert chain_guard.assess(lines, tmp_path, None).stalled == 2
    assert chain_guard.assess([line("start", None, step=0)], tmp_path, None).stalled == 0


@pytest.mark.slow
def test_the_third_stalled_segment_stops_the_chain_and_says_why(tmp_path: Path) -> None:
    """End to end in a real process: the job exits 3 before it builds anything, with a
    chain_stopped line that carries the previous job's log tail. (The cancelling of the
    later jobs is tried on the test cluster: tests/test_guards_slurm.py.)"""
    run_dir = chain_folder(tmp_path, ["41", "42", "43"], ["41", "42"])
    config = train_json(run_dir, total_steps=3)
    data = json.loads(config.read_text())
    with open(data["progress_path"], "w") as handle:  # as jobs 41 and 42 left it
        for job in ("41", "42"):
            failure = line("failure", job, step=0, cause="import_error", message="no x")
            handle.write(json.dumps(failure) + "\n")
    proc = run_train(config, extra_env={"SLURM_JOB_ID": "43"})
    assert proc.returncode == EXIT_CHAIN_STOPPED, proc.stderr
    (stopped,) = events(run_dir, "chain_stopped")
    assert stopped == {**stopped, "stalled": 2, "cancelled": [], "step": 0, "job_id": "43"}
    assert stopped["log_tail"] == ["log of 42", "line 2"]
    assert "jobs 41, 42" in stopped["reason"] and "import_error: no x" in stopped["reason"]
    assert not events(run_dir, "start")
    # max_stalled_segments 0 turns the guard off.
    off = train_json(run_dir, total_steps=3, max_stalled_segments=0)
    assert run_train(off, extra_env={"SLURM_JOB_ID": "43"}).returncode == 0


# --- the timeouts emit writes ----------------------------------------------------------------


def test_the_timeouts_are_the_calibrated_phases_times_the_factor() -> None:
    spec = spec_with(plan__max_nodes=1, plan__hang_factor=4)
    plan = plan_for(spec, record=record_for(spec, step_p99_s=5.0, checkpoint_load_s=30.0))
    hang = hang_timeouts(plan)
    assert hang is not None and hang.factor == 4
    assert plan.step_p99_s == pytest.approx(plan.step_s * 5.0)
    assert hang.step_s == pytest.approx(4 * plan.step_p99_s, abs=1e-3)
    assert (hang.save_s, hang.load_s, hang.startup_s) == (240.0, 120.0, 400.0)
    assert hang.eval_s == 60.0 and hang.compile_s == 120.0  # neither measured: the floors
    assert hang.progress_s == pytest.approx(4 * (plan.step_p99_s + 60.0), abs=1e-3)
    assert "P99 of 95 steady calibration steps" in hang.source


def test_an_older_record_gives_the_p99_from_its_step_times() -> None:
    spec = spec_with(plan__max_nodes=1)
    times = (5.0, 5.0) + (1.0,) * 97 + (3.0,)  # two warm-up steps, one slow steady one
    record = record_for(spec, step_times_s=times, warmup_steps=2, step_p99_s=0.0)
    plan = plan_for(spec, record=record)
    assert "P99 of the record's 98 steady step times" in plan.step_p99_source
    assert 1.0 < plan.step_p99_s / plan.step_s < 3.0
    fast = plan_for(
        spec, record=record_for(spec, step_mean_s=0.01, step_median_s=0.01, step_p90_s=0.01)
    )
    hang = hang_timeouts(fast)
    assert hang is not None and hang.step_s == STEP_FLOOR_S


def test_emit_writes_the_node_keys_and_hang_timeouts_off_writes_none(tmp_path: Path) -> None:
    spec = spec_with(plan__max_nodes=1, plan__max_stalled_segments=4)
    plan = plan_for(spec, record=record_for(spec, step_p99_s=1.2))
    run = emit(plan, EmitOptions(tmp_path / "run", tmp_path))
    data = json.loads(run.train_config_path.read_text())
    assert data["max_stalled_segments"] == 4 and data["checkpoint_bytes"] == 10**9
    assert data["lock_heartbeat_s"] == 30.0
    assert set(data["hang_timeouts"]) == {
        "startup_s",
        "load_s",
        "compile_s",
        "step_s",
        "save_s",
        "eval_s",
        "progress_s",
        "factor",
        "source",
    }
    assert TrainConfig.from_json(run.train_config_path.read_text()).hang_timeouts is not None
    off = spec_with(plan__max_nodes=1, plan__hang_timeouts=False)  # YAML's bare `off`
    assert off.plan.hang_timeouts == "off"
    config = train_config(plan_for(off), tmp_path, tmp_path)
    assert config.hang_timeouts is None and "hang_timeouts" not in json.loads(config.to_json())


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"plan__hang_timeouts": "sometimes"}, "plan.hang_timeouts"),
        ({"plan__hang_factor": 0.5}, "plan.hang_factor"),
        ({"plan__max_stalled_segments": -1}, "plan.max_stalled_segments"),
    ],
)
def test_bad_plan_settings_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        spec_with(**changes)


def test_a_segment_start_reads_every_event_but_only_the_last_steps(tmp_path: Path) -> None:
    """What a job reads at its start (jobs.training.preflight: keep_steps): every non-step
    event and the last few steps, in file order, as the whole parse has them; torn lines
    skipped and steps another writer formatted differently still kept."""
    from jobs.progress import ProgressWriter

    path = tmp_path / "progress.jsonl"
    with ProgressWriter(path) as writer:
        writer.start(0, 100, 0)
        for step in range(1, 31):
            writer.step(step, step * 4, None, 0.1 + step / 1000, 1.0)
            if step % 10 == 0:
                writer.checkpoint(step, 0.2, f"/c/ckpt-{step:09d}.pt", 10)
        writer.stop(30, "time_limit", None)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"event": "step", "step": 31, "ti')  # torn by a kill
        handle.write("\n" + json.dumps({"time": 1.0, "step": 32, "event": "step"}) + "\n")
    whole = read_progress(path)
    written = [i for i, e in enumerate(whole) if e["event"] == "step" and next(iter(e)) == "event"]
    assert len(written) == 30 and len(whole) == 30 + 6  # start, 3 checkpoints, stop, step 32
    for keep in (0, 1, 5, 100):
        dropped = set(written[: max(len(written) - keep, 0)])
        expected = [e for i, e in enumerate(whole) if i not in dropped]
        assert read_progress(path, keep_steps=keep) == expected, keep
    kept = [e["step"] for e in read_progress(path, keep_steps=2) if e["event"] == "step"]
    assert kept == [29, 30, 32]
