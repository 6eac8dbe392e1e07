"""The run's progress bar (eta --watch, submit --watch): its text, live on a terminal and a
line per change in a log, and Ctrl-C on submit --watch leaving the jobs running (real
cluster)."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from planner.cli.status_line import StatusLine
from planner.eta import report as eta_report
from planner.eta.progress_bar import Progress, bar_key, bar_text, follow, run_progress
from planner.runs.emit import EmitOptions, emit
from tests.builders import paced_spec, plan_for, spec_with, write_spec
from tests.processes import PLAN_JOB, cli_env, run_cli, wait_for_chain
from tests.progress_logs import T0, Log, wobble
from tests.slurm_cluster import SlurmCluster


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


class Terminal:
    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


class LogFile(Terminal):
    def isatty(self) -> bool:
        return False


def running(done: int, total: int = 12_500, step_s: float | None = 0.3125) -> Progress:
    finish = T0 + (total - done) * step_s if step_s else None
    return Progress(done, total, step_s, finish, T0, "running", False)


# -- the text ----------------------------------------------------------------------------------


def test_bar_text(utc: None) -> None:
    # T0 is 2023-11-14 22:13:20 UTC.
    assert bar_text(running(5_625)) == (
        "[####......] 5,625/12,500 steps 45% · 3.2 steps/s · ETA 22:49 UTC (in 35 min 48 s)"
    )
    assert bar_text(running(1_234)) == (
        "[..........] 1,234/12,500 steps 10% · 3.2 steps/s · ETA 23:12 UTC (in 58 min 41 s)"
    )
    assert bar_text(running(10, total=100, step_s=20.0)) == (
        "[#.........] 10/100 steps 10% · 20 s/step · ETA 22:43 UTC (in 30 min 00 s)"
    )
    assert bar_text(running(5, total=100, step_s=None)) == (
        "[..........] 5/100 steps 5% · ETA after the first timed steps"
    )
    long = Progress(100, 10_000, 10.0, T0 + 990_000, T0, "running", False)
    assert bar_text(long).endswith("ETA 2023-11-26 09:13 UTC (in 11 d 11 h)")
    done = Progress(20, 20, 0.5, T0 - 3600, T0, "done", True)
    assert bar_text(done) == "[##########] 20/20 steps 100% · done at 21:13 UTC (1 h 00 min ago)"
    pending = Progress(0, 950, None, None, T0, "job 12 PENDING (Priority)", False)
    assert bar_text(pending) == "[..........] 0/950 steps 0% · job 12 PENDING (Priority)"
    stopped = Progress(300, 950, 0.2, None, T0, "stopped", True)
    assert bar_text(stopped) == "[###.......] 300/950 steps 32% · 5 steps/s · stopped"


def test_live_on_a_terminal_a_line_per_change_in_a_log(utc: None) -> None:
    screen = Terminal()
    line = StatusLine(screen)
    for progress in (running(1_234), running(5_625)):
        line.show(bar_text(progress), bar_key(progress))
    line.close()
    assert screen.text.count("\r\033[K[") == 2 and screen.text.endswith(
        "ETA 22:49 UTC (in 35 min 48 s)\n"
    )
    log = LogFile()
    line = StatusLine(log)
    for progress in (running(1_234), running(1_234), running(5_625)):
        line.show(bar_text(progress), bar_key(progress))
    line.close()
    assert "\033[" not in log.text and len(log.text.splitlines()) == 2  # the repeat is dropped


def test_eta_watch_shows_the_bar_after_each_refresh() -> None:
    states = iter([False, True])

    class Fake:
        def __init__(self, over: bool) -> None:
            self.watch_over = over

    seen: list[bool] = []
    eta_report.watch(
        lambda: Fake(next(states)),  # type: ignore[arg-type,return-value]
        lambda _: "table",
        1.0,
        LogFile(),  # type: ignore[arg-type]
        sleep=lambda _: None,
        on_refresh=lambda eta: seen.append(eta.watch_over),
    )
    assert seen == [False, True]


@pytest.mark.slow
def test_cli_eta_watch_prints_the_bar(tmp_path: Path) -> None:
    Log(tmp_path / "progress.jsonl", total=20).job(0, wobble(20, 0.5), stop="done").write()
    proc = run_cli(
        ["eta", "progress.jsonl", "--watch", "1"], cwd=tmp_path, env=cli_env({"TZ": "UTC"})
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(
        r"^\[##########\] 20/20 steps 100% · done at \d{4}-\d\d-\d\d \d\d:\d\d UTC \(.* ago\)$",
        proc.stderr,
        re.M,
    ), proc.stderr
    proc = run_cli(["eta", "progress.jsonl", "--watch", "1", "--json"], cwd=tmp_path)
    assert proc.returncode == 0 and "[###" not in proc.stderr  # JSON Lines: no bar


def test_follow_a_finished_run_folder(tmp_path: Path) -> None:
    plan = plan_for(spec_with(plan__max_nodes=1))
    run = emit(plan, EmitOptions(tmp_path / "run", tmp_path)).folder
    Log(run / "progress.jsonl", total=plan.total_steps).job(
        0, wobble(plan.total_steps, 0.01), stop="done"
    ).write()
    shown: list[str] = []
    final = follow(lambda: run_progress(run), lambda p: shown.append(bar_text(p)), 1.0)
    assert final.over and final.state == "done" and len(shown) == 1
    assert shown[0].startswith(f"[##########] {plan.total_steps:,}/{plan.total_steps:,} steps 100%")


@pytest.mark.slow
def test_submit_watch_with_dry_run_is_bad_input(tmp_path: Path) -> None:
    proc = run_cli(["submit", str(tmp_path), "--dry-run", "--watch", "5"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "--watch: got 5; --dry-run submits nothing, so there is nothing to watch" in proc.stderr


# -- on the real test cluster ----------------------------------------------------------------------


def wait_for(path: Path, pattern: str, proc: subprocess.Popen[Any], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while not re.search(pattern, text := path.read_text(), re.M):
        assert proc.poll() is None, text
        assert time.monotonic() < deadline, f"no {pattern!r} within {timeout_s:.0f} s:\n{text}"
        time.sleep(0.3)
    return text


@pytest.mark.slurm
def test_submit_watch_follows_the_chain_and_ctrl_c_leaves_it_running(
    slurm_cluster: SlurmCluster, paced_calibration: Path, tmp_path: Path
) -> None:
    # 150 steps of at least 0.2 s: half a minute, one job.
    spec = write_spec(tmp_path, paced_spec(600, "watched"))
    proc = run_cli(
        ["emit", str(spec), "--calibration", str(paced_calibration), "-o", "run"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    err = tmp_path / "stderr.txt"
    with open(err, "w") as stderr:
        watcher = subprocess.Popen(
            [str(PLAN_JOB), "submit", str(run), "--watch", "1"],
            cwd=tmp_path,
            env=cli_env({"TZ": "UTC"}),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            text = wait_for(err, r"steps/s · ETA \d\d:\d\d UTC", watcher, timeout_s=120)
            watcher.send_signal(signal.SIGINT)
            out, _ = watcher.communicate(timeout=20)
        finally:
            if watcher.poll() is None:
                watcher.kill()
    text = err.read_text()
    assert watcher.returncode == 130, text
    (job_id,) = re.findall(r"submitted segment 1: job (\d+)", text)
    assert "job ids recorded in" in out
    assert f"watching {run} every 1 s; Ctrl-C stops watching, not the jobs" in text
    assert "(None)" not in text and "Error:" not in text  # squeue's empty reason; not an error
    assert re.search(
        r"^\[\.{10}\] 0/150 steps 0% · job \d+ (PENDING|RUNNING|CONFIGURING)", text, re.M
    ) or re.search(r"^\[[#.]{10}\] \d+/150 steps", text, re.M), text
    assert (
        f"stopped watching; the submitted jobs keep running: `plan-job eta {run} --watch` "
        f"watches again, `scancel {job_id}` cancels them"
    ) in " ".join(text.split())
    state = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert state in ("RUNNING", "COMPLETING"), state  # the watcher's Ctrl-C left it alone

    proc = run_cli(
        ["eta", str(run), "--watch", "1"], cwd=tmp_path, env=cli_env({"TZ": "UTC"}), timeout=150
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\[##########\] 150/150 steps 100% · done at ", proc.stderr, re.M), (
        proc.stderr
    )
    wait_for_chain([job_id], timeout_s=60)
