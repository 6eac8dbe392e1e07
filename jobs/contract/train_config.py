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

from jobs.contract.hang import HangTimeouts
from jobs.contract.work import (
    DEVICES,
    WORK_FIELDS,
    Work,
    check,
    check_type,
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
# Keys added since, each optional: a file without them loads with the default, and a config
# with the default writes none of them, so that train.json files emitted before read and
# write back the same.
OPTIONAL_FIELDS = (
    "hang_timeouts",
    "max_stalled_segments",
    "checkpoint_bytes",
    "lock_heartbeat_s",
    "restart_from_scratch",
)
DEFAULT_MAX_STALLED_SEGMENTS = 2
DEFAULT_LOCK_HEARTBEAT_S = 30.0

__all__ = ["DEVICES", "FORMAT", "JSON_FIELDS", "OPTIONAL_FIELDS", "TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
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
    # The hang watchdog's timeouts (jobs.contract.hang); None: no watchdog.
    hang_timeouts: HangTimeouts | None = None
    # Segments in a row without progress after which a segment cancels the rest of its chain
    # (jobs.node.chain_guard); 0: never. None: not in the file, DEFAULT_MAX_STALLED_SEGMENTS.
    max_stalled_segments: int | None = None
    checkpoint_bytes: int | None = None  # the calibration's checkpoint size (space check)
    # How often the trainer lock's heartbeat is written; None: DEFAULT_LOCK_HEARTBEAT_S.
    lock_heartbeat_s: float | None = None
    # Start from step 0 when no checkpoint loads although the run is past step 0 (else the
    # job refuses): the explicit way to start over.
    restart_from_scratch: bool = False

    @property
    def stalled_limit(self) -> int:
        limit = self.max_stalled_segments
        return DEFAULT_MAX_STALLED_SEGMENTS if limit is None else limit

    @property
    def heartbeat_s(self) -> float:
        beat = self.lock_heartbeat_s
        return DEFAULT_LOCK_HEARTBEAT_S if beat is None else float(beat)

    def __post_init__(self) -> None:
        """ValueError naming the field (the work's fields are checked by Work)."""
        hang = self.hang_timeouts
        if hang is not None and not isinstance(hang, HangTimeouts):
            object.__setattr__(self, "hang_timeouts", HangTimeouts.from_dict(hang))
        for f in dataclasses.fields(self):
            if f.name != "hang_timeouts":  # made a HangTimeouts above, or None
                check_type(f.name, getattr(self, f.name), f.type)
        positive = ("total_steps", "checkpoint_interval_steps", "keep_checkpoints")
        for name in (*positive, "log_every", "eval_batches"):
            check(name, getattr(self, name), getattr(self, name) > 0, "must be > 0")
        interval = self.eval_interval_steps
        check("eval_interval_steps", interval, interval >= 0, "must be >= 0 (0: no evaluation)")
        check("stop_lead_s", self.stop_lead_s, self.stop_lead_s >= 0, "must be >= 0")
        for name in ("checkpoint_dir", "progress_path"):
            check(name, getattr(self, name), bool(getattr(self, name)), "must not be empty")
        stalled = self.max_stalled_segments
        rule = "must be >= 0 (0: the chain never stops itself)"
        check("max_stalled_segments", stalled, stalled is None or stalled >= 0, rule)
        size = self.checkpoint_bytes
        check("checkpoint_bytes", size, size is None or size >= 0, "must be >= 0 bytes")
        beat = self.lock_heartbeat_s
        check("lock_heartbeat_s", beat, beat is None or beat > 0, "must be > 0 seconds")

    def to_json(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields.update(self.work.flat())
        del fields["work"]
        out = {"format": FORMAT, **{key: fields[key] for key in JSON_FIELDS}}
        for key in OPTIONAL_FIELDS:
            if fields[key] not in (None, False):
                value = fields[key]
                out[key] = value.to_dict() if isinstance(value, HangTimeouts) else value
        return json.dumps(out, indent=2)

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
        unknown = sorted(set(fields) - set(JSON_FIELDS) - set(OPTIONAL_FIELDS))
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
    if name in OPTIONAL_FIELDS:
        return False
    field = next(f for f in dataclasses.fields(owner) if f.name == name)
    return field.default is dataclasses.MISSING
