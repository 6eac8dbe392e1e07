#!/usr/bin/env bash
# The whole test suite, as CI runs it: system packages (Slurm, munge, MariaDB), the Python
# environment, lint, the type check of planner/, then every test, the ones on the real Slurm
# cluster included (-m "" undoes the fast default of pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
bash scripts/install.sh --test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy planner jobs
# -m "": every tier, the slow one and the real Slurm cluster included (pyproject.toml's addopts
# leave the slow tier out of a plain `pytest`); a -m given here comes later and wins.
exec .venv/bin/pytest -m "" "$@"
