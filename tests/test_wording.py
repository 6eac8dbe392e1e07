"""What a new user reads: help texts as printed, and a CPU-only plan said in CPU terms."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_helpers import run_cli

COMMANDS = ["calibrate", "plan", "emit", "submit", "eta", "resubmit", "tighten", "history"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_prints_no_escaped_percent(command: str, tmp_path: Path) -> None:
    proc = run_cli([command, "--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # click prints help as written: a "%%" meant for %-formatting shows up doubled.
    assert "%%" not in proc.stdout


def test_target_ci_help_says_95_percent(tmp_path: Path) -> None:
    proc = run_cli(["calibrate", "--help"], cwd=tmp_path)
    assert "Stop when the 95% CI half-width / mean reaches this" in " ".join(proc.stdout.split())
