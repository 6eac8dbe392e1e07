"""Reading a run spec: YAML plus ``--set key.path=value`` overrides into planner.spec.run_spec's
dataclasses, one section at a time with planner.spec.schema.Section, so every field is
validated and a misspelt key fails with its close match. Torch-free.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jobs.contract.command_fields import REPORT_MODES, fields_in
from jobs.workloads.base import PRECISIONS
from jobs.workloads.registry import BUILTIN
from planner.errors import SpecError
from planner.spec.paths import expand_path
from planner.spec.run_spec import (
    CHOOSE_BY,
    COMMAND_WORKLOAD,
    HANG_MODES,
    BatchSpec,
    CalibrationSpec,
    CheckpointSpec,
    ClusterSpec,
    CommandSpec,
    DataSpec,
    PlanSpec,
    RunSpec,
    WorkloadSpec,
)
from planner.spec.schema import Section
from planner.yaml_input import YamlInputError, YamlTooLargeError, load_yaml, read_text

EXECUTORS = ("local", "slurm")
# Sane upper bounds. Past them a value is a typo or a unit slip, and some would break
# something downstream: node counts are enumerated one by one, step counts are 64-bit
# integers in checkpoint names and progress lines, seeds go to every RNG on the node.
INT64_MAX = 2**63 - 1
MAX_NODES = 100_000  # the largest Slurm clusters have about 10^4
MAX_GPUS_PER_NODE = 256
MAX_CPUS_PER_TASK = 65_536
MAX_BATCH = 10**9
MAX_EPOCHS = 10**6
MAX_KEEP = 10_000
MAX_SEED = 2**32 - 1  # numpy's legacy seeding takes 32 bits
MAX_CALIBRATION_STEPS = 10**8
DAY_S = 86_400.0
YEAR_S = 365 * DAY_S
MAX_NAME = 100  # it becomes file, folder and Slurm job names (with prefixes and stamps)
_STEPS = " (2^63 - 1: a step count must fit in 64 bits)"
DEVICES = ("auto", "cpu", "cuda")
_FUNCTION_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_MEM_RE = re.compile(r"^\d+[KMGT]?$")
# sbatch --constraint: feature names joined by & (and), | (or), ",", with [ ] grouping,
# ( ) and *count (Slurm's sbatch(1)). Nothing a shell or an #SBATCH line would read otherwise.
_CONSTRAINT_RE = re.compile(r"^[A-Za-z0-9_.\-&|,\[\]()*]+$")
_CONSTRAINT_RULE = (
    "expected Slurm's --constraint syntax: feature names (letters, digits, _ . -) joined by "
    "& (and), | (or) or commas, with [ ] ( ) and *count, no spaces; e.g. a100&ib or [rack1|rack2]"
)
# sbatch --reservation: one or more reservation names, comma-separated.
_RESERVATION_RE = re.compile(r"^[A-Za-z0-9_.\-]+(,[A-Za-z0-9_.\-]+)*$")
_RESERVATION_RULE = (
    "expected a Slurm reservation name (letters, digits, _ . -), or several joined by commas; "
    "`scontrol show reservation` lists them"
)


def load_spec(
    path: Path | str, overrides: Sequence[str] = (), command: str | None = None
) -> RunSpec:
    """Read a YAML run spec, apply ``key.path=value`` overrides, validate every field.

    ``command`` replaces command.run: taken as written, not read as YAML (a ``#`` or a
    leading ``{`` in a command line would not survive that)."""
    path = Path(path)
    source = str(path)
    try:
        raw = load_yaml(read_text(path))
    except OSError as exc:
        raise SpecError("spec", source, f"cannot read the file: {exc.strerror}") from exc
    except YamlInputError as exc:
        raise SpecError("spec", source, str(exc)) from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise SpecError("<top level>", raw, "expected a mapping (key: value lines)", source)
    for item in overrides:
        apply_override(raw, item)
    if command is not None:
        section = raw.get("command")
        if isinstance(section, dict):
            section["run"] = command
        else:
            raw["command"] = command
    return parse_spec(raw, source=source, default_name=path.stem)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in the raw document; the value is read as YAML (so 32 is an int)."""
    key, sep, value = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError("--set", item, "expected KEY.PATH=VALUE, e.g. batch.micro_batch=32")
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise SpecError(key, item, f"{part!r} is not a mapping, cannot set a key inside it")
        node = child
    try:
        node[parts[-1]] = load_yaml(value)
    except YamlTooLargeError as exc:
        raise SpecError("--set", f"{key}=...", str(exc)) from None
    except YamlInputError:
        node[parts[-1]] = value  # not YAML: the text as written


def parse_spec(
    raw: Mapping[str, Any], source: str | None = None, default_name: str = "run"
) -> RunSpec:
    top = Section(raw, "", source)
    notes: list[str] = []
    name = _name(top, default_name)
    command = _command(top, notes)
    if command is None:
        workload = _workload(top.section("workload"))
    else:
        workload = WorkloadSpec(COMMAND_WORKLOAD, "-")
        given = top.get("workload", None)
        # A saved spec (record, plan.yaml) names the command's placeholder workload.
        if given is not None and given.get("name") != COMMAND_WORKLOAD:
            raise top.error(
                "workload",
                given,
                "give a workload or a command, not both: command runs your own script",
            )
    data = _data(top.section("data"))
    cluster = _cluster(top.section("cluster"))
    batch = _batch(top.section("batch"), cluster)
    precision = top.choice("precision", PRECISIONS, "fp32")
    checkpoint = _checkpoint(top.section("checkpoint"), notes)
    calibration = _calibration(top.section("calibration"))
    plan = _plan(top.section("plan"))
    top.done()
    return RunSpec(
        name,
        workload,
        data,
        batch,
        precision,
        cluster,
        checkpoint,
        calibration,
        source,
        plan,
        command,
        tuple(notes),
    )


def _path(sec: Section, key: str, default: str | None, notes: list[str]) -> Any:
    """A path field: a non-empty string, ~ and $VARIABLES expanded (planner.spec.paths)."""
    value = sec.string(key, default)
    if value is None:
        return None
    expanded, note = expand_path(sec.field(key), value, sec.source)
    if note:
        notes.append(note)
    return expanded


def _name(top: Section, default: str) -> str:
    """The run's name becomes file names (calibrations/<name>.yaml, job folders): one path
    component, so that no name can write outside the folder it is meant for."""
    name = top.string("name", default)
    if len(name) > MAX_NAME:
        raise top.error(
            "name",
            name,
            f"at most {MAX_NAME} characters (it has {len(name)}): it becomes the record's file "
            "name, the job folder's and the Slurm job name",
        )
    bad = (
        name in (".", "..")
        or any(sep in name for sep in ("/", "\\"))
        or any(ord(char) < 32 or ord(char) == 127 for char in name)
    )
    if bad:
        raise top.error(
            "name",
            name,
            "must be one file name: no '/', '\\', control characters, and not '.' or '..' "
            "(e.g. jit-b4-10b)",
        )
    return name


def _command(top: Section, notes: list[str]) -> CommandSpec | None:
    """``command: "python train.py ..."`` or a mapping with ``run:`` and its settings."""
    if not top.has("command"):
        top.get("command", None)  # an empty command: is consumed, and means none
        return None
    raw = top.get("command")
    sec = Section({"run": raw} if isinstance(raw, str) else raw, "command", top.source)
    run = sec.string("run")
    try:
        argv = tuple(shlex.split(run))
    except ValueError as exc:
        raise sec.error("run", run, f"cannot split it into arguments: {exc}") from exc
    try:
        used = fields_in(argv)
    except ValueError as exc:
        raise sec.error("run", run, str(exc)) from exc
    report = sec.choice("report", REPORT_MODES, "progress")
    output_dir = _path(sec, "output_dir", None, notes)
    if report == "trainer_state":
        if output_dir is None:
            raise sec.error(
                "output_dir",
                None,
                "report: trainer_state reads the Trainer's checkpoint-N folders: set "
                "command.output_dir to its output_dir",
            )
        needed = {
            "checkpoint_interval_steps": "--save_steps: the steps are timed between saves",
            "total_steps": "--max_steps",
            # The calibration saves elsewhere: its checkpoints must not become the run's.
            "output_dir": "--output_dir",
        }
        for name, flag in needed.items():
            if name not in used:
                raise sec.error(
                    "run", run, f"report: trainer_state needs {{{name}}} passed to {flag}"
                )
    spec = CommandSpec(
        run=run,
        argv=argv,
        report=report,
        output_dir=output_dir,
        stop_grace_s=sec.number("stop_grace_s", 30.0, minimum=0.0, maximum=DAY_S, why=" (a day)"),
    )
    sec.done()
    return spec


def _workload(sec: Section) -> WorkloadSpec:
    function = sec.get("function", None)
    if function is not None:
        if not isinstance(function, str) or not _FUNCTION_RE.match(function):
            raise sec.error(
                "function", function, "expected 'package.module:function' (a workload builder)"
            )
        name = sec.string("name", "custom")
        preset = sec.string("preset", "default")
        overrides = sec.mapping("overrides")
        compile_ = _compile(sec)
        sec.done()
        return WorkloadSpec(name, preset, overrides, function, compile_)
    name = sec.choice("name", sorted(BUILTIN))
    builtin = BUILTIN[name]
    preset = sec.choice("preset", sorted(builtin.presets))
    overrides = sec.mapping("overrides")
    types = builtin.override_types()
    for key, value in overrides.items():
        if key not in types:
            raise sec.error(
                f"overrides.{key}",
                value,
                f"unknown {name} setting; valid: {', '.join(sorted(types))}",
            )
        expected = types[key]
        ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            ok, overrides[key] = True, float(value)
        if not ok:
            raise sec.error(f"overrides.{key}", value, f"expected {expected.__name__}")
    try:
        builtin.resolve(preset, overrides)
    except (TypeError, ValueError) as exc:
        raise sec.error("overrides", overrides, str(exc)) from exc
    compile_ = _compile(sec)
    sec.done()
    return WorkloadSpec(name, preset, overrides, None, compile_)


def _compile(sec: Section) -> bool:
    value = sec.get("compile", False)
    if not isinstance(value, bool):
        raise sec.error("compile", value, "expected true or false")
    return value


def _data(sec: Section) -> DataSpec:
    samples = sec.integer("samples", None, minimum=1, maximum=INT64_MAX, why=_STEPS)
    tokens = sec.integer("tokens", None, minimum=1, maximum=INT64_MAX, why=_STEPS)
    if (samples is None) == (tokens is None):
        raise sec.error(
            "samples",
            samples if samples is not None else tokens,
            "give exactly one of data.samples or data.tokens",
        )
    epochs = sec.number("epochs", 1.0, minimum=0.0, maximum=MAX_EPOCHS, exclusive_min=True)
    sec.done()
    return DataSpec(samples, tokens, epochs)


def _cluster(sec: Section) -> ClusterSpec:
    mem = sec.get("mem", None)
    if mem is not None:
        mem = str(mem)
        if not _MEM_RE.match(mem):
            raise sec.error("mem", mem, "expected a Slurm memory size such as 64G, 512000M or 0")
    spec = ClusterSpec(
        partition=sec.string("partition", None),
        nodes=sec.integer("nodes", 1, minimum=1, maximum=MAX_NODES),
        gpus_per_node=sec.integer("gpus_per_node", 1, minimum=0, maximum=MAX_GPUS_PER_NODE),
        cpus_per_task=sec.integer("cpus_per_task", 1, minimum=1, maximum=MAX_CPUS_PER_TASK),
        mem=mem,
        account=sec.string("account", None),
        qos=sec.string("qos", None),
        constraint=_matching(sec, "constraint", _CONSTRAINT_RE, _CONSTRAINT_RULE),
        reservation=_matching(sec, "reservation", _RESERVATION_RE, _RESERVATION_RULE),
        gpu_type=sec.string("gpu_type", None),
    )
    sec.done()
    return spec


def _matching(sec: Section, key: str, pattern: re.Pattern[str], rule: str) -> str | None:
    """An optional string that must match ``pattern`` whole; ``rule`` says what is allowed."""
    value = sec.get(key, None)
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.match(value):
        raise sec.error(key, value, rule)
    return value


def _batch(sec: Section, cluster: ClusterSpec) -> BatchSpec:
    micro = sec.integer("micro_batch", minimum=1, maximum=MAX_BATCH)
    gpus = cluster.gpus
    accum = sec.integer("grad_accum", None, minimum=1, maximum=MAX_BATCH)
    default_global = micro * gpus * (accum or 1)
    global_batch = sec.integer("global_batch", default_global, minimum=1, maximum=INT64_MAX)
    per_step = micro * gpus
    if global_batch % per_step:
        raise sec.error(
            "global_batch",
            global_batch,
            f"must be a multiple of micro_batch x GPUs = {micro} x {gpus} = {per_step}",
        )
    derived = global_batch // per_step
    if accum is not None and accum != derived:
        raise sec.error(
            "grad_accum",
            accum,
            f"global_batch / (micro_batch x GPUs) = {global_batch} / {per_step} = "
            f"{derived}; set grad_accum: {derived} or drop it",
        )
    sec.done()
    return BatchSpec(global_batch, micro, derived)


def _checkpoint(sec: Section, notes: list[str]) -> CheckpointSpec:
    spec = CheckpointSpec(
        dir=_path(sec, "dir", "checkpoints", notes),
        interval_steps=sec.integer("interval_steps", None, minimum=1, maximum=INT64_MAX),
        keep=sec.integer("keep", 2, minimum=1, maximum=MAX_KEEP),
    )
    sec.done()
    return spec


def _calibration(sec: Section) -> CalibrationSpec:
    min_steps = sec.integer("min_steps", 20, minimum=3, maximum=MAX_CALIBRATION_STEPS)
    max_steps = sec.integer("max_steps", 300, minimum=1, maximum=MAX_CALIBRATION_STEPS)
    if max_steps < min_steps:
        raise sec.error("max_steps", max_steps, f"must be >= calibration.min_steps ({min_steps})")
    spec = CalibrationSpec(
        executor=sec.choice("executor", EXECUTORS, "local"),
        device=sec.choice("device", DEVICES, "auto"),
        min_steps=min_steps,
        max_steps=max_steps,
        max_seconds=sec.number(
            "max_seconds", 90.0, minimum=0.0, maximum=DAY_S, exclusive_min=True, why=" (a day)"
        ),
        target_ci=sec.number("target_ci", 0.02, minimum=0.0, maximum=1.0, exclusive_min=True),
        time_limit_minutes=sec.integer(
            "time_limit_minutes", 10, minimum=1, maximum=int(YEAR_S // 60), why=" (a year)"
        ),
        pending_timeout_s=sec.number(
            "pending_timeout_s", 600.0, minimum=0.0, maximum=YEAR_S, exclusive_min=True
        ),
        peak_tflops=sec.number("peak_tflops", None, minimum=0.0, exclusive_min=True),
        seed=sec.integer("seed", 0, minimum=0, maximum=MAX_SEED),
        nodes=_node_counts(sec),
        tasks_per_node=sec.integer("tasks_per_node", None, minimum=1, maximum=MAX_GPUS_PER_NODE),
    )
    sec.done()
    return spec


def _node_counts(sec: Section) -> tuple[int, ...]:
    """calibration.nodes: a list of distinct node counts >= 1 (a lone number is one count)."""
    raw = sec.get("nodes", [1])
    items = raw if isinstance(raw, list | tuple) else [raw]
    counts: list[int] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= MAX_NODES:
            raise sec.error(
                "nodes", raw, f"expected whole node counts from 1 to {MAX_NODES:,}, e.g. [1, 2]"
            )
        counts.append(item)
    if not counts:
        raise sec.error("nodes", raw, "give at least one node count, e.g. [1, 2]")
    if len(set(counts)) != len(counts):
        raise sec.error("nodes", raw, "each node count once, e.g. [1, 2]")
    return tuple(sorted(counts))


def _plan(sec: Section) -> PlanSpec:

    def positive(key: str, default: float | None, maximum: float | None = None) -> Any:
        return sec.number(key, default, minimum=0.0, maximum=maximum, exclusive_min=True)

    interval = sec.integer("eval_interval_steps", None, minimum=1, maximum=INT64_MAX)
    eval_s = sec.number("eval_s", None, minimum=0.0, maximum=DAY_S, why=" (a day)")
    if eval_s is not None and interval is None:
        raise sec.error(
            "eval_s",
            eval_s,
            "is the time of one evaluation; set plan.eval_interval_steps for how often one runs",
        )
    spec = PlanSpec(
        deadline_hours=positive("deadline_hours", None),
        efficiency_floor=positive("efficiency_floor", 0.8, maximum=1.0),
        max_nodes=sec.integer("max_nodes", None, minimum=1, maximum=MAX_NODES),
        # GB/s: 0.01 is 80 Mbit/s, slower than any cluster's network; 10^5 faster than any.
        interconnect_gbps=sec.number("interconnect_gbps", 100.0, minimum=0.01, maximum=1e5),
        intranode_gbps=sec.number("intranode_gbps", 300.0, minimum=0.01, maximum=1e5),
        allreduce_latency_s=sec.number("allreduce_latency_s", 1e-3, minimum=0.0, maximum=60.0),
        # A job interrupted every 6 minutes, or 100 times a GPU-day, cannot make progress.
        mtbf_hours=sec.number("mtbf_hours", None, minimum=0.1, maximum=1e7),
        interruptions_per_gpu_day=positive("interruptions_per_gpu_day", 4.7e-4, maximum=100.0),
        run_to_run_spread=sec.number("run_to_run_spread", 0.02, minimum=0.0, maximum=1.0),
        gpu_hour_cost=sec.number("gpu_hour_cost", None, minimum=0.0, maximum=1e9),
        pue=sec.number("pue", 1.0, minimum=1.0, maximum=10.0),
        eval_interval_steps=interval,
        eval_batches=sec.integer("eval_batches", 10, minimum=1, maximum=10**6),
        eval_s=eval_s,
        allow_unmeasured_scaling=sec.boolean("allow_unmeasured_scaling", False),
        choose_by=sec.choice("choose_by", CHOOSE_BY, None),
        queue_history_days=sec.integer(
            "queue_history_days", 14, minimum=1, maximum=365, why=" (a year)"
        ),
        hang_factor=sec.number("hang_factor", 5.0, minimum=1.0),
        hang_timeouts=_hang_mode(sec),
        max_stalled_segments=sec.integer("max_stalled_segments", 2, minimum=0),
    )
    sec.done()
    return spec


def _hang_mode(sec: Section) -> str:
    # YAML 1.1 reads a bare `off` as false (and `on` as true).
    value = sec.get("hang_timeouts", "auto")
    mode = {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value
    if mode not in HANG_MODES:
        raise sec.error("hang_timeouts", value, f"allowed: {', '.join(HANG_MODES)}")
    return str(mode)
