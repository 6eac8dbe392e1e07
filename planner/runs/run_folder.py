"""The run folder `plan-job emit` writes: its file names, the marker that says plan-job wrote
it, and which folders `emit --force` may replace.

--force deletes the folder it replaces, so it must never reach a folder that holds anything
but plan-job's own files: not the working directory or one above it, not $HOME, not a folder
without the marker, not a marked folder into which someone put files of their own (a
checkpoint folder, notes). Torch-free.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from planner.errors import RunFolderExistsError, UnsafeRunFolderError

MARKER = ".plan-job-run"
MARKER_FORMAT = "plan-job/run/v1"
PLAN_FILE = "plan.yaml"
TRAIN_FILE = "train.json"
EMIT_FILE = "emit.yaml"
JOBS_FILE = "jobs.yaml"
PROGRESS_FILE = "progress.jsonl"
LOGS_DIR = "logs"
# Everything plan-job (emit, submit, resubmit, the training entry) writes into a run folder;
# ".*.tmp" are write_text_atomic's temporaries, left only by a killed writer.
OWN_NAMES = (
    MARKER,
    PLAN_FILE,
    TRAIN_FILE,
    EMIT_FILE,
    JOBS_FILE,
    PROGRESS_FILE,
    LOGS_DIR,
    "segment-*.sbatch",
    "resubmit-*.yaml",
    ".*.tmp",
)


@dataclass(frozen=True)
class RunMarker:
    run_id: str  # new at every emit: checkpoints name the run they belong to by it
    created: str

    def to_json(self) -> str:
        data = {"format": MARKER_FORMAT, "run_id": self.run_id, "created": self.created}
        return json.dumps(data, sort_keys=True) + "\n"


def new_marker() -> RunMarker:
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return RunMarker(uuid.uuid4().hex, created)


def read_marker(folder: Path) -> RunMarker | None:
    """The folder's marker; None when it has none or one plan-job did not write."""
    try:
        raw = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("format") != MARKER_FORMAT:
        return None
    if not isinstance(raw.get("run_id"), str) or not raw["run_id"]:
        return None
    return RunMarker(raw["run_id"], str(raw.get("created", "")))


def is_own_name(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in OWN_NAMES)


def protected_reason(folder: Path, cwd: Path, home: Path) -> str | None:
    """Why ``folder`` (resolved) can never be a run folder emit replaces, or None."""
    cwd, home = cwd.resolve(), home.resolve()
    if folder == cwd:
        return "it is the current directory"
    if folder in cwd.parents:
        return "it holds the current directory"
    if folder == home or folder in home.parents:
        return "it is your home directory" if folder == home else "it holds your home directory"
    return None


def check_output_folder(folder: Path, force: bool, cwd: Path, home: Path) -> None:
    """Raise unless emit may write ``folder`` (resolved): absent, empty, or with --force a
    folder holding plan-job's marker and nothing but plan-job's own files."""
    reason = protected_reason(folder, cwd, home)
    if reason is not None:
        raise UnsafeRunFolderError(
            f"-o {folder}: {reason}; emit writes a run folder of its own: choose a new "
            f"folder, e.g. -o runs/NAME"
        )
    if folder.exists() and not folder.is_dir():
        raise UnsafeRunFolderError(f"-o {folder}: is a file, not a folder; choose another -o")
    if not folder.exists() or not any(folder.iterdir()):
        return
    if not force:
        raise RunFolderExistsError(
            f"{folder} already holds a run; choose another -o folder or pass --force to "
            f"replace it (its logs and progress go with it)"
        )
    if read_marker(folder) is None:
        raise UnsafeRunFolderError(
            f"-o {folder}: --force replaces only a run folder that plan-job emit wrote (it "
            f"holds {MARKER}); this one does not, so nothing was changed: choose another -o "
            f"folder"
        )
    foreign = sorted(p.name for p in folder.iterdir() if not is_own_name(p.name))
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        shown = ", ".join(foreign[:5]) + more
        raise UnsafeRunFolderError(
            f"-o {folder}: --force would delete files plan-job did not write ({shown}); move "
            f"them out of the run folder or choose another -o folder"
        )
