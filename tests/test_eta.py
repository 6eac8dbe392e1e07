"""plan-job eta: the steady step time, the remaining time, the segment and the chain.

Progress files are written line by line with chosen times (the format of jobs.progress), so
every number can be checked by hand; one test runs a real job on the test cluster.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from jobs.calibration.stats import mser_truncation, t_quantile_975
from jobs.progress import ProgressWriter
from planner.errors import BadInputError, UnknownJobError
from planner.eta import estimate as estimator
from planner.eta import report as eta_report
from planner.eta.source import load_source
from planner.runs.progress import load_progress
from planner.shell import CommandResult
from planner.slurm.queue import (
    find_job,
    job_from_scontrol,
    parse_sacct,
    parse_slurm_time,
    parse_squeue,
    queued,
    with_end_from_env,
)
from tests.in_process import invoke
from tests.paths import FIXTURES, REPO
from tests.processes import PLAN_JOB, cli_env, run_cli
from tests.progress_logs import STEP_S, T0, Log, fake_runner, queue_text, wobble
from tests.slurm_cluster import SlurmCluster

RECORDED_DIR = "/tmp/eta_cluster/run dir"  # where the recorded Slurm outputs' job ran


# -- the step time -----------------------------------------------------------------------------


def test_warmup_after_each_start_and_resume_is_excluded(tmp_path: Path) -> None:
    first, second = [3.0] * 5 + wobble(96, 1.0), [4.0] * 5 + wobble(56, 1.0)
    log = Log(tmp_path / "progress.jsonl", total=1000)
    log.job(0, first, stop="signal").wait(40).job(101, second, load_s=2.0)
    history = load_progress(log.write())

    step = estimator.steady_step_time(history.jobs)
    assert step is not None
    assert step.warmup_cut == (5, 5)
    assert step.window == 152 and step.mean_s == pytest.approx(1.0)
    # The resumed job's warm-up: 5 steps of 4 s, 3 s each beyond the steady 1 s.
    assert step.warmup_excess_s == pytest.approx(15.0)

    eta = estimator.estimate(load_source(str(log.path)), None, now=log.t)
    assert eta.remaining is not None and eta.baseline is not None
    assert eta.remaining.steps == 838 and eta.remaining.steps_s == pytest.approx(838.0)
    # Method 2 averages the warm-ups in: (5 x 3 + 96 + 5 x 4 + 56) / 162 = 1.1790 s.
    assert eta.baseline.mean_s == pytest.approx(187 / 162)
    assert eta.baseline.remaining_s == pytest.approx(838 * 187 / 162)


def test_a_job_just_resumed_waits_until_its_warmup_can_be_told(tmp_path: Path) -> None:
    log = Log(tmp_path / "progress.jsonl", total=1000)
    log.job(0, wobble(100, 1.0), stop="signal").job(100, [5.0, 4.0, 3.0], load_s=1.0)
    step = estimator.steady_step_time(load_progress(log.write()).jobs)
    assert step is not None and not step.provisional
    assert step.mean_s == pytest.approx(1.0)  # the three slow steps are not in the window


def test_outliers_barely_move_the_estimate(tmp_path: Path) -> None:
    times = wobble(200, 1.0, 0.02)
    for index in (20, 60, 100, 140, 180):  # five stalls of 20 s
        times[index] = 20.0
    log = Log(tmp_path / "progress.jsonl", total=10_000).job(0, times)
    history = load_progress(log.write())
    step = estimator.steady_step_time(history.jobs)
    assert step is not None
    plain = sum(times) / len(times)  # 1.475 s: the stalls add 48%
    assert plain > 1.45
    assert step.mean_s == pytest.approx(1.0, rel=0.01)
    assert step.median_s == pytest.approx(1.0, rel=0.03)
    assert step.ci_high_s - step.ci_low_s < 0.05


def test_step_time_and_band_against_hand_calculation(tmp_path: Path) -> None:
    values = [1.0, 1.2, 0.8, 1.1, 0.9, 1.0, 1.3, 0.7, 1.0, 1.0]
    assert mser_truncation(values) == 0  # nothing to cut: no warm-up in these
    log = Log(tmp_path / "progress.jsonl", total=110).job(0, values)
    eta = estimator.estimate(load_source(str(log.write())), None, now=log.t)
    step, rem = eta.step_time, eta.remaining
    assert step is not None and rem is not None
    # Winsorized at 10% (one value each end): 0.7 -> 0.8 and 1.3 -> 1.2; mean 1.0,
    # sd sqrt(0.18 / 9); CI half-width t(9) sd / sqrt(10) / (1 - 2 x 0.1).
    sd = math.sqrt(0.18 / 9)
    half = t_quantile_975(9) * sd / math.sqrt(10) / 0.8
    assert step.mean_s == pytest.approx(1.0)
    assert step.sd_s == pytest.approx(sd)
    assert (step.ci_low_s, step.ci_high_s) == pytest.approx((1.0 - half, 1.0 + half))
    assert (step.p10_s, step.median_s) == pytest.approx((0.79, 1.0))  # raw, interpolated
    # 100 steps left, no checkpoint interval known: P50 = 100 x 1.0 s.
    assert rem.steps == 100 and rem.p50_s == pytest.approx(100.0)
    # P95 = P50 + 1.645 sqrt((100 sigma_mean)^2 + 100 sd^2 + (100 x 1.0 x 2%)^2).
    sigma_mean = half / 1.959963984540054
    sigma = math.sqrt((100 * sigma_mean) ** 2 + 100 * sd**2 + (100 * 0.02) ** 2)
    assert rem.p95_s == pytest.approx(100.0 + 1.6448536269514722 * sigma)
    assert eta.finish_p50 == pytest.approx(log.t + 100.0)
    assert "checkpoint interval unknown" in " ".join(eta.notes)


def test_saves_still_due_are_counted(tmp_path: Path) -> None:
    log = Log(tmp_path / "progress.jsonl", total=500)
    log.job(0, [2.0] * 100, save_every=50, save_s=4.0)
    eta = estimator.estimate(load_source(str(log.write())), None, now=log.t)
    rem = eta.remaining
    assert rem is not None
    # Saves at 150, 200, ..., 500: 8 x 4 s; the interval is read from the checkpoint lines.
    assert (rem.saves, rem.saves_s) == (8, 32.0)
    assert rem.p50_s == pytest.approx(400 * 2.0 + 32.0)
    # Constant steps: only the 2% run-to-run spread is left in the band.
    assert rem.p95_s == pytest.approx(832.0 + 1.6448536269514722 * 400 * 2.0 * 0.02)


def test_a_crashed_job_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    log = Log(tmp_path / "progress.jsonl", total=1000)
    log.job(0, wobble(130, 1.0), save_every=100, save_s=1.0)  # killed after step 130
    path = log.write()
    slurm = estimator.SlurmView(("7",), {})  # the queue knows no job of the run any more
    source = load_source(str(path))
    eta = estimator.estimate(source, slurm, now=log.t + 60)
    assert eta.status == "stopped" and eta.watch_over
    assert eta.remaining is not None and eta.remaining.from_step == 100
    assert eta.remaining.steps == 900 and eta.remaining.resumes == 1
    assert eta.finish_p50 is None
    assert "plan-job resubmit" in " ".join(eta.notes)


def test_the_real_writer_format_is_read(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    with ProgressWriter(path) as writer:
        writer.start(0, 50, 0)
        for step in range(1, 21):
            writer.step(step, step * 4, step * 64, 0.25, 1.0)
        writer.checkpoint(20, 0.5, "ck", 10)
    eta = estimator.estimate(load_source(str(path)), None)
    assert eta.status == "running" and eta.done_step == 20
    assert eta.step_time is not None and eta.step_time.mean_s == pytest.approx(0.25)
    assert eta.remaining is not None and eta.remaining.p50_s == pytest.approx(30 * 0.25)


# -- Hugging Face trainer_state.json -----------------------------------------------------------


def hf_output(folder: Path, steps: Sequence[int], mtimes: Sequence[float]) -> Path:
    state = json.loads((FIXTURES / "hf_trainer_state.json").read_text())
    for step, mtime in zip(steps, mtimes, strict=True):
        path = folder / f"checkpoint-{step}" / "trainer_state.json"
        path.parent.mkdir(parents=True)
        history = [e for e in state["log_history"] if e["step"] <= step]
        path.write_text(json.dumps({**state, "global_step": step, "log_history": history}))
        os.utime(path, (mtime, mtime))
    return folder / f"checkpoint-{steps[-1]}" / "trainer_state.json"


def test_trainer_state_paced_by_checkpoint_times(tmp_path: Path) -> None:
    newest = hf_output(tmp_path, [500, 1000, 1500], [T0, T0 + 1000, T0 + 2100])
    for target in (newest, tmp_path):  # the file, or the Trainer's output folder
        eta = estimator.estimate(load_source(str(target)), None, now=T0 + 2200)
        assert (eta.kind, eta.timing, eta.done_step, eta.total_steps) == (
            "trainer_state",
            "checkpoint_mtimes",
            1500,
            3000,
        )
        assert eta.step_time is not None and eta.remaining is not None
        # Two save intervals: 2.0 and 2.2 s a step (saves and evaluations included).
        assert eta.step_time.mean_s == pytest.approx(2.1)
        assert eta.remaining.saves == 0 and eta.remaining.p50_s == pytest.approx(1500 * 2.1)
        assert eta.finish_p50 == pytest.approx(T0 + 2100 + 1500 * 2.1)


def test_trainer_state_without_timing_says_what_it_needs(tmp_path: Path) -> None:
    lone = tmp_path / "trainer_state.json"
    shutil.copy(FIXTURES / "hf_trainer_state.json", lone)
    proc = invoke(["eta", str(lone), "--json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["done_step"], out["total_steps"], out["fraction"]) == (1500, 3000, 0.5)
    assert out["remaining"] is None and out["timing"] == "none"
    assert any("the ETA needs timing" in note for note in out["notes"])


# -- a run folder, its plan and its chain ------------------------------------------------------


def test_run_folder_segment_and_a_chain_that_falls_short(eta_run_dir: Path) -> None:
    source = load_source(str(eta_run_dir))
    last = source.history.last_time
    assert last is not None and source.plan is not None and len(source.chain) == 5
    # Whole seconds: squeue prints them.
    runner = fake_runner({"squeue": queue_text(math.floor(last), "10:00")})
    eta = estimator.estimate(source, estimator.observe_slurm(source, runner), now=last)
    seg, chain = eta.segment, eta.chain
    assert seg is not None and chain is not None
    assert eta.status == "running" and not eta.watch_over
    # The plan's stop rule: 20 s + one step + one save (81.06 s), more than the signal's 72 s.
    end = math.floor(last) + 1000
    assert seg.end_time == pytest.approx(end) and seg.stop_time == pytest.approx(end - 81.06)
    # 1.06 s a step plus a 60 s save every 100 steps: 1.66 s; (end - 81.06 - last) / 1.66.
    per_step = STEP_S + 0.6
    assert seg.stop_step_p50 == 1000 + int((end - 81.06 - last) / per_step)
    assert seg.next_checkpoint_step == 1100 and seg.next_checkpoint_in_time
    assert seg.next_checkpoint_time == pytest.approx(last + 100 * STEP_S + 60)
    # Segments 3 and 4: (1800 - 81.06 - 150 resume) / 1.66 = 945 steps each; segment 5 of
    # 10 minutes: (600 - 81.06 - 150) / 1.66 = 222. The plan's resume: start-up 100 s,
    # load 30 s and warm-up 20 s.
    expected_end = seg.stop_step_p50 + 945 + 945 + 222
    assert (chain.segments, chain.ended, chain.running, chain.pending) == (5, 1, 1, 3)
    assert not chain.enough_p50 and chain.end_step_p50 == expected_end
    assert chain.missing_steps_p50 == 3907 - expected_end
    assert chain.advice is not None and f"plan-job resubmit {eta_run_dir}" in chain.advice
    assert eta.finish_p50 is None
    table = " ".join(eta_report.eta_table(eta).split())  # wrapped at 100 columns
    assert "NOT enough" in table and "plan-job resubmit" in table


def test_run_folder_chain_that_reaches_the_end(eta_run_dir: Path) -> None:
    source = load_source(str(eta_run_dir))
    last = source.history.last_time
    assert last is not None
    runner = fake_runner({"squeue": queue_text(math.floor(last), "30:00")})
    eta = estimator.estimate(source, estimator.observe_slurm(source, runner), now=last)
    chain, rem, seg = eta.chain, eta.remaining, eta.segment
    assert chain is not None and rem is not None and seg is not None
    assert seg.stop_step_p50 is not None
    assert chain.enough_p50 and chain.finish_segment_p50 == 5 and chain.advice is None
    assert rem.resumes == 3 and rem.resume_s == pytest.approx(150.0)  # the plan's resume_s
    # Each queued job begins after the previous one's stop and stop save, runs until
    # 81.06 s before its 30-minute end; segment 5 resumes (150 s) and steps to 3907.
    per_step = STEP_S + 0.6
    begin5 = math.floor(last) + 1000 - 81.06 + 60 + 2 * (1800 - 81.06 + 60)
    steps_left = 3907 - (seg.stop_step_p50 + 945 + 945)
    assert eta.finish_p50 == pytest.approx(begin5 + 150 + steps_left * per_step)
    assert eta.finish_p95 is not None and eta.finish_p95 > eta.finish_p50


def test_run_folder_without_slurm_uses_the_plan(eta_run_dir: Path) -> None:
    source = load_source(str(eta_run_dir))
    eta = estimator.estimate(source, estimator.SlurmView(("11",), {}, "squeue failed"))
    rem = eta.remaining
    assert rem is not None and eta.segment is None and eta.chain is None
    # Two jobs seen of five planned: three resumes at the plan's 150 s.
    assert rem.resumes == 3 and rem.resumes_s == pytest.approx(450.0)
    assert any("not checked: squeue failed" in note for note in eta.notes)


# -- Slurm answers (recorded on the test cluster) ----------------------------------------------


def recorded(name: str, run: Path) -> str:
    return (FIXTURES / name).read_text().replace(RECORDED_DIR, str(run))


def test_slurm_outputs_parse() -> None:
    job = job_from_scontrol((FIXTURES / "scontrol_job_running.txt").read_text())
    assert (job.job_id, job.state, job.time_limit_s) == ("1", "RUNNING", 120)
    assert job.script == f"{RECORDED_DIR}/segment-01.sbatch"  # a path with a space
    assert job.workdir == RECORDED_DIR
    assert job.end_time == parse_slurm_time("2026-11-24T00:13:35")
    pending = job_from_scontrol((FIXTURES / "scontrol_job_pending.txt").read_text())
    assert pending.state == "PENDING" and pending.end_time is None and pending.active
    queue = parse_squeue((FIXTURES / "squeue_chain.txt").read_text())
    assert queue["1"].running and queue["1"].time_limit_s == 120
    assert queue["2"].reason == "Dependency" and queue["2"].start_time is None
    accounted = parse_sacct((FIXTURES / "sacct_jobs.txt").read_text())
    assert accounted["1"].state == "COMPLETED" and not accounted["1"].active
    assert accounted["2"].script == f"{RECORDED_DIR}/segment-01.sbatch"  # made absolute


def test_end_time_inside_the_job_comes_from_its_variable() -> None:
    job = parse_squeue((FIXTURES / "squeue_chain.txt").read_text())["1"]
    env = {"SLURM_JOB_ID": "1", "SLURM_JOB_END_TIME": "1800000000"}
    assert with_end_from_env(job, env).end_time == 1_800_000_000
    assert with_end_from_env(job, {**env, "SLURM_JOB_ID": "2"}) == job  # another job's


def test_a_job_id_leads_to_its_run_folder(eta_run_dir: Path) -> None:
    runner = fake_runner({"scontrol": recorded("scontrol_job_running.txt", eta_run_dir)})
    source = load_source("1", runner=runner)
    assert source.run_dir == eta_run_dir and source.job is not None
    assert source.history.total_steps == 3907
    # Forgotten by the controller: sacct's working directory and submit line.
    runner = fake_runner({"scontrol": "", "sacct": recorded("sacct_jobs.txt", eta_run_dir)})
    assert load_source("1", runner=runner).run_dir == eta_run_dir


def test_unknown_job_id_is_bad_input() -> None:
    with pytest.raises(UnknownJobError, match="job 42: Slurm does not know it"):
        find_job("42", fake_runner({}))


def test_squeue_that_knows_none_of_the_jobs_means_they_ended() -> None:
    def run(argv: Sequence[str]) -> CommandResult:
        from planner.errors import CommandError

        raise CommandError(list(argv), 1, "", "slurm_load_jobs error: Invalid job id specified")

    assert queued(["5"], run) == {}


# -- the command line --------------------------------------------------------------------------


def test_cli_table_and_json(tmp_path: Path) -> None:
    log = Log(tmp_path / "progress.jsonl", total=1000)
    log.job(0, [3.0] * 5 + wobble(95, 1.0), save_every=50, save_s=2.0)
    log.write()
    proc = invoke(["eta", "progress.jsonl"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for label in ("progress", "step time", "remaining", "finish P50", "seed method 2"):
        assert label in proc.stdout
    assert "10.0%: step 100 of 1,000" in proc.stdout
    proc = invoke(["eta", "progress.jsonl", "--json"], cwd=tmp_path)
    out = json.loads(proc.stdout)
    assert out["step_time"]["mean_s"] == pytest.approx(1.0, rel=1e-3)
    assert out["remaining"]["p50_s"] == pytest.approx(900 + 18 * 2.0, rel=1e-3)
    assert out["finish_p50_local"] is not None


@pytest.mark.parametrize(
    ("target", "content", "expected"),
    [
        ("missing.jsonl", None, "missing.jsonl: no such file or folder, and not a Slurm job id"),
        ("progress.jsonl", "", "no progress lines"),
        ("progress.jsonl", "not json\n", "no progress lines"),
        ("folder", "dir", "not a run folder"),
        ("987654321", None, "job 987654321"),
    ],
)
def test_cli_bad_targets_exit_2(
    tmp_path: Path, target: str, content: str | None, expected: str
) -> None:
    if content == "dir":
        (tmp_path / target).mkdir()
    elif content is not None:
        (tmp_path / target).write_text(content)
    proc = invoke(["eta", target], cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stderr
    assert "pass" in proc.stderr.lower()  # and says what to pass instead


@pytest.mark.slow
def test_cli_watch_ends_when_the_run_is_done(tmp_path: Path) -> None:
    Log(tmp_path / "progress.jsonl", total=20).job(0, wobble(20, 0.5), stop="done").write()
    proc = run_cli(["eta", "progress.jsonl", "--watch", "1"], cwd=tmp_path, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "100.0%: step 20 of 20 (done)" in proc.stdout


@pytest.mark.slow
def test_cli_watch_redraws_until_ctrl_c(tmp_path: Path) -> None:
    Log(tmp_path / "progress.jsonl", total=2000, t=time.time() - 60).job(0, wobble(50, 1.0)).write()
    out_path = tmp_path / "out.txt"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            [str(PLAN_JOB), "eta", "progress.jsonl", "--watch", "1"],
            cwd=tmp_path,
            env=cli_env(),
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while out_path.read_text().count("finish P50") < 2:
                assert time.monotonic() < deadline and proc.poll() is None, "no second block"
                time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    # Not a terminal: one block after another, no escape codes.
    assert "\033[" not in out_path.read_text()


def test_watch_loop_redraws_in_place_on_a_terminal() -> None:
    class Terminal:
        text = ""

        def isatty(self) -> bool:
            return True

        def write(self, text: str) -> None:
            self.text += text

        def flush(self) -> None:
            pass

    class Done:
        def __init__(self, over: bool) -> None:
            self.watch_over = over

    states = iter([Done(False), Done(False), Done(True)])
    screen: Any = Terminal()
    sleeps: list[float] = []
    eta_report.watch(lambda: next(states), lambda _: "block", 5.0, screen, sleeps.append)
    assert screen.text.count("\033[H\033[2J") == 3 and sleeps == [5.0, 5.0]


def test_a_progress_file_without_start_line_needs_total_steps(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"event": "step", "time": T0, "step": 1, "step_s": 1.0}) + "\n")
    with pytest.raises(
        BadInputError, match="no `start` line gives total_steps; pass --total-steps"
    ):
        load_source(str(path))
    assert load_source(str(path), total_steps=10).history.total_steps == 10


# -- on the real test cluster ------------------------------------------------------------------


PACED_WRITER = """
import sys, time
from jobs.progress import ProgressWriter
with ProgressWriter(sys.argv[1]) as writer:
    writer.start(0, 40, 0)
    for step in range(1, 41):
        begin = time.perf_counter()
        time.sleep(0.2)
        writer.step(step, step, step, time.perf_counter() - begin, 1.0)
    writer.stop(40, "done")
