"""Shared set-ups for the tests of what plan-job prints: a machine without Slurm, and the
reference spec of tests/test_planning.py written out with its calibration record."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from planner.calibration.record import save_record
from tests.cli_helpers import cli_env, write_spec
from tests.test_planning import SPEC, record_for, spec_with


def no_slurm_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The CLI's environment on a machine without Slurm: a PATH holding no command at all
    (plan-job is started by its absolute path and needs none), so sbatch, squeue, sacct,
    scontrol and sinfo are all missing, as on a laptop."""
    empty = tmp_path / "empty-path"
    empty.mkdir(exist_ok=True)
    return cli_env({"PATH": str(empty), **extra})


def reference_files(folder: Path, **changes: Any) -> tuple[Path, Path]:
    """run.yaml (tests/test_planning.py's SPEC with ``changes``, "section__key" paths) and
    cal.yaml, its calibration record."""
    doc = copy.deepcopy(SPEC)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    spec_path = write_spec(folder, doc)
    record = record_for(spec_with(**changes))
    cal = folder / "cal.yaml"
    save_record(record, cal)
    return spec_path, cal
