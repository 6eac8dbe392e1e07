"""pytest plugin (loaded by the root conftest): the test suite never touches the user's own
plan-job history.

plan-job records calibrations, plans and outcomes in a history database whose corrections
change later plans. A per-test fixture gave each test a private database, but a module- or
session-scoped fixture runs `plan-job calibrate` before any function-scoped fixture applies,
and so wrote into ~/.local/share/plan-job/history.sqlite. Here the history is moved for the
whole session before anything is collected ($PLANJOB_HISTORY and, for a subprocess whose
environment drops it, $XDG_DATA_HOME), and at the end the session fails if the user's
history (what plan-job would have used without the suite) was created or changed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from planner.history.database import ENV, history_path

_KEY = pytest.StashKey[tuple[Path, tuple[object, ...], Path]]()


def _state(path: Path) -> tuple[object, ...]:
    """What would show a write: the database's and its folder's existence, size and times."""
    found: list[object] = []
    for item in (path.parent, path, path.with_name(path.name + "-journal")):
        try:
            status = item.stat()
        except FileNotFoundError:
            found.append(None)
            continue
        found.append((status.st_size, status.st_mtime_ns, status.st_ino))
    return tuple(found)


def pytest_configure(config: pytest.Config) -> None:
    users = history_path()  # before the session moves it: $PLANJOB_HISTORY, XDG or ~/.local
    folder = Path(tempfile.mkdtemp(prefix="plan-job-test-history-"))
    os.environ[ENV] = str(folder / "session-history.sqlite")
    os.environ["XDG_DATA_HOME"] = str(folder / "xdg-data")
    config.stash[_KEY] = (users, _state(users), folder)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    users, before, _ = session.config.stash[_KEY]
    if _state(users) == before:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = (
        f"the test session wrote to the user's plan-job history {users} (created or changed "
        f"it): every plan-job the tests run must use $PLANJOB_HISTORY"
    )
    if reporter is not None:
        reporter.write_line(f"ERROR: {message}", red=True, bold=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    found = config.stash.get(_KEY, None)
    if found is not None:
        shutil.rmtree(found[2], ignore_errors=True)
