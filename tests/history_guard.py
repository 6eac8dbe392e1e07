"""pytest plugin (loaded by the root conftest): the test suite never touches the user's own
plan-job history.

plan-job records calibrations, plans and outcomes in a history database whose corrections
change later plans. A per-test fixture gave each test a private database, but a module- or
session-scoped fixture runs `plan-job calibrate` before any function-scoped fixture applies,
and so wrote into ~/.local/share/plan-job/history.sqlite. Here the history is moved for the
whole session before anything is collected ($PLANJOB_HISTORY and, for a subprocess whose
environment drops it, $XDG_DATA_HOME), and at the end the session fails if the user's
history (what plan-job would have used without the suite) holds a row this session wrote:
one naming a path in the session's temporary folders. Rows, not the file's time: the same
user's other sessions and tools may write that history meanwhile.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest

from planner.history.database import ENV, history_path

_KEY = pytest.StashKey[tuple[Path, Path]]()
# The columns that name a file or folder, per table (planner.history.database's schema).
_PATH_COLUMNS = {"calibrations": "path", "plans": "run_dir", "outcomes": "run_dir"}


def pytest_configure(config: pytest.Config) -> None:
    users = history_path()  # before the session moves it: $PLANJOB_HISTORY, XDG or ~/.local
    folder = Path(tempfile.mkdtemp(prefix="plan-job-test-history-"))
    os.environ[ENV] = str(folder / "session-history.sqlite")
    os.environ["XDG_DATA_HOME"] = str(folder / "xdg-data")
    config.stash[_KEY] = (users, folder)


def rows_from(history: Path, roots: list[Path]) -> list[str]:
    """Rows of ``history`` naming a path under one of ``roots`` (read-only: changes nothing)."""
    if not history.is_file():
        return []
    found = []
    db = sqlite3.connect(f"{history.resolve().as_uri()}?mode=ro", uri=True)
    try:
        for table, column in _PATH_COLUMNS.items():
            try:
                values = db.execute(f"SELECT {column} FROM {table}").fetchall()
            except sqlite3.Error:
                continue  # no such table (yet)
            for (value,) in values:
                if any(str(value).startswith(str(root)) for root in roots):
                    found.append(f"{table}: {value}")
    finally:
        db.close()
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    users, folder = session.config.stash[_KEY]
    roots = [folder]
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None:
        roots.append(factory.getbasetemp().resolve())
    found = rows_from(users, roots)
    if not found:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = (
        f"the test session wrote to the user's plan-job history {users} ({len(found)} row(s), "
        f"e.g. {found[0]}): every plan-job the tests run must use $PLANJOB_HISTORY"
    )
    if reporter is not None:
        reporter.write_line(f"ERROR: {message}", red=True, bold=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    found = config.stash.get(_KEY, None)
    if found is not None:
        shutil.rmtree(found[1], ignore_errors=True)
