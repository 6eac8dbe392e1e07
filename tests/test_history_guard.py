"""The test suite's own history isolation (tests/history_guard.py), run on a small inner pytest
session whose "user" has a HOME of its own: a module-scoped fixture that runs plan-job writes
the session's history, not the user's; a test that reaches the user's history fails the
session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.history_guard import rows_from
from tests.paths import REPO

# Every test here starts processes or trains: the slow tier.
pytestmark = pytest.mark.slow

INNER = """
import pytest

from planner.history.database import record_calibration
from tests.builders import record_for, spec_with


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    # What a module fixture that calibrates did: record the calibration in the history, here
    # before any function-scoped fixture could move the history.
    record_calibration(record_for(spec_with()), tmp_path_factory.mktemp("cal") / "cal.yaml")


def test_uses_the_module_fixture(calibrated):
    pass
"""

CARELESS = """
import os
from pathlib import Path

from planner.history.database import record_calibration
from tests.builders import record_for, spec_with


def test_given_the_users_path(tmp_path, monkeypatch):
    users = Path(os.environ["HOME"]) / ".local/share/plan-job/history.sqlite"
    monkeypatch.setenv("PLANJOB_HISTORY", str(users))
    record_calibration(record_for(spec_with()), tmp_path / "cal.yaml")
"""

OTHERS = """
import os
from pathlib import Path

from planner.history.database import record_calibration
from tests.builders import record_for, spec_with


def test_another_tool_writes_the_users_history_meanwhile(monkeypatch):
    users = Path(os.environ["HOME"]) / ".local/share/plan-job/history.sqlite"
    monkeypatch.setenv("PLANJOB_HISTORY", str(users))
    record_calibration(record_for(spec_with()), Path(os.environ["HOME"]) / "mine.yaml")
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
    # Without the session-wide move, the fixture runs before any per-test fixture: it writes
    # the user's history (what the issue saw).
    done, users = inner_session(tmp_path / "unguarded", INNER, guard=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert rows_from(users, [Path("/")])


def test_a_session_that_touches_the_users_history_fails(tmp_path: Path) -> None:
    done, users = inner_session(tmp_path, CARELESS, guard=True)
    assert done.returncode != 0
    assert "wrote to the user's plan-job history" in done.stdout and str(users) in done.stdout
    assert "1 passed" in done.stdout  # the test itself passed: the session check failed it


def test_what_others_write_meanwhile_does_not_fail_the_session(tmp_path: Path) -> None:
    """The same user's other sessions and tools may write that history during the suite."""
    done, users = inner_session(tmp_path, OTHERS, guard=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert rows_from(users, [Path("/")])  # it was written, not by the session's own files
