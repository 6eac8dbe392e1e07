"""Where the tests find the repository and their recorded inputs: defined once."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"  # recorded Slurm outputs, user workloads and scripts
SCRIPTS = FIXTURES / "user_scripts"  # user training scripts the command mode runs
