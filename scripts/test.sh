#!/usr/bin/env bash
# The whole test suite, as CI runs it: system packages (Slurm, munge, MariaDB), the Python
# environment, lint, the type check of planner/, then every test, the ones on the real Slurm
# cluster included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
bash scripts/install.sh --test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy planner jobs
exec .venv/bin/pytest "$@"
