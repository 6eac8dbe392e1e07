"""plan-job eta says when the run finishes as a date, a time and its zone, and how far off
("2023-11-14 22:30 UTC (in 15 min 26 s)"); the moment of asking is the row "now", not the
header, where it read as the ETA.

The golden file is regenerated only on request:

    PLANJOB_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/test_eta_text.py
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from planner.clock import moment_text, short_moment_text
from planner.eta import estimate as estimator
from planner.eta.report import eta_table
from planner.eta.source import load_source
from tests.in_process import invoke
from tests.processes import cli_env
from tests.progress_logs import T0, Log, wobble

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture
def zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is UTC unless a test sets TZ; restored after."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def running_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    log = Log(tmp_path / "progress.jsonl", total=1000)
    log.job(0, [3.0] * 5 + wobble(95, 1.0), save_every=50, save_s=2.0)
    log.write()
    return "progress.jsonl"


def test_moments_carry_date_zone_and_distance(zone: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert moment_text(T0 + 7800, T0) == "2023-11-15 00:23 UTC (in 2 h 10 min)"
    assert moment_text(T0 - 65, T0) == "2023-11-14 22:12 UTC (1 min 05 s ago)"
    assert moment_text(None, T0) == "unknown"
    assert short_moment_text(T0 + 3480, T0) == "23:11 UTC (in 58 min 00 s)"
    assert short_moment_text(T0 + 86400, T0) == "2023-11-15 22:13 UTC (in 24 h 00 min)"
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    assert moment_text(T0 + 7800, T0) == "2023-11-15 01:23 CET (in 2 h 10 min)"


def test_eta_table_golden(zone: None, running_log: str) -> None:
    source = load_source(running_log)
    last = source.history.last_time
    assert last is not None
    text = eta_table(estimator.estimate(source, None, now=last + 10), width=100)
    lines = text.splitlines()
    assert lines[0].split() == ["eta", "progress.jsonl"]
    assert lines[2].split(maxsplit=1) == ["now", "2023-11-14 22:15:24 UTC"]
    golden = GOLDEN / "eta-table.txt"
    if os.environ.get("PLANJOB_REGENERATE_GOLDEN") == "1":
        golden.write_text(text + "\n")
        pytest.fail(f"regenerated {golden}: review `git diff` and commit it")
    assert text + "\n" == golden.read_text(), (
        "the eta table changed; if on purpose, regenerate with PLANJOB_REGENERATE_GOLDEN=1 "
        "and review the diff"
    )


def test_a_finished_run_says_when(zone: None, tmp_path: Path) -> None:
    Log(tmp_path / "p.jsonl", total=20).job(0, wobble(20, 0.5), stop="done").write()
    source = load_source(str(tmp_path / "p.jsonl"))
    last = source.history.last_time
    assert last is not None
    text = eta_table(estimator.estimate(source, None, now=last + 3600), width=100)
    assert "finished       2023-11-14 22:13 UTC (1 h 00 min ago)" in text
    assert "finish P50" not in text


def test_cli_rows_and_json(tmp_path: Path) -> None:
    log = Log(tmp_path / "progress.jsonl", total=1000, t=time.time() - 100)
    log.job(0, [3.0] * 5 + wobble(95, 1.0), save_every=50, save_s=2.0)
    log.write()
    env = cli_env({"TZ": "UTC"})
    proc = invoke(["eta", "progress.jsonl"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^now +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$", proc.stdout, re.M)
    p50 = re.search(
        r"^finish P50 +\d{4}-\d\d-\d\d \d\d:\d\d UTC \(in 1\d min \d\d s\)$", proc.stdout, re.M
    )
    assert p50, proc.stdout
    assert re.search(r"^finish P95 +\d{4}-\d\d-\d\d \d\d:\d\d UTC \(in ", proc.stdout, re.M)
    proc = invoke(["eta", "progress.jsonl", "--json"], cwd=tmp_path, env=env)
    out = json.loads(proc.stdout)
    assert out["now_local"].endswith("+00:00") and out["finish_p50_local"].endswith("+00:00")
