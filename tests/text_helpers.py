"""The names the output tests imported from here before the helpers moved (tests/builders.py,
tests/processes.py): kept so that a test written against them still imports."""

from __future__ import annotations

from tests.builders import reference_files
from tests.processes import no_slurm_env

__all__ = ["no_slurm_env", "reference_files"]
