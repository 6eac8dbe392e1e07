"""The run folder `plan-job emit` writes, and the one module that knows its files:

    .plan-job-run        the marker, written last: plan-job wrote this folder (and its run id)
    plan.yaml            the Plan as Plan.to_dict() gives it: read back whole (load_plan) or,
                         tolerantly, as the numbers the ETA needs (read_plan_facts)
    train.json           what the training entry reads (jobs.contract.train_config.TrainConfig)
    emit.yaml            what emit was told that the plan does not know (EmitSettings)
    segment-NN.sbatch    one Slurm job each (planner.runs.emit renders them)
    jobs.yaml            the chain's job ids, as submit and resubmit recorded them
    resubmit-K.yaml      what each `plan-job resubmit` decided
    progress.jsonl       the training's progress lines (jobs.progress writes them on the nodes)
    logs/                the jobs' output, logs/segment-NN-JOBID.out

Everything else reads and writes these through the functions here (OWN_NAMES: what
`emit --force` may delete, planner.runs.emit.check_output_folder). Torch-free.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import math
import re
import shlex
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from jobs.contract.train_config import TrainConfig
from planner.atomic import write_text_atomic
from planner.errors import BadInputError, NotARunFolderError, PlanFileError, PlanJobError, shown
from planner.model.plan import Plan, PlanFacts, Segment
from planner.shell import command_text
from planner.yaml_input import YamlInputError, load_yaml, read_text

MARKER = ".plan-job-run"
MARKER_FORMAT = "plan-job/run/v1"
PLAN_FILE = "plan.yaml"
TRAIN_FILE = "train.json"
EMIT_FILE = "emit.yaml"
JOBS_FILE = "jobs.yaml"
PROGRESS_FILE = "progress.jsonl"
LOGS_DIR = "logs"
SEGMENT_GLOB = "segment-*.sbatch"
RESUBMIT_GLOB = "resubmit-*.yaml"
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
    SEGMENT_GLOB,
    RESUBMIT_GLOB,
    ".*.tmp",
)
_SCRIPT_RE = re.compile(r"^segment-(\d+)\.sbatch$")


# --- the folder: its marker, its scripts, its logs -----------------------------------------


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


def write_run_files(
    folder: Path,
    plan: Plan,
    config: TrainConfig,
    settings: EmitSettings,
    scripts: Mapping[str, str],
    marker: RunMarker,
) -> None:
    """Fill a new, empty folder (emit's staging folder): logs/, plan.yaml, train.json,
    emit.yaml, the scripts, and last the marker: a folder holds it only once it is whole."""
    (folder / LOGS_DIR).mkdir()
    write_text_atomic(folder / PLAN_FILE, yaml.safe_dump(plan.to_dict(), sort_keys=False))
    write_text_atomic(folder / TRAIN_FILE, config.to_json() + "\n")
    write_text_atomic(folder / EMIT_FILE, emit_settings_text(settings))
    write_scripts(folder, scripts)
    write_text_atomic(folder / MARKER, marker.to_json())


def write_scripts(folder: Path, scripts: Mapping[str, str]) -> None:
    """segment-NN.sbatch files by name, executable."""
    for name, text in scripts.items():
        write_text_atomic(folder / name, text, mode=0o755)


def script_name(index: int) -> str:
    return f"segment-{index:02d}.sbatch"


def script_index(path: Path) -> int:
    """NN of segment-NN.sbatch; 0 for any other name."""
    match = _SCRIPT_RE.match(path.name)
    return int(match.group(1)) if match else 0


def segment_scripts(folder: Path) -> list[Path]:
    scripts = sorted(folder.glob(SEGMENT_GLOB))
    if not scripts:
        raise NotARunFolderError(
            f"{folder}: no {SEGMENT_GLOB} here; write them first with "
            f"`{command_text('plan-job', 'emit', 'SPEC', '--calibration', 'CAL', '-o', folder)}`"
        )
    return scripts


def log_pattern(run_dir: Path, index: int) -> Path:
    """The --output of segment ``index``'s jobs (%j: the job id)."""
    return run_dir / LOGS_DIR / f"segment-{index:02d}-%j.out"


def job_log_path(run_dir: Path, job_id: str) -> Path | None:
    """The output file of job ``job_id`` (logs/segment-NN-JOBID.out), if it is there."""
    paths = sorted((run_dir / LOGS_DIR).glob(f"*-{job_id}.out"))
    return paths[-1] if paths else None


def is_own_name(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in OWN_NAMES)


# --- plan.yaml ------------------------------------------------------------------------------


def load_plan(run_dir: Path) -> Plan:
    """plan.yaml as the Plan emit wrote; PlanFileError when it is missing or not that."""
    path = run_dir / PLAN_FILE
    try:
        raw = load_yaml(read_text(path))
    except OSError as exc:
        raise PlanFileError(
            f"{path}: cannot read ({exc.strerror}); resubmit needs a run folder written by "
            f"`plan-job emit`"
        ) from exc
    except YamlInputError as exc:
        raise PlanFileError(f"{path}: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("spec"), dict):
        raise PlanFileError(f"{path}: not the plan.yaml `plan-job emit` writes (no spec)")
    try:
        return Plan.from_dict(raw, str(path))
    except (TypeError, KeyError, ValueError) as exc:
        raise PlanFileError(
            f"{path}: written by another plan-job version, or edited ({exc}); emit the run "
            f"again with this version"
        ) from exc
    except PlanJobError as exc:
        raise PlanFileError(f"{path}: its spec no longer validates: {exc}") from exc


def read_plan_facts(path: Path) -> PlanFacts | None:
    """The numbers the ETA needs from the plan.yaml at ``path``; None when there is none.
    Tolerant where load_plan is strict: another version's plan.yaml gives what it has."""
    try:
        raw = load_yaml(read_text(path))
    except (OSError, YamlInputError):
        return None
    return PlanFacts.from_plan_dict(raw) if isinstance(raw, dict) else None


def plan_facts(run_dir: Path) -> PlanFacts | None:
    """read_plan_facts of the folder's plan.yaml, with the segments `plan-job resubmit` added
    since (numbered after the plan's) and the newest one's signal lead."""
    plan = read_plan_facts(run_dir / PLAN_FILE)
    added, lead = resubmitted_segments(run_dir)
    if plan is not None and added:
        limits = plan.segment_limits_s + tuple(s.time_limit_minutes * 60 for s in added)
        plan = replace(plan, segment_limits_s=limits, signal_lead_s=lead or plan.signal_lead_s)
    return plan


# --- train.json and progress.jsonl ----------------------------------------------------------


def checkpoint_interval(train: Mapping[str, Any], plan: PlanFacts | None) -> int | None:
    """The run's checkpoint interval in steps: train.json's (what its jobs save at), else
    plan.yaml's (the plan stores it once, in its checkpoint choice); None when neither tells."""
    steps = _positive_steps(train.get("checkpoint_interval_steps"))
    if steps is not None:
        return steps
    if plan is not None and plan.checkpoint_interval_steps:
        return plan.checkpoint_interval_steps
    return None


def _positive_steps(value: object) -> int | None:
    # NaN, infinities, counts past 64 bits and intervals below 1 are damage: read as missing.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if math.isfinite(value) and 1 <= value < 2**63 else None


def load_train_config(run_dir: Path, advice: str = "") -> TrainConfig:
    """train.json; NotARunFolderError (its path, the reason, then ``advice``) if unusable."""
    path = run_dir / TRAIN_FILE
    try:
        return TrainConfig.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NotARunFolderError(f"{path}: not a usable train config ({exc}){advice}") from exc


def read_train_json(run_dir: Path) -> dict[str, Any]:
    """train.json's fields as written, for readers that go on without it ({} if unreadable)."""
    try:
        data = json.loads((run_dir / TRAIN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def progress_candidates(run_dir: Path, train: Mapping[str, Any]) -> list[Path]:
    """Where the run's progress file may be: train.json's progress_path, then the folder's
    own progress.jsonl (a run folder moved since emit: its progress file moved with it)."""
    named = train.get("progress_path")
    candidates = [Path(named)] if isinstance(named, str) and named else []
    return [*candidates, run_dir / PROGRESS_FILE]


def progress_path(run_dir: Path, train: Mapping[str, Any]) -> Path | None:
    """The run's progress file: the first candidate that exists; in a run folder whose job
    has not written yet, the file it will write; None when ``run_dir`` is no run folder."""
    candidates = progress_candidates(run_dir, train)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    is_run = bool(train) or (run_dir / PLAN_FILE).is_file() or any(run_dir.glob(SEGMENT_GLOB))
    return candidates[0] if is_run else None


# --- emit.yaml ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmitSettings:
    workdir: Path
    python: str
    template: Path | None
    correction: float | None  # the history correction the plan carried (None: none)
    source: str  # emit.yaml, or the script it was read from


def emit_settings_text(settings: EmitSettings) -> str:
    data = {
        "workdir": str(settings.workdir),
        "python": settings.python,
        "template": str(settings.template) if settings.template else None,
        "correction": settings.correction,
    }
    return yaml.safe_dump(data, sort_keys=False)


def save_emit_settings(run_dir: Path, settings: EmitSettings) -> None:
    write_text_atomic(run_dir / EMIT_FILE, emit_settings_text(settings))


def load_emit_settings(run_dir: Path, scripts: list[Path]) -> EmitSettings:
    """emit.yaml, else the working directory and Python of the newest script (folders
    emitted before emit.yaml existed have both in their `cd` line and srun command)."""
    path = run_dir / EMIT_FILE
    try:
        raw = load_yaml(read_text(path))
    except (OSError, YamlInputError):
        raw = None  # damaged or absent: the scripts tell the same
    if isinstance(raw, dict) and raw.get("workdir") and raw.get("python"):
        template = raw.get("template")
        correction = raw.get("correction")
        return EmitSettings(
            Path(raw["workdir"]),
            str(raw["python"]),
            Path(template) if template else None,
            float(correction) if isinstance(correction, int | float) else None,
            EMIT_FILE,
        )
    for script in reversed(scripts):
        found = _settings_in_script(script)
        if found is not None:
            return found
    raise PlanFileError(
        f"{run_dir}: no {EMIT_FILE} and no segment script with plan-job's `cd` line and srun "
        f"command, so the jobs' working directory and Python are unknown; emit the run again"
    )


def _settings_in_script(script: Path) -> EmitSettings | None:
    try:
        lines = script.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    workdir = python = None
    for line in lines:
        try:
            if line.startswith("cd ") and line.endswith("|| exit 1"):
                workdir = shlex.split(line[3 : -len("|| exit 1")])[0]
            elif " -m jobs.train " in line:
                words = shlex.split(line.rstrip(" &"))
                python = words[words.index("-m") - 1]
        except (ValueError, IndexError):
            continue
    if workdir is None or python is None:
        return None
    return EmitSettings(Path(workdir), python, None, None, script.name)


# --- jobs.yaml and resubmit-K.yaml ----------------------------------------------------------


@dataclass(frozen=True)
class SubmittedJob:
    segment: int
    script: str
    job_id: str
    dependency: str | None
    submitted: str  # ISO time


def load_jobs(folder: Path) -> list[SubmittedJob]:
    """jobs.yaml's jobs, oldest first; [] without the file; BadInputError when it is damaged
    (not text, not YAML, not the list submit writes, a folder)."""
    path = folder / JOBS_FILE
    try:
        raw = load_yaml(read_text(path)) or {}
        jobs = raw.get("jobs", []) if isinstance(raw, dict) else None
        if not isinstance(jobs, list) or not all(isinstance(job, dict) for job in jobs):
            raise TypeError("expected `jobs:` and a list of jobs")
        return [_submitted(job) for job in jobs]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else shown(str(exc))
        raise BadInputError(
            f"{path}: not the job list `plan-job submit` writes ({why}); move it away to go "
            f"on without the chain"
        ) from None


def _submitted(job: Mapping[str, Any]) -> SubmittedJob:
    found = SubmittedJob(**job)
    if not isinstance(found.segment, int) or not isinstance(found.job_id, str | int):
        raise TypeError(f"segment {found.segment!r}, job id {found.job_id!r}")
    return replace(found, job_id=str(found.job_id))


def load_chain(folder: Path) -> tuple[SubmittedJob, ...]:
    """load_jobs as a tuple (BadInputError for a damaged jobs.yaml)."""
    return tuple(load_jobs(folder))


def save_jobs(folder: Path, jobs: Sequence[SubmittedJob]) -> None:
    text = yaml.safe_dump({"jobs": [asdict(job) for job in jobs]}, sort_keys=False)
    write_text_atomic(folder / JOBS_FILE, text)


def read_jobs_text(folder: Path) -> str | None:
    """jobs.yaml as it is now, to put back with restore_jobs_text; None without one."""
    path = folder / JOBS_FILE
    return path.read_text(encoding="utf-8") if path.is_file() else None


def restore_jobs_text(folder: Path, text: str | None) -> None:
    if text is not None:
        write_text_atomic(folder / JOBS_FILE, text)
    else:
        (folder / JOBS_FILE).unlink(missing_ok=True)


def resubmissions(run_dir: Path) -> list[Path]:
    """The run's resubmit-K.yaml records, oldest first."""

    def number(path: Path) -> int:
        digits = path.stem.rpartition("-")[2]
        return int(digits) if digits.isdigit() else 0

    return sorted(run_dir.glob(RESUBMIT_GLOB), key=number)


def resubmit_record_path(run_dir: Path, number: int) -> Path:
    return run_dir / f"resubmit-{number}.yaml"


def save_resubmit_record(run_dir: Path, number: int, record: Mapping[str, object]) -> None:
    text = yaml.safe_dump(dict(record), sort_keys=False)
    write_text_atomic(resubmit_record_path(run_dir, number), text)


def resubmitted_segments(run_dir: Path) -> tuple[list[Segment], int | None]:
    """The segments resubmit added, in order, and the newest one's signal lead."""
    segments: list[Segment] = []
    lead = None
    for path in resubmissions(run_dir):
        try:
            raw = load_yaml(read_text(path)) or {}
            segments += [Segment(**s) for s in raw.get("segments") or []]
            lead = int(raw["signal_lead_s"]) if raw.get("signal_lead_s") else lead
        except (OSError, TypeError, ValueError, AttributeError, OverflowError):
            continue  # a record edited by hand: the scripts and jobs.yaml still tell the chain
    return segments, lead
