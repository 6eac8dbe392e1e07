"""Which run a checkpoint folder belongs to: a small file beside the checkpoints.

A run resumes from the newest checkpoint in checkpoint.dir, whoever wrote it. An older run's
checkpoints left there made a new run's first job load a model of another shape and fail in
seconds. `plan-job submit` claims the folder for its run (refusing one that holds another
run's checkpoints unless told to resume them) and the training claims a folder nobody has
claimed. Standard library only: the login node and the job both read it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

OWNER_FILE = ".plan-job-owner"
FORMAT = "plan-job/checkpoint-owner/v1"
# What the built-in training writes (jobs.training.checkpoint.checkpoint_path); the calibration's
# probe folders (.calibration-probe-*) are its own and never resumed from.
CHECKPOINT_RE = re.compile(r"ckpt-(\d{9,})\.pt")


@dataclass(frozen=True)
class Owner:
    run_id: str
    run_dir: str


def read_owner(folder: Path) -> Owner | None:
    try:
        raw = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or not raw.get("run_id"):
        return None
    return Owner(str(raw["run_id"]), str(raw.get("run_dir", "")))


def write_owner(folder: Path, owner: Owner) -> None:
    """Atomically, so a reader never sees half a file."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "run_id": owner.run_id, "run_dir": owner.run_dir}
    fd, tmp = tempfile.mkstemp(prefix=f".{OWNER_FILE}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(data, sort_keys=True) + "\n")
        os.replace(tmp, folder / OWNER_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def saved_files(folder: Path, any_file: bool) -> list[Path]:
    """What a run would resume from in ``folder``: the built-in training's ckpt-*.pt, or
    (``any_file``, a user's command saving in its own format) every entry but plan-job's own."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    if any_file:
        # Hidden entries are plan-job's own (this owner file, the calibration's probe folders,
        # temporaries), never a checkpoint of the command's.
        return sorted(p for p in entries if not p.name.startswith("."))
    return sorted(p for p in entries if CHECKPOINT_RE.fullmatch(p.name))
