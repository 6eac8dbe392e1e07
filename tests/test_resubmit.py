"""plan-job resubmit and tighten: final states, the newest checkpoint, the new segments, the
refusals; Slurm's answers recorded on the test cluster. One test runs the whole story on the
real cluster: a job killed at its time limit, resubmitted, finishing with the weights of an
uninterrupted run.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from jobs.progress import read_progress
from planner.errors import RefusedError
from planner.eta.source import load_source
from planner.followup.resubmit import planned_commands, prepare, record
from planner.followup.state import inspect_run, newest_checkpoint
from planner.followup.tighten import plan_tightening
from planner.runs.inferred_outcome import infer_outcome
from planner.runs.progress import load_progress
from planner.runs.run_folder import EmitSettings, load_emit_settings, save_emit_settings
from planner.slurm.accounting import (
    job_outcomes,
    outcome_from_scontrol,
    parse_sacct_outcomes,
)
from tests.builders import PACE_S, write_spec
from tests.builders import paced_spec as shared_paced_spec
from tests.paths import FIXTURES
from tests.processes import cli_env, killed_at_one_minute, run_cli, wait_for_chain, wait_for_steps
from tests.progress_logs import STEP_S, Log, slurm_time
from tests.run_folders import FakeSlurm, accounted, running_folder, stopped_folder
from tests.slurm_cluster import SlurmCluster
from tests.training_runs import final_weights, reference_weights


@pytest.fixture
def stopped_chain(tmp_path: Path) -> Path:
    return stopped_folder(tmp_path)


@pytest.fixture
def running_chain(tmp_path: Path) -> Path:
    return running_folder(tmp_path)


# -- what Slurm says ---------------------------------------------------------------------------


def test_recorded_sacct_and_scontrol_outcomes_parse() -> None:
    outcomes = parse_sacct_outcomes((FIXTURES / "sacct_outcomes.txt").read_text())
    states = {job_id: (o.state, o.exit_code, o.elapsed_s) for job_id, o in outcomes.items()}
    assert states == {
        "1": ("FAILED", 2, 0.0),
        "2": ("CANCELLED", 0, 30.0),  # "CANCELLED by 0"
        "3": ("COMPLETED", 0, 47.0),
        "4": ("COMPLETED", 0, 2.0),
        "5": ("TIMEOUT", 0, 62.0),
    }
    assert outcomes["5"].time_limit_s == 60 and outcomes["5"].nodes == 1
    timeout = outcome_from_scontrol((FIXTURES / "scontrol_job_timeout.txt").read_text())
    assert timeout is not None
    assert (timeout.state, timeout.source, timeout.elapsed_s, timeout.time_limit_s) == (
        "TIMEOUT",
        "scontrol",
        62,
        60,
    )
    assert timeout.end_time is not None and timeout.start_time is not None


def test_without_accounting_scontrol_then_the_log_then_the_progress_file(tmp_path: Path) -> None:
    scontrol = (FIXTURES / "scontrol_job_timeout.txt").read_text()
    accounting = job_outcomes(["5"], FakeSlurm(sacct=None, jobs={"5": scontrol}))
    assert accounting.outcomes["5"].state == "TIMEOUT"
    assert accounting.outcomes["5"].source == "scontrol" and not accounting.outcomes["5"].inferred
    note = accounting.missing_note()
    assert note is not None and "accounting storage is disabled" in note and "scontrol" in note
    # Forgotten by the controller too: slurmstepd's line in the job's output tells.
    forgotten = job_outcomes(["5"], FakeSlurm(sacct=None))
    assert forgotten.outcomes == {}
    log_text = (FIXTURES / "job_timeout.out").read_text()
    from_log = infer_outcome("5", None, log_text)
    assert (from_log.state, from_log.source, from_log.inferred) == ("TIMEOUT", "job log", True)
    # No log either: a job without a stop line was killed; with one it stopped cleanly.
    log = Log(tmp_path / "p.jsonl", total=100).job(0, [1.0] * 20, job_id="5").write()
    killed = infer_outcome("5", load_progress(log).jobs[0], None)
    assert (killed.state, killed.inferred) == ("TIMEOUT", True) and "no stop line" in (
        killed.note or ""
    )
    log = Log(tmp_path / "q.jsonl", total=100).job(0, [1.0] * 20, job_id="5", stop="signal")
    clean = infer_outcome("5", load_progress(log.write()).jobs[0], None)
    assert clean.state == "COMPLETED" and "stopped cleanly" in (clean.note or "")
    oom = infer_outcome("5", None, "plan-job train: oom: CUDA out of memory at micro-batch 64")
    assert oom.state == "OUT_OF_MEMORY"


# -- the newest checkpoint ---------------------------------------------------------------------


def test_newest_checkpoint_trusts_files_over_lines(tmp_path: Path) -> None:
    log = Log(tmp_path / "p.jsonl", total=1000).job(0, [1.0] * 350, save_every=100)
    history = load_progress(log.write())
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "ckpt-000000300.pt").write_bytes(b"x")
    state = newest_checkpoint(ck, history)
    assert (state.step, state.logged_step) == (300, 300) and "also the progress" in state.note
    # Saved, then killed before its line: the file is whole (renamed into place).
    (ck / "ckpt-000000350.pt").write_bytes(b"x")
    assert newest_checkpoint(ck, history).step == 350
    # Empty: torn; the one before counts and the note says so.
    (ck / "ckpt-000000400.pt").write_bytes(b"")
    state = newest_checkpoint(ck, history)
    assert state.step == 350 and "ckpt-000000400.pt" in state.note and "no torch" in state.note
    for path in ck.iterdir():
        path.unlink()
    gone = newest_checkpoint(ck, history)
    assert gone.step == 0 and "step 300" in gone.note and "from step 0" in gone.note


# -- the new segments --------------------------------------------------------------------------


def test_new_segments_from_the_runs_own_pace(stopped_chain: Path) -> None:
    slurm = FakeSlurm(sacct=accounted())
    state = inspect_run(str(stopped_chain), slurm)
    assert state.last is not None and (state.last.job_id, state.last.state) == ("11", "NODE_FAIL")
    assert state.checkpoint.step == 900 and not state.done
    pace = state.pace
    assert pace.step_source == "run" and pace.stats.mean_s == pytest.approx(STEP_S)
    # Start-up 20 s (Slurm's start to the first step), the plan's 30 s load (no resume seen
    # yet) and its 20 s warm-up; the observed 60 s save; reserve 1.06 + 60 + 10 + 60 s.
    assert pace.resume_s == pytest.approx(70.0) and pace.save_s == pytest.approx(60.0)
    assert (pace.lead_s, pace.signal_lead_s) == (132, 72)

    resub = prepare(state, runner=slurm)
    # 3007 steps at 1.66 s (a 60 s save every 100); MaxTime 30 min leaves 1800 - 70 - 132 s:
    # 962 steps a job, so 962 x 3 + 121, the last one 70 + 121 x 1.66 + 132 s = 7 min.
    assert [s.index for s in resub.segments] == [6, 7, 8, 9]
    assert [s.steps_planned for s in resub.segments] == [962, 962, 962, 121]
    assert [s.time_limit_minutes for s in resub.segments] == [30, 30, 30, 7]
    assert resub.p50_s == pytest.approx(4 * 70 + 3007 * (STEP_S + 0.6) + 3 * 60)
    names = [name for name, _ in resub.scripts]
    assert names == [
        "segment-06.sbatch",
        "segment-07.sbatch",
        "segment-08.sbatch",
        "segment-09.sbatch",
    ]
    last = resub.scripts[-1][1]
    assert "#SBATCH --time=00:07:00\n" in last and "#SBATCH --signal=B:USR2@72\n" in last
    assert "segment 9 of 9 of run plan-test" in last
    # No emit.yaml: the working directory and Python come from the first scripts.
    assert (
        f"cd {stopped_chain.parent} || exit 1" in last
        and "/opt/venv/bin/python -m jobs.train" in last
    )
    assert planned_commands(resub)[1][-1] == str(stopped_chain / "segment-07.sbatch")
    assert "--dependency=afterany:<job id of segment-06.sbatch>" in planned_commands(resub)[1]


def test_a_job_id_leads_to_its_run_folder(stopped_chain: Path) -> None:
    recorded = (FIXTURES / "scontrol_job_timeout.txt").read_text()
    scontrol = recorded.replace("/tmp/resubmit_cluster/run dir", str(stopped_chain))  # a space
    state = inspect_run("5", FakeSlurm(sacct=accounted(), jobs={"5": scontrol}))
    assert state.run_dir == stopped_chain
    # Job 5, unknown to sacct, is the newest to have run: its state is scontrol's.
    assert state.last is not None and (state.last.job_id, state.last.state) == ("5", "TIMEOUT")


def test_emit_settings_beat_the_scripts(stopped_chain: Path, tmp_path: Path) -> None:
    settings = EmitSettings(tmp_path / "elsewhere", "/usr/bin/python3", None, 1.2, "emit.yaml")
    save_emit_settings(stopped_chain, settings)
    assert load_emit_settings(stopped_chain, []) == settings
    (stopped_chain / "emit.yaml").unlink()
    scripted = load_emit_settings(stopped_chain, sorted(stopped_chain.glob("segment-*.sbatch")))
    assert (scripted.workdir, scripted.python) == (stopped_chain.parent, "/opt/venv/bin/python")


def test_the_eta_knows_the_resubmitted_segments(stopped_chain: Path) -> None:
    slurm = FakeSlurm(sacct=accounted())
    resub = prepare(inspect_run(str(stopped_chain), slurm), runner=slurm)
    (stopped_chain / "resubmit-1.yaml").write_text(yaml.safe_dump(record(resub, [])))
    plan = load_source(str(stopped_chain)).plan
    assert plan is not None and plan.signal_lead_s == 72
    assert len(plan.segment_limits_s) == 9 and plan.segment_limits_s[5:] == (1800,) * 3 + (420,)


def test_too_few_steps_fall_back_to_the_plans_step_time(stopped_chain: Path) -> None:
    Log(stopped_chain / "progress.jsonl", total=3907).job(0, [2.0] * 12, job_id="11").write()
    state = inspect_run(str(stopped_chain), FakeSlurm(sacct=accounted()))
    assert state.pace.step_source == "plan" and state.pace.stats.mean_s == pytest.approx(STEP_S)
    assert any("fewer than 20" in note for note in state.pace.notes)


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "code", "expected"),
    [
        ("OUT_OF_MEMORY", "0:125", "Lower batch.micro_batch and raise batch.grad_accum"),
        ("FAILED", "2:0", "exit code 2"),
    ],
)
def test_failures_that_would_repeat_are_refused(
    stopped_chain: Path, state: str, code: str, expected: str
) -> None:
    slurm = FakeSlurm(sacct=accounted(state, code))
    with pytest.raises(RefusedError, match=expected):
        prepare(inspect_run(str(stopped_chain), slurm), runner=slurm)


def test_an_oom_in_the_log_of_a_failed_job_is_refused(stopped_chain: Path) -> None:
    (stopped_chain / "logs" / "segment-01-11.out").write_text(
        "plan-job train: oom: CUDA out of memory"
    )
    slurm = FakeSlurm(sacct=accounted("FAILED", "1:0"))
    with pytest.raises(RefusedError, match="ran out of memory"):
        prepare(inspect_run(str(stopped_chain), slurm), runner=slurm)


def test_running_done_nodes_and_retries_are_refused(stopped_chain: Path) -> None:
    queue = "11|RUNNING|N/A|N/A|30:00|None\n12|PENDING|N/A|N/A|30:00|Dependency\n"
    slurm = FakeSlurm(squeue=queue, sacct=accounted())
    with pytest.raises(RefusedError, match=r"still running \(job 11 RUNNING, 12 PENDING\); see"):
        prepare(inspect_run(str(stopped_chain), slurm), runner=slurm)
    slurm = FakeSlurm(sacct=accounted())
    state = inspect_run(str(stopped_chain), slurm)
    with pytest.raises(RefusedError, match="--nodes 2: the run's checkpoints were written by 4"):
        prepare(state, nodes=2, runner=slurm)
    for number in (1, 2):
        (stopped_chain / f"resubmit-{number}.yaml").write_text("number: 1\n")
    with pytest.raises(RefusedError, match="already resubmitted 2 times"):
        prepare(state, max_retries=2, runner=slurm)
    assert prepare(state, max_retries=3, runner=slurm).number == 3
    (stopped_chain.parent / "checkpoints" / "ckpt-000003907.pt").write_bytes(b"done")
    done = inspect_run(str(stopped_chain), FakeSlurm(sacct=accounted("COMPLETED")))
    with pytest.raises(RefusedError, match="nothing to do: the last job 11 ended COMPLETED"):
        prepare(done, runner=slurm)


# -- tighten -----------------------------------------------------------------------------------


def test_tighten_lowers_only_what_the_pace_allows(running_chain: Path) -> None:
    last = load_progress(running_chain / "progress.jsonl").last_time
    assert last is not None
    # Job 12 began its first step 10 s after Slurm started it (it wrote 100 steps and a save
    # since); it ends 1000 s after its newest line; 13, 14 and 15 wait with 30 minutes each.
    begin = last - 100 * STEP_S - 60
    queue = [
        f"12|RUNNING|{slurm_time(begin - 10)}|{slurm_time(last + 1000)}|30:00|None",
        *(f"{i}|PENDING|N/A|N/A|30:00|Dependency" for i in (13, 14, 15)),
    ]
    slurm = FakeSlurm(squeue="\n".join(queue))
    plan = plan_tightening(str(running_chain), slurm, now=last)
    pace = plan.pace
    # Whole seconds in squeue's times: 10 s and the fraction cut from the start.
    assert 10 <= pace.resume_s < 11 and pace.step_source == "run"
    assert [c.job_id for c in plan.changes] == ["13", "14", "15"]
    needed, spare = plan.changes[:2], plan.changes[2]
    # 30 minutes hold (1800 - 11 - 132) / 1.66 = 998 steps at P95 (constant steps, no spread):
    # 13 and 14 are needed whole, 15 finishes the run and is lowered to what that takes.
    assert [(c.steps, c.new_limit_minutes) for c in needed] == [(998, None), (998, None)]
    assert spare.steps == 3907 - plan.from_step - 2 * 998
    minutes = math.ceil((pace.resume_s + spare.steps * (STEP_S + 0.6) + 132) / 60)
    assert spare.new_limit_minutes == minutes < 30
    assert spare.argv == [
        "scontrol",
        "update",
        "JobId=15",
        f"TimeLimit=00:{minutes:02d}:00",
        f"TimeMin=00:{spare.new_min_minutes:02d}:00",
    ]
    assert not any(call[:2] == ["scontrol", "update"] for call in slurm.calls)  # planned only


# -- on the real test cluster ------------------------------------------------------------------


TOTAL = 600
INTERVAL = 50
NO_ACCOUNTING = "#!/bin/sh\necho 'sacct: error: Slurm accounting storage is disabled' >&2\nexit 1\n"


def paced_spec(samples: int) -> dict[str, Any]:
    return shared_paced_spec(samples, "resubmit", {"dir": "ck", "interval_steps": INTERVAL})


def sbatch_time(script: Path) -> str:
    match = re.search(r"^#SBATCH --time=(\S+)$", script.read_text(), re.M)
    assert match, script
    return match.group(1)


def test_a_job_killed_at_its_limit_is_resubmitted_to_the_last_step(
    slurm_cluster: SlurmCluster, paced_calibration: Path, tmp_path: Path
) -> None:
    # 600 steps, ~2 minutes of work: past a 1-minute limit even though slurmctld enforces
    # limits only every 30 s.
    spec = write_spec(tmp_path, paced_spec(4 * TOTAL))
    proc = run_cli(
        ["emit", str(spec), "--calibration", str(paced_calibration), "-o", "run"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    killed_at_one_minute(run / "segment-01.sbatch")
    proc = run_cli(["submit", str(run)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first, spare = re.findall(r"submitted segment \d: job (\d+)", proc.stderr)
    progress = run / "progress.jsonl"
    wait_for_steps(progress, 40, timeout_s=60)
    # The emitted second segment waits for the first: tighten weighs it at the run's pace.
    proc = run_cli(["tighten", str(run), "--dry-run"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "measured in the run" in proc.stdout
    assert re.search(rf"^ *{spare} +2 ", proc.stdout, re.M), proc.stdout
    subprocess.run(["scancel", spare], check=True)  # resubmit is what this test is about
    wait_for_chain([first, spare], timeout_s=150)

    # A site without accounting: the state comes from scontrol, and the output says so.
    shim = tmp_path / "no-sacct"
    shim.mkdir()
    (shim / "sacct").write_text(NO_ACCOUNTING)
    (shim / "sacct").chmod(0o755)
    env = cli_env({"PATH": f"{shim}{os.pathsep}{os.environ['PATH']}"})
    proc = run_cli(["resubmit", str(run), "--dry-run"], cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"job {first} TIMEOUT" in proc.stdout and "from scontrol" in proc.stdout, proc.stdout
    assert "no accounting (sacct: sacct: error: Slurm accounting storage is disabled)" in (
        " ".join(proc.stdout.split())
    )
    assert not (run / "segment-03.sbatch").exists()

    proc = run_cli(["resubmit", str(run)], cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"job {first} TIMEOUT (exit 0), from sacct" in proc.stdout
    (resubmitted,) = re.findall(r"submitted segment 3: job (\d+)", proc.stderr)
    record = yaml.safe_load((run / "resubmit-1.yaml").read_text())
    # The new --time is sized from the pace measured in the run, not the calibration's.
    assert record["step_source"] == "run" and PACE_S < record["step_s"] < 1.5 * PACE_S
    (segment,) = record["segments"]
    minutes = segment["time_limit_minutes"]
    assert sbatch_time(run / "segment-03.sbatch") == f"00:{minutes:02d}:00"
    work = record["resume_s"] + record["remaining_steps"] * record["step_s"] + record["lead_s"]
    assert work <= minutes * 60 < work + 60 + record["remaining_steps"] * record["step_p95_s"]
    wait_for_chain([resubmitted], timeout_s=150)

    events = read_progress(progress)
    stops = [e for e in events if e["event"] == "stop"]
    resumes = [e for e in events if e["event"] == "resume"]
    logs = "\n".join(p.read_text() for p in sorted((run / "logs").iterdir()))
    assert stops[-1]["reason"] == "done" and stops[-1]["step"] == TOTAL, logs
    reached = max(
        e["step"] for e in events if e["event"] == "step" and e["time"] < resumes[-1]["time"]
    )
    assert 0 <= reached - resumes[-1]["step"] <= INTERVAL  # at most one interval lost
    config = run / "train.json"
    resumed = final_weights(Path(yaml.safe_load(config.read_text())["checkpoint_dir"]), TOTAL)
    reference = reference_weights(config, tmp_path)
    assert all(torch.equal(resumed[name], reference[name]) for name in reference)

    proc = run_cli(["resubmit", str(run)], cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"nothing to do: the last job {resubmitted} ended COMPLETED" in proc.stderr
    proc = run_cli(["history"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "paced_linear" in proc.stdout and f"{TOTAL}/{TOTAL}" in proc.stdout
