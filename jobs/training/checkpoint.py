"""Checkpoints of model + optimizer, written atomically (temp file, fsync, rename) with a
checksum inside (jobs.training.checksum), and the numbered checkpoints of a training run's
folder."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jobs.training import checksum
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
        state[f"extra.{key}"] = _state_of(obj)
    return state


def _state_of(obj: Any) -> Any:
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    return obj.state_dict() if hasattr(obj, "state_dict") else obj


def global_rng_state(device: torch.device) -> dict[str, Any]:
    """torch's global RNGs (CPU, and the device's when it is a GPU), to save with the run."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_global_rng_state(state: dict[str, Any], device: torch.device) -> None:
    # RNG states must be CPU byte tensors, whatever map_location did to them.
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def rank_rng_state(workload: Workload, device: torch.device) -> dict[str, Any]:
    """The RNG states that differ between data-parallel ranks: torch's global RNGs and the
    workload's stream generators. Rank 0 gathers every rank's into the checkpoint."""
    streams = {
        key: obj.get_state()
        for key, obj in workload.extra_state.items()
        if isinstance(obj, torch.Generator)
    }
    return {"global": global_rng_state(device), "streams": streams}


def set_rank_rng_state(workload: Workload, state: dict[str, Any], device: torch.device) -> None:
    set_global_rng_state(state["global"], device)
    for key, saved in state["streams"].items():
        obj = workload.extra_state.get(key)
        if not isinstance(obj, torch.Generator):
            raise ValueError(f"the checkpoint has RNG stream {key!r}, the workload has none")
        obj.set_state(saved.cpu())


def weights_sum(model: torch.nn.Module) -> float:
    """A fingerprint of the weights: the sum of all parameters, in float64."""
    with torch.no_grad():
        sums = [param.detach().double().sum() for param in model.parameters()]
        return float(torch.stack(sums).sum().item()) if sums else 0.0


def saved_world_size(state: dict[str, Any]) -> int:
    """How many ranks wrote the checkpoint; those from before data parallelism had one."""
    return int(state.get("world_size", 1))


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"ckpt-{step:09d}.pt"


_NAME = re.compile(r"ckpt-(\d{9,})\.pt")


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """The run's checkpoints as (step, path), newest first; [] when the folder is missing."""
    if not folder.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if (match := _NAME.fullmatch(path.name))
    ]
    return sorted(found, reverse=True)


def prune(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for _, path in list_checkpoints(folder)[keep:]:
        path.unlink(missing_ok=True)


def remove_stale_temporaries(folder: Path) -> None:
    """A job killed during save_atomic leaves its temp file behind: as big as a checkpoint."""
    for path in folder.glob(".ckpt-*.pt.tmp-*"):
        path.unlink(missing_ok=True)


def save_atomic(state: dict[str, Any], path: Path) -> int:
    """Save so that ``path`` is either the old checkpoint or the complete new one, its
    checksum inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            writer = checksum.HashingWriter(handle)
            torch.save(state, writer)  # type: ignore[arg-type]  # write and flush suffice
            writer.finish()
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
    checksum.verify(path)  # what every resume pays, so the calibration's load time has it
    state = read_state(path, device)
    apply_state(workload, state)
    return state


def read_state(path: Path, device: torch.device | str) -> dict[str, Any]:
    """The checkpoint's contents, without touching any workload (a torn file raises here)."""
    state = torch.load(path, map_location=device, weights_only=False)
    if not isinstance(state, dict) or not {"model", "optimizer"} <= state.keys():
        raise ValueError(f"{path} is not a model + optimizer checkpoint")
    return state


def apply_state(workload: Workload, state: dict[str, Any]) -> None:
    workload.model.load_state_dict(state["model"])
    workload.optimizer.load_state_dict(state["optimizer"])
    for key, obj in workload.extra_state.items():
        saved = state.get(f"extra.{key}")
        if saved is None:
            continue
        if isinstance(obj, torch.Generator):
            obj.set_state(saved.cpu())  # a generator's state is a CPU byte tensor on any device
        elif hasattr(obj, "load_state_dict"):
            obj.load_state_dict(saved)


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
