"""Room for the run's checkpoints, checked as each segment starts. Standard library only.

A save that runs out of space fails the segment after it trained for hours, and the next
segment fails the same way. The run keeps ``checkpoint.keep`` checkpoints and writes the next
one beside them before pruning, so its folder must hold keep + 1 of them: those already there
count, the rest must fit in the free space.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from jobs.contract.failure import Refusal


def fmt_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # unreachable: the loop returns at TiB


def needed_bytes(keep: int, size: int, kept: Sequence[int]) -> int:
    """Free bytes the folder needs: keep + 1 checkpoints of ``size`` bytes, less those of the
    (newest ``keep``) checkpoints already there, and never less than one more."""
    already = sum(sorted(kept, reverse=True)[:keep])
    return max((keep + 1) * size - already, size)


def check_room(folder: Path, keep: int, size: int, kept: Sequence[int]) -> None:
    """Refusal (cause no_space, exit 2) when ``folder`` lacks room for keep + 1 checkpoints."""
    if size <= 0:
        return
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the folder may not exist before the first save
    free = shutil.disk_usage(probe).free
    needed = needed_bytes(keep, size, kept)
    if free >= needed:
        return
    raise Refusal(
        "no_space",
        f"{folder} has {fmt_bytes(free)} free, and the run needs {fmt_bytes(needed)} more to "
        f"keep checkpoint.keep + 1 = {keep + 1} checkpoints of {fmt_bytes(size)} "
        f"({len(kept)} already there): {fmt_bytes(needed - free)} missing. Free space there, "
        f"or lower checkpoint.keep, then resubmit",
        path=str(folder),
        free_bytes=free,
        needed_bytes=needed,
    )
