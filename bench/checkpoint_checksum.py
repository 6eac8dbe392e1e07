"""What the checkpoint checksum costs: torch.save + fsync through the hashing writer that
jobs.training.checkpoint.save_atomic uses, against the same without it, and the verification
a resume adds (jobs.training.checksum.verify) against the torch.load it precedes. Figures,
the median of --runs, taken in turn; the file's pages are in the page cache after the save,
as they often are not on a cluster's shared filesystem, so the read costs here are a floor.

    .venv/bin/python bench/checkpoint_checksum.py [--mib 512] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.training import checksum


def timed(actions: list[Callable[[], object]], runs: int) -> list[float]:
    """The median time of each action, run in turn (so that a drift in the machine's speed
    or the page cache's state falls on all of them alike)."""
    times: list[list[float]] = [[] for _ in actions]
    for _ in range(runs):
        for action, found in zip(actions, times, strict=True):
            start = time.perf_counter()
            action()
            found.append(time.perf_counter() - start)
    return [statistics.median(found) for found in times]


def save(state: dict[str, object], path: Path, hashed: bool) -> None:
    with open(path, "wb") as handle:
        if hashed:
            writer = checksum.HashingWriter(handle)
            torch.save(state, writer)  # type: ignore[arg-type]
            writer.finish()
        else:
            torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="checkpoint size")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    numel = args.mib * 2**20 // 4
    state = {"model": {"w": torch.randn(numel)}, "optimizer": {}, "step": 1}
    with tempfile.TemporaryDirectory() as folder:
        plain, ours = Path(folder) / "plain.pt", Path(folder) / "ckpt-000000001.pt"
        plain_s, ours_s = timed(
            [lambda: save(state, plain, False), lambda: save(state, ours, True)],
            args.runs,
        )
        load_s, verify_s = timed(
            [lambda: torch.load(ours, weights_only=True), lambda: checksum.verify(ours)],
            args.runs,
        )
    size = args.mib / 1024
    print(f"checkpoint of {args.mib} MiB, median of {args.runs}")
    print(f"  save: plain {plain_s:.3f} s, with checksum {ours_s:.3f} s (x{ours_s / plain_s:.2f})")
    print(
        f"  load: torch.load {load_s:.3f} s, verifying before it {verify_s:.3f} s "
        f"({size / verify_s:.2f} GiB/s)"
    )


if __name__ == "__main__":
    main()
