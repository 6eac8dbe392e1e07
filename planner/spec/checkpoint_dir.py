"""checkpoint.dir, checked on the login node before anything is submitted: that it can be
written, that it has room for the checkpoints the run keeps, and whether it already holds
another run's checkpoints.

An unwritable folder (a typo, /proc/x, a read-only mount) was found only by the job, after
the calibration's timed steps; a folder holding an older run's checkpoints made a new run
resume from them. Both are cheaper to find here. The checks run where plan-job runs, so they
assume what the jobs need anyway: a checkpoint folder on a filesystem the nodes share.
Torch-free.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from jobs.contract.checkpoint_owner import Owner, read_owner, saved_files, write_owner
from planner.errors import ForeignCheckpointsError, NoSpaceError, SpecError
from planner.units import fmt_bytes

FIELD = "checkpoint.dir"


@dataclass(frozen=True)
class ForeignCheckpoints:
    folder: Path
    files: tuple[Path, ...]
    owner: Owner | None  # None: written before folders were claimed, or by hand

    def describe(self) -> str:
        whose = (
            f"of the run in {self.owner.run_dir}"
            if self.owner is not None and self.owner.run_dir
            else "of another run (it names no plan-job run)"
        )
        return (
            f"{FIELD} {self.folder} already holds {len(self.files)} checkpoint file(s) {whose}, "
            f"newest {self.files[-1].name}: the first job would resume from it"
        )


def resolve(path: str, workdir: Path) -> Path:
    folder = Path(path).expanduser()
    return folder if folder.is_absolute() else workdir / folder


def check_writable(folder: Path, source: str | None = None) -> None:
    """Create ``folder`` if needed and write a file in it; SpecError (exit 2) if either fails.

    Folders created only for the test are removed again: a refused or dry command leaves
    nothing behind.
    """
    created: list[Path] = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".plan-job-write-test.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise SpecError(
            FIELD,
            str(folder),
            f"cannot write there ({exc.strerror or exc}): the jobs save their checkpoints "
            "there; choose a folder you can write on a filesystem the nodes share",
            source,
        ) from exc
    finally:
        for path in created:  # deepest first
            with contextlib.suppress(OSError):
                path.rmdir()


def check_space(
    folder: Path,
    keep: int,
    checkpoint_bytes: int | None,
    run_id: str = "",
    any_file: bool = False,
) -> None:
    """NoSpaceError (exit 2) unless ``folder`` has room for ``keep`` + 1 checkpoints of
    ``checkpoint_bytes`` (the calibration's measured size; None or 0: unknown, not checked).

    A run keeps ``keep`` checkpoints and writes the next one whole (temp file, then rename)
    before it deletes the oldest, so keep + 1 are on disk at once. Checkpoints ``run_id``
    already has there are part of those keep + 1: only the rest must be free."""
    if not checkpoint_bytes:
        return
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return  # unreadable: check_writable says what is wrong with the folder
    owner = read_owner(folder) if folder.is_dir() else None
    own = 0
    if run_id and owner is not None and owner.run_id == run_id:
        own = sum(_size(path) for path in saved_files(folder, any_file))
    needed = max((keep + 1) * checkpoint_bytes - own, checkpoint_bytes)
    if free >= needed:
        return
    held = f", less the {fmt_bytes(own)} of this run's checkpoints there" if own else ""
    raise NoSpaceError(
        f"{FIELD} {folder}: {fmt_bytes(free)} free, {fmt_bytes(needed)} needed "
        f"({fmt_bytes(needed - free)} missing): the run keeps checkpoint.keep = {keep} "
        f"checkpoints of {fmt_bytes(checkpoint_bytes)} (the calibration's) and writes the next "
        f"before it deletes the oldest, so {keep + 1} at once{held}. Free space there, lower "
        f"checkpoint.keep, or choose another {FIELD}; nothing was written or submitted"
    )


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def foreign_checkpoints(folder: Path, run_id: str, any_file: bool) -> ForeignCheckpoints | None:
    """What in ``folder`` a run ``run_id`` would resume from though another run wrote it.

    A run id of '' (a folder emitted before runs had ids) cannot tell: None."""
    if not run_id:
        return None
    files = saved_files(folder, any_file)
    if not files:
        return None
    owner = read_owner(folder)
    if owner is not None and owner.run_id == run_id:
        return None
    return ForeignCheckpoints(folder, tuple(files), owner)


def claim(folder: Path, run_id: str, run_dir: Path) -> None:
    """Mark ``folder`` as ``run_id``'s: its jobs' checkpoints, its own to resume from."""
    if run_id:
        write_owner(folder, Owner(run_id, str(run_dir)))


def prepare_for_submission(
    run_dir: Path,
    checkpoint_dir: Path,
    run_id: str,
    any_file: bool,
    resume_foreign: bool,
    space: tuple[int, int | None] = (0, None),
) -> ForeignCheckpoints | None:
    """Before a run's first sbatch: the folder must be writable, have room for ``space``
    (checkpoint.keep, the measured checkpoint size: check_space), and hold no other run's
    checkpoints unless ``resume_foreign``; then it is claimed for this run. Returns what was
    found (and allowed), if anything."""
    check_writable(checkpoint_dir)
    check_space(checkpoint_dir, space[0], space[1], run_id, any_file)
    foreign = foreign_checkpoints(checkpoint_dir, run_id, any_file)
    if foreign is not None and not resume_foreign:
        raise ForeignCheckpointsError(
            f"{foreign.describe()}. Nothing was submitted. For a new run, move those files "
            f"away or emit again with another {FIELD}; to continue from them on purpose, "
            f"submit with --resume-foreign"
        )
    claim(checkpoint_dir, run_id, run_dir)
    return foreign


# Paths that are node-local on clusters by convention, whatever their filesystem.
NODE_LOCAL_PREFIXES = ("/tmp", "/var/tmp", "/dev/shm", "/run/user")
# Folder names sites give node-local scratch (/scratch/local, /lscratch, /local_scratch).
_LOCAL_SCRATCH_RE = re.compile(
    r"(^|/)(l|local[_-]?)scratch(/|$)|(^|/)scratch[_-]?local(/|$)|/scratch/local(/|$)", re.I
)
# Filesystems a node keeps to itself: memory, a container's layer, a local disk.
LOCAL_TYPES = {
    "tmpfs": "a tmpfs (memory of one node)",
    "ramfs": "a ramfs (memory of one node)",
    "overlay": "an overlay filesystem (a container's own layer)",
    "ext2": "a local ext2 disk",
    "ext3": "a local ext3 disk",
    "ext4": "a local ext4 disk",
    "xfs": "a local xfs disk",
    "btrfs": "a local btrfs disk",
    "f2fs": "a local f2fs disk",
    "vfat": "a local vfat disk",
}


@dataclass(frozen=True)
class Mount:
    device: str
    point: str
    fstype: str


def parse_mounts(text: str) -> list[Mount]:
    """/proc/mounts: device, mount point (spaces written \\040), type, ..."""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[1])
            mounts.append(Mount(parts[0], point, parts[2]))
    return mounts


def mount_of(folder: Path, mounts: list[Mount]) -> Mount | None:
    """The mount holding ``folder`` (its symbolic links resolved as far as they exist): the
    longest mount point above it, the last mounted where two share one."""
    path = os.path.realpath(folder)
    best: Mount | None = None
    for mount in mounts:
        point = mount.point.rstrip("/") or "/"
        inside = point == "/" or path == point or path.startswith(point + "/")
        if inside and (best is None or len(point) >= len(best.point.rstrip("/") or "/")):
            best = mount
    return best


def node_local_reason(
    folder: Path, environ: Mapping[str, str] | None = None, mounts_text: str | None = None
) -> str | None:
    """Why ``folder`` (absolute) is probably seen by one node only, or None."""
    env = os.environ if environ is None else environ
    path = str(folder)
    tmpdir = env.get("TMPDIR", "").rstrip("/")
    if tmpdir and (path == tmpdir or path.startswith(tmpdir + "/")):
        return f"under $TMPDIR ({tmpdir}), which is node-local on most clusters"
    for prefix in NODE_LOCAL_PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            return f"under {prefix}, which is node-local on most clusters"
    if _LOCAL_SCRATCH_RE.search(path):
        return "on what looks like node-local scratch"
    if mounts_text is None:
        try:
            mounts_text = Path("/proc/mounts").read_text(errors="replace")
        except OSError:
            return None
    mount = mount_of(folder, parse_mounts(mounts_text))
    if mount is not None and mount.fstype in LOCAL_TYPES:
        return f"on {LOCAL_TYPES[mount.fstype]} ({mount.device} mounted at {mount.point})"
    return None


def node_local_warning(
    folder: Path, jobs: int, nodes: int, environ: Mapping[str, str] | None = None
) -> str | None:
    """A warning when a run of several jobs or nodes keeps its checkpoints where the next
    job (or another node) may not see them; None for one job on one node."""
    if jobs <= 1 and nodes <= 1:
        return None
    reason = node_local_reason(folder, environ)
    if reason is None:
        return None
    who = []
    if jobs > 1:
        who.append(f"{jobs} jobs, each resuming from the checkpoints of the one before")
    if nodes > 1:
        who.append(f"{nodes} nodes")
    return (
        f"{FIELD} {folder} is {reason}: this run has {' on '.join(who)}, and checkpoints "
        f"written there may not be seen by the next job (or another node). Choose a folder "
        f"on a filesystem the nodes share (NFS, Lustre, GPFS, BeeGFS, CephFS...)"
    )
