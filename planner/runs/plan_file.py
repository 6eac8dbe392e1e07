"""Read a run folder's plan.yaml back into a Plan, and the emit options beside it.

plan.yaml is Plan.to_dict() dumped as plain YAML; reading it back lets resubmit render new
segments with the same template slots and #SBATCH lines as the first ones. emit.yaml holds
what emit was told that the plan does not know: the jobs' working directory, the nodes'
Python and a user template. Folders emitted before emit.yaml existed have the first two in
their scripts (the `cd` line and the srun command), which are read instead. Torch-free.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from planner.atomic import write_text_atomic
from planner.errors import PlanFileError, PlanJobError
from planner.model.plan import Baselines, CheckpointChoice, NodeOption, Plan, Segment, TimeEstimate
from planner.runs.run_folder import EMIT_FILE, PLAN_FILE
from planner.slurm.partition import PartitionLimits
from planner.spec.load import parse_spec

RESUBMIT_GLOB = "resubmit-*.yaml"
_NESTED: dict[str, type] = {
    "wall": TimeEstimate,
    "checkpoint": CheckpointChoice,
    "baselines": Baselines,
}
_SEQUENCES: dict[str, type] = {"segments": Segment, "options": NodeOption}


@dataclass(frozen=True)
class EmitSettings:
    workdir: Path
    python: str
    template: Path | None
    correction: float | None  # the history correction the plan carried (None: none)
    source: str  # emit.yaml, or the script it was read from


def load_plan(run_dir: Path) -> Plan:
    path = run_dir / PLAN_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlanFileError(
            f"{path}: cannot read ({exc.strerror}); resubmit needs a run folder written by "
            f"`plan-job emit`"
        ) from exc
    except yaml.YAMLError as exc:
        raise PlanFileError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("spec"), dict):
        raise PlanFileError(f"{path}: not the plan.yaml `plan-job emit` writes (no spec)")
    try:
        return _plan(raw, str(path))
    except (TypeError, KeyError, ValueError) as exc:
        raise PlanFileError(
            f"{path}: written by another plan-job version, or edited ({exc}); emit the run "
            f"again with this version"
        ) from exc
    except PlanJobError as exc:
        raise PlanFileError(f"{path}: its spec no longer validates: {exc}") from exc


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
    """emit.yaml, else the working directory and Python of the newest script."""
    path = run_dir / EMIT_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        raw = None
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


def resubmissions(run_dir: Path) -> list[Path]:
    """The run's resubmit-K.yaml records, oldest first."""

    def number(path: Path) -> int:
        digits = path.stem.rpartition("-")[2]
        return int(digits) if digits.isdigit() else 0

    return sorted(run_dir.glob(RESUBMIT_GLOB), key=number)


def resubmitted_segments(run_dir: Path) -> tuple[list[Segment], int | None]:
    """The segments resubmit added, in order, and the newest one's signal lead."""
    segments: list[Segment] = []
    lead = None
    for path in resubmissions(run_dir):
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            segments += [Segment(**s) for s in raw.get("segments") or []]
            lead = int(raw["signal_lead_s"]) if raw.get("signal_lead_s") else lead
        except (OSError, yaml.YAMLError, TypeError, ValueError, AttributeError):
            continue  # a record edited by hand: the scripts and jobs.yaml still tell the chain
    return segments, lead


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


def _plan(raw: Mapping[str, Any], source: str) -> Plan:
    known = {f.name for f in dataclasses.fields(Plan)}
    values: dict[str, Any] = {k: v for k, v in raw.items() if k in known}
    values["spec"] = parse_spec(raw["spec"], source=f"{source} (spec)")
    for name, cls in _NESTED.items():
        values[name] = _build(cls, raw[name])
    for name, cls in _SEQUENCES.items():
        values[name] = tuple(_build(cls, item) for item in raw.get(name) or [])
    values["notes"] = tuple(str(note) for note in raw.get("notes") or ())
    partition = raw.get("partition")
    values["partition"] = _build(PartitionLimits, partition) if partition else None
    return Plan(**values)


def _build(cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise TypeError(f"{cls.__name__}: expected a mapping, got {type(raw).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in names})
