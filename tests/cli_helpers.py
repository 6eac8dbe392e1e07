"""The names the CLI tests imported from here before the helpers moved to modules named for
what they do (tests/builders.py, tests/processes.py, tests/paths.py): kept so that a test
written against them still imports."""

from __future__ import annotations

from tests.builders import PACE_S, TINY_JIT, check_sane, paced_spec, user_workload, write_spec
from tests.in_process import invoke
from tests.paths import REPO
from tests.processes import PLAN_JOB, cli_env, run_cli

__all__ = [
    "PACE_S",
    "PLAN_JOB",
    "REPO",
    "TINY_JIT",
    "check_sane",
    "cli_env",
    "invoke",
    "paced_spec",
    "run_cli",
    "user_workload",
    "write_spec",
]
