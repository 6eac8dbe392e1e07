"""What to run: the work that a calibration measures and a training job runs, one frozen
dataclass that both the calibration request (jobs.contract.measurement) and the training's
train.json (jobs.contract.train_config) embed, so that the login node builds it once and its
fields are checked in one place. Torch-free.

The work is either a workload (``builder_path``, a built-in one or the user's
``workload.function``) or the user's own training command (``command``, with how it reports
its steps); the batch, precision, device, seed and ``workload.compile`` go with either.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jobs.contract.command_fields import REPORT_MODES, fields_in
from jobs.workloads.base import PRECISIONS, WorkloadConfig

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Work:
    builder_path: str  # "module:function"; '' for a command
    workload_name: str
    preset: str
    overrides: Mapping[str, Any]
    micro_batch: int  # samples per forward/backward on one device
    grad_accum: int  # micro-batches per optimizer step on one device
    precision: str  # one of PRECISIONS
    device: str  # one of DEVICES
    seed: int
    # The user's own training command (jobs.contract.command_fields): argv with {field}s. Empty:
    # the workload of builder_path.
    command: tuple[str, ...] = ()
    report: str = "progress"  # how the command reports its steps: one of REPORT_MODES
    output_dir: str = ""  # the Hugging Face Trainer's output_dir (report "trainer_state")
    stop_grace_s: float = 30.0  # after the stop signal, before the command is killed
    compile: bool = False  # torch.compile the model (workload.compile; jobs.node.compiling)

    def __post_init__(self) -> None:
        """ValueError naming the field, its value and what is allowed."""
        if isinstance(self.command, list):
            object.__setattr__(self, "command", tuple(self.command))
        check_types(self)
        for name in ("micro_batch", "grad_accum"):
            check(name, getattr(self, name), getattr(self, name) > 0, "must be > 0")
        check("precision", self.precision, self.precision in PRECISIONS, one_of(PRECISIONS))
        check("device", self.device, self.device in DEVICES, one_of(DEVICES))
        check("stop_grace_s", self.stop_grace_s, self.stop_grace_s >= 0, "must be >= 0")
        check("report", self.report, self.report in REPORT_MODES, one_of(REPORT_MODES))
        if self.command:
            try:
                fields_in(self.command)
            except ValueError as exc:
                check("command", list(self.command), False, str(exc))
            trainer_state = self.report == "trainer_state"
            check(
                "output_dir",
                self.output_dir,
                bool(self.output_dir) or not trainer_state,
                "must be set when report is 'trainer_state'",
            )
        else:
            module, _, function = self.builder_path.partition(":")
            named = bool(module and function)
            check("builder_path", self.builder_path, named, "must be module:function")

    def workload_config(self, device: str) -> WorkloadConfig:
        """What the workload's builder is given, on ``device`` (the resolved one: "cuda:1")."""
        return WorkloadConfig(
            preset=self.preset,
            overrides=dict(self.overrides),
            micro_batch=self.micro_batch,
            grad_accum=self.grad_accum,
            precision=self.precision,
            device=device,
            seed=self.seed,
        )

    def flat(self) -> dict[str, Any]:
        """The fields as JSON takes them (a dict for overrides, a list for the command)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields.update(overrides=dict(self.overrides), command=list(self.command))
        return fields


WORK_FIELDS = tuple(f.name for f in dataclasses.fields(Work))


def split_work(fields: Mapping[str, Any]) -> tuple[Work, dict[str, Any]]:
    """A Work from the flat ``fields`` that name one (train.json's keys), and the others."""
    work = Work(**{name: value for name, value in fields.items() if name in WORK_FIELDS})
    return work, {name: value for name, value in fields.items() if name not in WORK_FIELDS}


def check(name: str, value: object, ok: bool, rule: str) -> None:
    if not ok:
        raise ValueError(f"field {name!r}: got {value!r}; {rule}")


def one_of(allowed: tuple[str, ...]) -> str:
    return f"allowed: {', '.join(allowed)}"


# The annotations are strings (postponed evaluation); these are all the types that Work and
# TrainConfig use.
_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "Mapping[str, Any]": (Mapping,),
    "tuple[str, ...]": (tuple,),
    "bool": (bool,),
    "Work": (Work,),
    "int | None": (int, type(None)),
    "float | None": (int, float, type(None)),
}


def check_types(obj: Any) -> None:
    """Every field of the dataclass ``obj`` of the type its annotation names."""
    for f in dataclasses.fields(obj):
        check_type(f.name, getattr(obj, f.name), f.type)


def check_type(name: str, value: object, annotation: object) -> None:
    allowed = _TYPES[str(annotation)]
    if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
        raise ValueError(
            f"field {name!r}: got {type(value).__name__} {value!r}; must be {annotation}"
        )
    if isinstance(value, tuple) and not all(isinstance(item, str) for item in value):
        raise ValueError(f"field {name!r}: got {value!r}; items must be strings")
    if isinstance(value, Mapping) and not all(isinstance(key, str) for key in value):
        raise ValueError(f"field {name!r}: got {value!r}; keys must be strings")
