"""Root conftest: the real Slurm test cluster fixture and `slurm` marker handling.

Kept small and free of heavy imports (no torch): every test session loads it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from tests.slurm_cluster import INSTALL_HINT, SlurmCluster, missing_binaries

# The history moves to a session folder before anything is collected, and the session fails
# if the user's own history was touched (tests/history_guard.py).
pytest_plugins = ["tests.history_guard"]

# A shell that starts the suite in the background (`cmd &`, nohup) has it ignore SIGINT, and
# every process it starts inherits that: the Ctrl-C tests would see no Ctrl-C. A handler (not
# SIG_IGN) is reset to the default in the processes the tests start.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config: pytest.Config) -> None:
    # A test named by its node id (tests/test_x.py::test_y) runs whatever its tier: the
    # default `-m "not slow"` of pyproject.toml would deselect it. A -m given on the command
    # line is kept as given.
    args = [str(arg) for arg in config.invocation_params.args]
    marker_given = any(arg == "-m" or (arg.startswith("-m") and arg[2:3] != "-") for arg in args)
    if not marker_given and any("::" in arg for arg in args):
        config.option.markexpr = ""


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A two-node fake-GPU Slurm cluster, started once per session on first request.

    While it runs, os.environ points every Slurm client (sbatch, srun, submitit) at it.
    """
    missing = missing_binaries()
    if missing:
        # Fail, never skip: the documented test command must not pass without Slurm.
        pytest.fail(
            f"Slurm test cluster: {', '.join(missing)} not found; {INSTALL_HINT}",
            pytrace=False,
        )
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm_cluster"))
    with pytest.MonkeyPatch.context() as patch:
        # An enclosing Slurm job's variables (SLURM_JOB_ID, ...) would make srun and
        # sbatch act inside that job instead of on our cluster.
        for name in [name for name in os.environ if name.startswith("SLURM_")]:
            patch.delenv(name)
        for name, value in cluster.env.items():
            patch.setenv(name, value)
        with cluster:
            yield cluster


@pytest.fixture(autouse=True)
def private_history(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """plan-job records calibrations, plans and outcomes in a history database whose
    corrections change later plans: each test gets its own (the session's, set by
    tests/history_guard.py, is what fixtures wider than a test use)."""
    folder = tmp_path_factory.mktemp("history")
    monkeypatch.setenv("PLANJOB_HISTORY", str(folder / "history.sqlite"))


# Markers that imply `slow`: the fast tier (plain `pytest`) never starts the cluster or Chromium.
SLOW_KINDS = ("slurm", "browser")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Any test using the cluster is a `slurm` test, so `-m "not slurm"` leaves it out
    # even where the author forgot the marker; and every slurm or browser test is `slow`, so
    # plain `pytest` (addopts: -m "not slow") leaves them out. tryfirst: before -m deselects.
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()) and not item.get_closest_marker(
            "slurm"
        ):
            item.add_marker(pytest.mark.slurm)
        if not item.get_closest_marker("slow") and any(
            item.get_closest_marker(kind) for kind in SLOW_KINDS
        ):
            item.add_marker(pytest.mark.slow)
