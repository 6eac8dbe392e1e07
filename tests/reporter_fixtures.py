"""Fixtures for tests that run a jobs.report.Reporter in this process (the reporting API and
the Trainer/Lightning callbacks): import them into the test module to use them."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.contract import command_fields
from jobs.report import STOP_SIGNALS


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PLANJOB_* field or rank from the calling shell: each test sets what it means."""
    for name in [command_fields.env_name(field) for field in command_fields.FIELDS]:
        monkeypatch.delenv(name, raising=False)
    for name in ("RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A default path that a test forgot to set lands here, not in the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def restore_signal_handlers() -> Iterator[None]:
    """A Reporter replaces the stop signals' handlers (and ignores them after its stop)."""
    saved = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
