"""What the login node tells a training job: the JSON file that ``python -m jobs.train`` reads.

Torch-free: the login node writes it next to the generated sbatch script.

The work to run is a jobs.contract.work.Work, as in a calibration's request; the file keeps
it flat, every field at the top level beside the run's own (the same keys, in the same order,
as before the two shared one Work), so that run folders emitted before resume and resubmit
as they are.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jobs.contract.work import (
    DEVICES,
    WORK_FIELDS,
    Work,
    WorkFields,
    check,
    check_types,
    split_work,
)

FORMAT = "plan-job/train/v1"
# train.json's keys, in the order it has always written them.
JSON_FIELDS = (
    "builder_path",
    "workload_name",
    "preset",
    "overrides",
    "micro_batch",
    "grad_accum",
    "precision",
    "device",
    "seed",
    "total_steps",
    "checkpoint_dir",
    "checkpoint_interval_steps",
    "keep_checkpoints",
    "progress_path",
    "stop_lead_s",
    "log_every",
    "eval_interval_steps",
    "eval_batches",
    "command",
    "report",
    "output_dir",
    "stop_grace_s",
    "run_id",
    "compile",
)

__all__ = ["DEVICES", "FORMAT", "JSON_FIELDS", "TrainConfig"]


@dataclass(frozen=True)
class TrainConfig(WorkFields):
    work: Work  # what to train: the workload or the user's command, batch, precision, device
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
    # The run folder's id (planner.runs.run_folder): the checkpoint folder is marked with it, so a
    # later run does not resume from this one's checkpoints unknowingly. '': not emitted.
    run_id: str = ""

    def __post_init__(self) -> None:
        """ValueError naming the field (the work's fields are checked by Work)."""
        check_types(self)
        positive = ("total_steps", "checkpoint_interval_steps", "keep_checkpoints")
        for name in (*positive, "log_every", "eval_batches"):
            check(name, getattr(self, name), getattr(self, name) > 0, "must be > 0")
        interval = self.eval_interval_steps
        check("eval_interval_steps", interval, interval >= 0, "must be >= 0 (0: no evaluation)")
        check("stop_lead_s", self.stop_lead_s, self.stop_lead_s >= 0, "must be >= 0")
        for name in ("checkpoint_dir", "progress_path"):
            check(name, getattr(self, name), bool(getattr(self, name)), "must not be empty")

    def to_json(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields.update(self.work.flat())
        del fields["work"]
        return json.dumps({"format": FORMAT, **{key: fields[key] for key in JSON_FIELDS}}, indent=2)

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
        if data["format"] != FORMAT:
            raise ValueError(
                f"train config: field 'format': got {data['format']!r}; must be {FORMAT!r}"
            )
        return cls.from_flat({name: value for name, value in data.items() if name != "format"})

    @classmethod
    def from_flat(cls, fields: Mapping[str, Any]) -> TrainConfig:
        """From train.json's flat fields (the work's and the run's side by side, without
        ``format``); a ValueError, prefixed "train config:", names the offending field."""
        unknown = sorted(set(fields) - set(JSON_FIELDS))
        if unknown:
            raise ValueError(f"train config: unknown field(s) {', '.join(map(repr, unknown))}")
        missing = [name for name in JSON_FIELDS if name not in fields and _required(name)]
        if missing:
            raise ValueError(f"train config: missing field(s) {', '.join(map(repr, missing))}")
        try:
            work, rest = split_work(fields)
            return cls(work=work, **rest)
        except ValueError as exc:
            raise ValueError(f"train config: {exc}") from exc


def _required(name: str) -> bool:
    owner = Work if name in WORK_FIELDS else TrainConfig
    field = next(f for f in dataclasses.fields(owner) if f.name == name)
    return field.default is dataclasses.MISSING
