"""What the login node tells a training job: the JSON file that ``python -m jobs.train`` reads.

Torch-free: the login node writes it next to the generated sbatch script.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jobs.contract.command_fields import REPORT_MODES, fields_in
from jobs.workloads.base import PRECISIONS

FORMAT = "plan-job/train/v1"
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    builder_path: str  # "module:function"
    workload_name: str
    preset: str
    overrides: Mapping[str, Any]
    micro_batch: int
    grad_accum: int
    precision: str  # one of PRECISIONS
    device: str  # one of DEVICES
    seed: int
    total_steps: int  # optimizer steps the whole run (all jobs together) trains for
    checkpoint_dir: str
    checkpoint_interval_steps: int
    keep_checkpoints: int  # the newest this many checkpoints stay on disk
    progress_path: str  # JSONL, see jobs.progress
    # Margin before the stop time on top of the measured step and save times (0: none).
    stop_lead_s: float = 0.0
    log_every: int = 1  # a progress "step" line every this many steps
    # An evaluation (the workload's eval_step over eval_batches held-out batches) after every
    # this many steps; 0: none.
    eval_interval_steps: int = 0
    eval_batches: int = 10
    # The user's own training command (jobs.contract.command_fields): argv with {field}s. Empty: the
    # built-in workload of builder_path.
    command: tuple[str, ...] = ()
    report: str = "progress"  # how the command reports its steps: one of REPORT_MODES
    output_dir: str = ""  # the Hugging Face Trainer's output_dir (report "trainer_state")
    stop_grace_s: float = 30.0  # after the stop signal, before the command is killed
    # The run folder's id (planner.run_folder): the checkpoint folder is marked with it, so a
    # later run does not resume from this one's checkpoints unknowingly. '': not emitted.
    run_id: str = ""
    compile: bool = False  # torch.compile the model (workload.compile; jobs.node.compiling)

    def __post_init__(self) -> None:
        if isinstance(self.command, list):
            object.__setattr__(self, "command", tuple(self.command))
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        positive = ("micro_batch", "grad_accum", "total_steps", "checkpoint_interval_steps")
        for name in (*positive, "keep_checkpoints", "log_every", "eval_batches"):
            _check(name, getattr(self, name), getattr(self, name) > 0, "must be > 0")
        interval = self.eval_interval_steps
        _check("eval_interval_steps", interval, interval >= 0, "must be >= 0 (0: no evaluation)")
        _check("stop_lead_s", self.stop_lead_s, self.stop_lead_s >= 0, "must be >= 0")
        _check("precision", self.precision, self.precision in PRECISIONS, _one_of(PRECISIONS))
        _check("device", self.device, self.device in DEVICES, _one_of(DEVICES))
        _check("stop_grace_s", self.stop_grace_s, self.stop_grace_s >= 0, "must be >= 0")
        _check("report", self.report, self.report in REPORT_MODES, _one_of(REPORT_MODES))
        if self.command:
            try:
                fields_in(self.command)
            except ValueError as exc:
                _check("command", list(self.command), False, str(exc))
            trainer_state = self.report == "trainer_state"
            _check(
                "output_dir",
                self.output_dir,
                bool(self.output_dir) or not trainer_state,
                "must be set when report is 'trainer_state'",
            )
        else:
            module, _, function = self.builder_path.partition(":")
            named = bool(module and function)
            _check("builder_path", self.builder_path, named, "must be module:function")
        for name in ("checkpoint_dir", "progress_path"):
            _check(name, getattr(self, name), bool(getattr(self, name)), "must not be empty")

    def to_json(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields.update(overrides=dict(self.overrides), command=list(self.command))
        return json.dumps({"format": FORMAT, **fields}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        """Parse and validate; a ValueError names the offending field."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"train config: not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"train config: expected a JSON object, got {type(data).__name__}")
        if "format" not in data:
            raise ValueError("train config: missing field 'format'")
        _check("format", data["format"], data["format"] == FORMAT, f"must be {FORMAT!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields) - {"format"})
        if unknown:
            raise ValueError(f"train config: unknown field(s) {', '.join(map(repr, unknown))}")
        missing = [
            name
            for name, f in fields.items()
            if name not in data and f.default is dataclasses.MISSING
        ]
        if missing:
            raise ValueError(f"train config: missing field(s) {', '.join(map(repr, missing))}")
        return cls(**{name: value for name, value in data.items() if name != "format"})


def _check(name: str, value: object, ok: bool, rule: str) -> None:
    if not ok:
        raise ValueError(f"train config: field {name!r}: got {value!r}; {rule}")


def _one_of(allowed: tuple[str, ...]) -> str:
    return f"allowed: {', '.join(allowed)}"


# The annotations are strings (postponed evaluation); these are all the types TrainConfig uses.
_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "Mapping[str, Any]": (Mapping,),
    "tuple[str, ...]": (tuple,),
    "bool": (bool,),
}


def _check_type(name: str, value: object, annotation: object) -> None:
    allowed = _TYPES[str(annotation)]
    if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
        raise ValueError(
            f"train config: field {name!r}: got {type(value).__name__} {value!r}; "
            f"must be {annotation}"
        )
    if isinstance(value, tuple) and not all(isinstance(item, str) for item in value):
        raise ValueError(f"train config: field {name!r}: got {value!r}; items must be strings")
    if isinstance(value, Mapping) and not all(isinstance(key, str) for key in value):
        raise ValueError(f"train config: field {name!r}: got {value!r}; keys must be strings")
