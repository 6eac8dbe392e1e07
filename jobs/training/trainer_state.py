"""A Hugging Face Trainer's output_dir, read from the outside. Standard library only.

At every save the Trainer writes the model weights, the optimizer, the scheduler, the RNG
state and ``trainer_state.json`` into ``output_dir/checkpoint-{global_step}/``. The
trainer_state.json carries no times, so the files' modification times are the clock: the
oldest file of a folder marks (about) when its save began, the newest when it ended.

The Trainer may be writing a folder while it is read, or deleting an old one
(``save_total_limit``): a folder without a readable trainer_state.json is skipped, and files
that vanish during the walk are ignored. The oldest mtime is when the first file *finished*,
so a save time read this way is short by the first file's write; the time between saves is
long by as much.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

STATE_FILE = "trainer_state.json"
_FOLDER_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class TrainerState:
    global_step: int
    max_steps: int  # 0 when the file does not say
    losses: tuple[tuple[int, float], ...]  # (step, training loss) from log_history, by step


@dataclass(frozen=True)
class CheckpointFolder:
    step: int  # from the folder's name (checkpoint-N)
    path: str
    save_start: float  # Unix seconds: the oldest file's mtime
    save_end: float  # Unix seconds: the newest file's mtime
    nbytes: int  # all files in it, recursively
    files: int
    state: TrainerState

    @property
    def save_s(self) -> float:
        return max(self.save_end - self.save_start, 0.0)


def folder_step(name: str) -> int | None:
    """N of a ``checkpoint-N`` folder name, else None (``tmp-checkpoint-N`` too)."""
    match = _FOLDER_RE.match(name)
    return int(match.group(1)) if match else None


def checkpoint_folders(output_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint-N folder, by step; cheap (names only). [] when the
    folder does not exist yet."""
    found: list[tuple[int, Path]] = []
    try:
        entries = list(os.scandir(output_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        step = folder_step(entry.name)
        try:
            is_dir = entry.is_dir()
        except OSError:
            continue
        if step is not None and is_dir:
            found.append((step, Path(entry.path)))
    return sorted(found)


def read_state(path: str | os.PathLike[str]) -> TrainerState | None:
    """A trainer_state.json; None when missing, torn (mid-write) or not the Trainer's."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    global_step = data.get("global_step")
    if not _is_int(global_step):
        return None
    max_steps = data.get("max_steps")
    losses: list[tuple[int, float]] = []
    history = data.get("log_history")
    for entry in history if isinstance(history, list) else ():
        # Training entries carry "loss"; evaluation ones "eval_loss", the final one
        # "train_loss": only the first is a loss at a step.
        if not isinstance(entry, dict):
            continue
        step, loss = entry.get("step"), entry.get("loss")
        if _is_int(step) and isinstance(loss, (int, float)) and math.isfinite(loss):
            losses.append((int(step), float(loss)))
    return TrainerState(
        global_step=int(global_step),
        max_steps=int(max_steps) if _is_int(max_steps) else 0,
        losses=tuple(sorted(losses)),
    )


def describe(path: str | os.PathLike[str], step: int | None = None) -> CheckpointFolder | None:
    """One checkpoint folder; None while it has no readable trainer_state.json (being
    written) or once it is gone (rotated away)."""
    path = Path(path)
    if step is None:
        step = folder_step(path.name)
        if step is None:
            return None
    state = read_state(path / STATE_FILE)
    if state is None:
        return None
    first, last, nbytes, files = math.inf, -math.inf, 0, 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                info = os.stat(os.path.join(root, name))
            except OSError:
                continue  # deleted while we walked
            first, last = min(first, info.st_mtime), max(last, info.st_mtime)
            nbytes += info.st_size
            files += 1
    if files == 0:
        return None
    return CheckpointFolder(step, str(path), first, last, nbytes, files, state)


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[CheckpointFolder]:
    """Every complete-looking checkpoint folder, by step."""
    described = (describe(path, step) for step, path in checkpoint_folders(output_dir))
    return [folder for folder in described if folder is not None]


def newest_checkpoint(output_dir: str | os.PathLike[str]) -> CheckpointFolder | None:
    """The highest-step folder holding a readable trainer_state.json (what the Trainer's
    ``resume_from_checkpoint=True`` would pick, give or take its own checks)."""
    for step, path in reversed(checkpoint_folders(output_dir)):
        folder = describe(path, step)
        if folder is not None:
            return folder
    return None


def loss_at(state: TrainerState, step: int) -> float | None:
    """The newest training loss logged at or before ``step``; None when none was."""
    best = None
    for logged, loss in state.losses:
        if logged > step:
            break
        best = loss
    return best


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