"""


def steps_logged(path: Path) -> int:
    try:
        return sum('"event": "step"' in line for line in path.read_text().splitlines())
    except FileNotFoundError:
        return 0


def test_eta_of_a_running_job_on_the_cluster(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    run = tmp_path / "run folder"
    run.mkdir()
    progress = run / "progress.jsonl"
    (run / "train.json").write_text(json.dumps({"progress_path": str(progress), "total_steps": 40}))
    (run / "writer.py").write_text(PACED_WRITER)
    script = run / "segment-01.sbatch"
    script.write_text(
        "#!/bin/bash\n"
        "#SBATCH --partition=gpu\n#SBATCH --time=2\n"
        f"#SBATCH --output={json.dumps(str(run / 'segment-01-%j.out'))}\n"
        f"export PYTHONPATH={REPO}\n"
        f"exec {sys.executable} {json.dumps(str(run / 'writer.py'))} {json.dumps(str(progress))}\n"
    )
    job_id = subprocess.run(
        ["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True
    ).stdout.strip()
    deadline = time.monotonic() + 30
    while steps_logged(progress) < 12:  # past MIN_JOB_STEPS: warm-up can be cut
        assert time.monotonic() < deadline, "the job wrote no steps"
        time.sleep(0.2)
    proc = run_cli(["eta", job_id, "--json"], cwd=tmp_path, timeout=30)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    squeue_end = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%e"], capture_output=True, text=True
    ).stdout.strip()
    assert out["run_dir"] == str(run) and out["total_steps"] == 40
    assert out["status"] == "running" and out["segment"]["job_id"] == job_id
    assert out["segment"]["end_time"] == parse_slurm_time(squeue_end)
    assert out["segment"]["finishes_run"] is True and not out["step_time"]["provisional"]
    assert 0.15 < out["step_time"]["mean_s"] < 0.5
    left = 40 - out["done_step"]
    assert out["remaining"]["p50_s"] == pytest.approx(left * out["step_time"]["mean_s"])
    assert time.time() - 5 < out["finish_p50"] < time.time() + 20
    table = run_cli(["eta", str(run)], cwd=tmp_path, timeout=30).stdout
    assert f"job {job_id} RUNNING" in table or "(done)" in table
