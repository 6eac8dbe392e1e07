"""This calibration process and the machine it runs on, as a calibration records them: the
process's age (its start-up so far), the batch script's start before it, the CPU's name and
plan-job's version. Standard library only: both calibrations (jobs.calibration.builtin and
jobs.calibration.command) use them.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from jobs.contract.measurement import JOB_START_ENV


def process_age_s() -> float:
    """Seconds since this process started, from the kernel's own record (Linux)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat(5); two fields precede the ")" split
        ticks = os.sysconf("SC_CLK_TCK")
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / ticks
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def job_start_s(age_s: float) -> float:
    """Seconds from the batch script's start (its $PLANJOB_JOB_START) to this process's; 0.0
    when the script did not say (a local job)."""
    try:
        script_start = float(os.environ[JOB_START_ENV])
    except (KeyError, ValueError):
        return 0.0
    return max(time.time() - age_s - script_start, 0.0)


def cpu_name() -> str:
    """A readable CPU model name for the record (platform.processor() is often empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def plan_job_version() -> str:
    try:
        from importlib.metadata import version

        return version("plan-job")
    except Exception:
        return "unknown"
