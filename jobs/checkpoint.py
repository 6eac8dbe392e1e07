"""Checkpoints of model + optimizer, written atomically (temp file, fsync, rename)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jobs.workloads.base import Workload


@dataclass(frozen=True)
class CheckpointTiming:
    save_s: float
    load_s: float
    nbytes: int


def workload_state(workload: Workload, **extra: Any) -> dict[str, Any]:
    state: dict[str, Any] = {
        "model": workload.model.state_dict(),
        "optimizer": workload.optimizer.state_dict(),
        **extra,
    }
    for key, obj in workload.extra_state.items():
        state[f"extra.{key}"] = obj.state_dict() if hasattr(obj, "state_dict") else obj
    return state


def save_atomic(state: dict[str, Any], path: Path) -> int:
    """Save so that ``path`` is either the old checkpoint or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path.stat().st_size


def load_into(workload: Workload, path: Path, device: torch.device) -> dict[str, Any]:
    state = torch.load(path, map_location=device, weights_only=False)
    workload.model.load_state_dict(state["model"])
    workload.optimizer.load_state_dict(state["optimizer"])
    for key, obj in workload.extra_state.items():
        if f"extra.{key}" in state and hasattr(obj, "load_state_dict"):
            obj.load_state_dict(state[f"extra.{key}"])
    return state


def probe(workload: Workload, folder: Path, device: torch.device, sync: Any) -> CheckpointTiming:
    """One real save and load of model + optimizer, timed, then removed."""
    path = folder / "probe.pt"
    try:
        sync()
        start = time.perf_counter()
        nbytes = save_atomic(workload_state(workload), path)
        saved = time.perf_counter()
        load_into(workload, path, device)
        sync()
        loaded = time.perf_counter()
    finally:
        path.unlink(missing_ok=True)
    return CheckpointTiming(saved - start, loaded - saved, nbytes)
