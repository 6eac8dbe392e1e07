"""The test suite's own history isolation (tests/history_guard.py), run on a small inner pytest
session whose "user" has a HOME of its own: a module-scoped fixture that runs plan-job writes
the session's history, not the user's; a test that reaches the user's history fails the
session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.cli_helpers import PLAN_JOB, REPO

INNER = f"""
import os, subprocess
import pytest

PLAN_JOB = {str(PLAN_JOB)!r}


@pytest.fixture(scope="module")
def history_read_once():
    # what calibrating in a module fixture did: plan-job opens (and creates) the history
    subprocess.run([PLAN_JOB, "history"], check=True, capture_output=True)


def test_uses_the_module_fixture(history_read_once):
    pass
"""

CARELESS = f"""
import os, subprocess
from pathlib import Path

def test_a_subprocess_given_the_users_path():
    users = Path(os.environ["HOME"]) / ".local/share/plan-job/history.sqlite"
    env = {{**os.environ, "PLANJOB_HISTORY": str(users)}}
    subprocess.run([{str(PLAN_JOB)!r}, "history"], check=True, capture_output=True, env=env)
"""


def inner_session(
    tmp_path: Path, text: str, guard: bool
) -> tuple[subprocess.CompletedProcess[str], Path]:
    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    (tmp_path / "test_inner.py").write_text(text)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PLANJOB_HISTORY", "XDG_DATA_HOME")}
    env.update(HOME=str(home), PYTHONPATH=str(REPO))
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inner.py"]
    if guard:
        argv[3:3] = ["-p", "tests.history_guard"]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return done, home / ".local/share/plan-job/history.sqlite"


def test_a_module_fixture_writes_the_sessions_history_not_the_users(tmp_path: Path) -> None:
    done, users = inner_session(tmp_path / "guarded", INNER, guard=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not users.parent.exists()
    # Without the session-wide move, the fixture runs before any per-test fixture: the user's
    # history is created (what the issue saw).
    done, users = inner_session(tmp_path / "unguarded", INNER, guard=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert users.is_file()


def test_a_session_that_touches_the_users_history_fails(tmp_path: Path) -> None:
    done, users = inner_session(tmp_path, CARELESS, guard=True)
    assert done.returncode != 0
    assert "wrote to the user's plan-job history" in done.stdout and str(users) in done.stdout
    assert "1 passed" in done.stdout  # the test itself passed: the session check failed it
