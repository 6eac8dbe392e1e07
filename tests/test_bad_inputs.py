"""Every input a user can give, given badly: each must end with a message naming what was
wrong, exit 2, no traceback, and nothing written.

Table-driven: a case sets up its files, names the command line and the words its message
must hold. The real CLI runs in this process (click's runner), so the table runs in seconds;
a case that escapes as an exception, exits otherwise or leaves a file behind fails.
Inputs are spec fields, command-line flags, environment variables and the files plan-job
reads back (calibration records, plan.yaml, train.json, jobs.yaml, progress.jsonl, the run
folder's marker), given garbage, wrong types, huge values, NaN and infinities, negatives,
empties, binary, folders where files belong and files where folders belong."""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from planner.cli import cli
from tests.builders import SPEC, TINY_JIT, reference_files, write_spec
from tests.run_folders import stopped_folder

Setup = Callable[[Path], list[str]]


@dataclass(frozen=True)
class Case:
    id: str
    setup: Setup  # writes the files, returns the command line
    says: tuple[str, ...]  # words the message must hold (the field, the value, the bound)
    env: dict[str, str] = field(default_factory=dict)


# --- building blocks ------------------------------------------------------------------------


def spec_doc(**changes: Any) -> dict[str, Any]:
    """The reference spec (tests/test_planning.py) with "section__key" paths changed; a value
    of DROP removes the key."""
    doc = copy.deepcopy(SPEC)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        if value is DROP:
            node.pop(last, None)
        else:
            node[last] = value
    return doc


DROP = object()


def plan_with(verb: str = "plan", *extra: str, **changes: Any) -> Setup:
    """`plan-job plan|emit SPEC --calibration CAL` with the spec changed after its record
    was made (so the record matches the reference spec)."""

    def setup(tmp: Path) -> list[str]:
        spec, cal = reference_files(tmp)
        spec.write_text(yaml.safe_dump(spec_doc(**changes)))
        args = [verb, str(spec), "--calibration", str(cal)]
        if verb == "emit":
            args += ["-o", str(tmp / "out")]
        return [*args, *extra]

    return setup


def plan_text(text: str | bytes, command: str = "plan") -> Setup:
    """plan with the spec file's raw text (or bytes) as given."""

    def setup(tmp: Path) -> list[str]:
        spec, cal = reference_files(tmp)
        if isinstance(text, bytes):
            spec.write_bytes(text)
        else:
            spec.write_text(text)
        args = [command, str(spec), "--calibration", str(cal)]
        return args + (["-o", str(tmp / "out")] if command == "emit" else [])

    return setup


def plan_args(*extra: str, command: str = "plan") -> Setup:
    def setup(tmp: Path) -> list[str]:
        spec, cal = reference_files(tmp)
        args = [command, str(spec), "--calibration", str(cal)]
        if command == "emit" and "-o" not in extra:
            args += ["-o", str(tmp / "out")]
        return [*args, *(e.format(tmp=tmp) for e in extra)]

    return setup


def calibrate_with(*extra: str, **changes: Any) -> Setup:
    """`plan-job calibrate` of the tiny CPU spec with changes; must stop before any job."""

    def setup(tmp: Path) -> list[str]:
        doc = copy.deepcopy(TINY_JIT)
        for path, value in changes.items():
            *parents, last = path.split("__")
            node = doc
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        return ["calibrate", str(write_spec(tmp, doc)), *(e.format(tmp=tmp) for e in extra)]

    return setup


def record_with(change: Callable[[dict[str, Any]], None]) -> Setup:
    """plan with a calibration record edited by ``change`` (its parsed YAML)."""

    def setup(tmp: Path) -> list[str]:
        spec, cal = reference_files(tmp)
        raw = yaml.safe_load(cal.read_text())
        change(raw)
        cal.write_text(yaml.safe_dump(raw))
        return ["plan", str(spec), "--calibration", str(cal)]

    return setup


def record_text(data: str | bytes) -> Setup:
    def setup(tmp: Path) -> list[str]:
        spec, cal = reference_files(tmp)
        cal.write_bytes(data if isinstance(data, bytes) else data.encode())
        return ["plan", str(spec), "--calibration", str(cal)]

    return setup


def measured(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        raw["measurement"][key] = value

    return change


def run_folder_with(command: list[str], damage: Callable[[Path], None]) -> Setup:
    """A run folder (a chain whose first job stopped at step 950) with ``damage`` done to it;
    `command` with {run} for its path."""

    def setup(tmp: Path) -> list[str]:
        run = stopped_folder(tmp)
        damage(run)
        return [part.format(run=run, tmp=tmp) for part in command]

    return setup


def write(name: str, data: str | bytes) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        path = run / name
        if path.is_dir():
            path.rmdir()
        path.write_bytes(data if isinstance(data, bytes) else data.encode())

    return damage


def make_dir(name: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        path = run / name
        if path.exists():
            path.unlink()
        path.mkdir()

    return damage


def remove(name: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        (run / name).unlink()

    return damage


ALIAS_BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
    "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
    "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
    "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n"
    "h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n"
    "name: *h\n"
)
NAN, INF = float("nan"), float("inf")
HUGE = 10**30


# --- the table ------------------------------------------------------------------------------

SPEC_FIELDS = [
    Case("name-300-chars", plan_with(name="x" * 300), ("name", "at most")),
    Case("name-empty", plan_with(name=""), ("name",)),
    Case("name-list", plan_with(name=[1, 2]), ("name",)),
    Case("name-newline", plan_with("emit", name="a\nb"), ("name",)),
    Case("samples-1e30", plan_with(data__samples="1e30"), ("data.samples",)),
    Case("samples-1e30-emit", plan_with("emit", data__samples=HUGE), ("data.samples",)),
    Case("samples-negative", plan_with(data__samples=-5), ("data.samples", ">= 1")),
    Case("samples-nan", plan_with(data__samples=NAN), ("data.samples",)),
    Case("samples-inf", plan_with(data__samples=INF), ("data.samples",)),
    Case("samples-text", plan_with(data__samples="lots"), ("data.samples",)),
    Case("samples-fraction", plan_with(data__samples=1.5), ("data.samples",)),
    Case("tokens-huge", plan_with(data__samples=DROP, data__tokens=2**80), ("data.tokens",)),
    Case("epochs-huge", plan_with(data__epochs=1e300), ("data.epochs",)),
    Case("epochs-nan", plan_with(data__epochs=NAN), ("data.epochs",)),
    Case("epochs-zero", plan_with(data__epochs=0), ("data.epochs",)),
    Case("a-year-long-plan", plan_with(data__samples=10**15), ("a year",)),
    Case("micro-batch-zero", plan_with(batch__micro_batch=0), ("batch.micro_batch",)),
    Case("micro-batch-huge", plan_with(batch__micro_batch=HUGE), ("batch.micro_batch",)),
    Case("global-batch-huge", plan_with(batch__global_batch=2**70), ("batch.global_batch",)),
    Case("grad-accum-text", plan_with(batch__grad_accum="two"), ("batch.grad_accum",)),
    Case("precision-fp64", plan_with(precision="fp64"), ("precision",)),
    Case("nodes-huge", plan_with(cluster__nodes=HUGE), ("cluster.nodes",)),
    Case("gpus-negative", plan_with(cluster__gpus_per_node=-1), ("cluster.gpus_per_node",)),
    Case("gpus-huge", plan_with(cluster__gpus_per_node=10**9), ("cluster.gpus_per_node",)),
    Case("cpus-huge", plan_with(cluster__cpus_per_task=10**12), ("cluster.cpus_per_task",)),
    Case("mem-words", plan_with(cluster__mem="lots"), ("cluster.mem",)),
    Case("partition-number", plan_with(cluster__partition=5), ("cluster.partition",)),
    Case("partition-newline", plan_with("emit", cluster__partition="a\nb"), ("partition",)),
    Case("account-empty", plan_with(cluster__account=""), ("cluster.account",)),
    Case("checkpoint-dir-empty", plan_with(checkpoint={"dir": ""}), ("checkpoint.dir",)),
    Case("checkpoint-dir-number", plan_with(checkpoint={"dir": 5}), ("checkpoint.dir",)),
    Case("checkpoint-dir-nul", plan_with("emit", checkpoint={"dir": "a\0b"}), ("checkpoint.dir",)),
    Case(
        "checkpoint-dir-unset-var",
        plan_with(checkpoint={"dir": "$PLANJOB_NO_SUCH_VAR/x"}),
        ("checkpoint.dir", "$PLANJOB_NO_SUCH_VAR is not set"),
    ),
    Case(
        "checkpoint-dir-a-file",
        plan_with("emit", checkpoint={"dir": "run.yaml"}),
        ("checkpoint.dir",),
    ),
    Case(
        "checkpoint-interval-huge",
        plan_with(checkpoint={"interval_steps": HUGE}),
        ("checkpoint.interval_steps",),
    ),
    Case("checkpoint-keep-zero", plan_with(checkpoint={"keep": 0}), ("checkpoint.keep",)),
    Case("checkpoint-keep-huge", plan_with(checkpoint={"keep": HUGE}), ("checkpoint.keep",)),
    Case("deadline-nan", plan_with(plan__deadline_hours=NAN), ("plan.deadline_hours",)),
    Case("deadline-inf", plan_with(plan__deadline_hours=INF), ("plan.deadline_hours",)),
    Case("deadline-tiny", plan_with(plan__deadline_hours=1e-30), ("plan.deadline_hours",)),
    Case("floor-two", plan_with(plan__efficiency_floor=2), ("plan.efficiency_floor",)),
    Case("choose-by", plan_with(plan__choose_by="soonest"), ("plan.choose_by", "soonest", "run")),
    Case("queue-days", plan_with(plan__queue_history_days=0), ("plan.queue_history_days", ">= 1")),
    Case("max-nodes-huge", plan_with(plan__max_nodes=HUGE), ("plan.max_nodes",)),
    Case(
        "interconnect-tiny",
        plan_with(plan__interconnect_gbps=1e-300),
        ("plan.interconnect_gbps",),
    ),
    Case(
        "latency-huge",
        plan_with(plan__allreduce_latency_s=1e300),
        ("plan.allreduce_latency_s",),
    ),
    Case("mtbf-tiny", plan_with(plan__mtbf_hours=1e-300), ("plan.mtbf_hours",)),
    Case(
        "interruptions-huge",
        plan_with(plan__interruptions_per_gpu_day=1e300),
        ("plan.interruptions_per_gpu_day",),
    ),
    Case("spread-two", plan_with(plan__run_to_run_spread=2), ("plan.run_to_run_spread",)),
    Case("cost-huge", plan_with(plan__gpu_hour_cost=1e308), ("plan.gpu_hour_cost",)),
    Case("cost-nan", plan_with(plan__gpu_hour_cost=NAN), ("plan.gpu_hour_cost",)),
    Case(
        "eval-interval-huge",
        plan_with(plan__eval_interval_steps=HUGE),
        ("plan.eval_interval_steps",),
    ),
    Case(
        "eval-s-huge",
        plan_with(plan__eval_interval_steps=10, plan__eval_s=1e300),
        ("plan.eval_s",),
    ),
    Case("eval-batches-huge", plan_with(plan__eval_batches=HUGE), ("plan.eval_batches",)),
    Case(
        "unmeasured-yes",
        plan_with(plan__allow_unmeasured_scaling="yes"),
        ("plan.allow_unmeasured_scaling",),
    ),
    Case("unknown-key", plan_with(data__sample=5), ("data.sample",)),
    Case("section-a-list", plan_with(cluster=[1, 2]), ("cluster",)),
    Case("workload-name-number", plan_with(workload__name=5), ("workload.name",)),
    Case("workload-preset", plan_with(workload__preset="huge"), ("workload.preset",)),
    Case(
        "workload-override-huge",
        plan_with(workload__overrides={"depth": HUGE}),
        ("workload.overrides",),
    ),
    Case("workload-overrides-text", plan_with(workload__overrides="x"), ("workload.overrides",)),
    Case("workload-compile-text", plan_with(workload__compile="yes"), ("workload.compile",)),
    Case("workload-function", plan_with(workload={"function": "not a path"}), ("function",)),
    Case("command-unclosed-quote", plan_with(command="python 'x"), ("command.run",)),
    Case("command-unknown-field", plan_with(command="python {nope}"), ("command.run",)),
    Case(
        "command-grace-inf",
        plan_with(command={"run": "python x.py", "stop_grace_s": INF}),
        ("command.stop_grace_s",),
    ),
    Case(
        "command-grace-huge",
        plan_with(command={"run": "python x.py", "stop_grace_s": 1e300}),
        ("command.stop_grace_s",),
    ),
]

CALIBRATION_FIELDS = [
    Case("cal-max-steps-huge", calibrate_with(calibration__max_steps=HUGE), ("max_steps",)),
    Case("cal-min-steps-huge", calibrate_with(calibration__min_steps=HUGE), ("min_steps",)),
    Case(
        "cal-max-seconds-huge",
        calibrate_with(calibration__max_seconds=1e300),
        ("calibration.max_seconds",),
    ),
    Case("cal-max-seconds-nan", calibrate_with("--max-seconds", "nan"), ("max_seconds",)),
    Case("cal-max-seconds-inf", calibrate_with("--max-seconds", "inf"), ("max_seconds",)),
    Case("cal-target-ci-two", calibrate_with("--target-ci", "2"), ("target_ci",)),
    Case("cal-target-ci-nan", calibrate_with("--target-ci", "nan"), ("target_ci",)),
    Case("cal-time-limit-zero", calibrate_with("--time-limit", "0"), ("time_limit_minutes",)),
    Case(
        "cal-time-limit-huge",
        calibrate_with("--time-limit", str(HUGE)),
        ("time_limit_minutes",),
    ),
    Case(
        "cal-pending-inf",
        calibrate_with(calibration__pending_timeout_s=INF),
        ("calibration.pending_timeout_s",),
    ),
    Case("cal-peak-negative", calibrate_with(calibration__peak_tflops=-1), ("peak_tflops",)),
    Case("cal-seed-negative", calibrate_with(calibration__seed=-1), ("calibration.seed",)),
    Case("cal-seed-huge", calibrate_with(calibration__seed=2**70), ("calibration.seed",)),
    Case("cal-nodes-text", calibrate_with("--nodes", "a,b"), ("--nodes",)),
    Case("cal-nodes-empty-item", calibrate_with("--nodes", "1,,2"), ("--nodes",)),
    Case("cal-nodes-zero", calibrate_with("--nodes", "0"), ("calibration.nodes",)),
    Case("cal-nodes-huge", calibrate_with("--nodes", str(HUGE)), ("calibration.nodes",)),
    Case(
        "cal-tasks-huge",
        calibrate_with(calibration__tasks_per_node=HUGE),
        ("calibration.tasks_per_node",),
    ),
    Case("cal-executor", calibrate_with(calibration__executor="cloud"), ("calibration.executor",)),
    Case("cal-set-no-equals", calibrate_with("--set", "batch"), ("--set",)),
    Case("cal-set-empty-part", calibrate_with("--set", "a..b=1"), ("--set",)),
    Case("cal-set-into-scalar", calibrate_with("--set", "precision.x=1"), ("precision",)),
    Case("cal-set-alias-bomb", calibrate_with("--set", "name=[&a [1,1], *a]"), ("name",)),
    Case("cal-command-empty", calibrate_with("--command", ""), ("command.run",)),
    Case("cal-output-a-folder", calibrate_with("-o", "{tmp}"), ("-o",)),
    Case("cal-jobs-dir-a-file", calibrate_with("--jobs-dir", "{tmp}/run.yaml"), ("--jobs-dir",)),
    Case("cal-output-name-too-long", calibrate_with("-o", "{tmp}/" + "y" * 300 + ".yaml"), ("-o",)),
]

SPEC_FILES = [
    Case("spec-not-utf8", plan_text(b"name: caf\xe9\n"), ("spec", "UTF-8")),
    Case("spec-binary", plan_text(bytes(range(256))), ("spec",)),
    Case("spec-alias-bomb", plan_text(ALIAS_BOMB), ("spec", "alias")),
    Case("spec-yaml-error", plan_text("name: [unclosed\n"), ("spec", "YAML")),
    Case("spec-a-list", plan_text("- a\n- b\n"), ("top level",)),
    Case("spec-empty", plan_text(""), ("required",)),
    Case("spec-a-folder", plan_args(), ("SPEC", "is a directory")),  # replaced below
    Case("spec-missing", plan_args(), ("spec",)),  # replaced below
    Case("spec-tabs", plan_text("name:\tx\n\tdata: 1\n"), ("spec",)),
    Case("spec-duplicate-anchor-merge", plan_text("<<: 5\n"), ("spec",)),
    Case("spec-python-tag", plan_text("name: !!python/object:os.system x\n"), ("spec",)),
]

RECORDS = [
    Case("record-not-utf8", record_text(b"format: caf\xe9\n"), ("--calibration", "UTF-8")),
    Case("record-binary", record_text(bytes(range(256))), ("--calibration",)),
    Case("record-alias-bomb", record_text(ALIAS_BOMB), ("--calibration", "alias")),
    Case("record-a-list", record_text("- 1\n"), ("--calibration",)),
    Case("record-empty", record_text(""), ("--calibration",)),
    Case("record-step-nan", record_with(measured("step_mean_s", NAN)), ("step_mean_s",)),
    Case("record-step-negative", record_with(measured("step_mean_s", -1.0)), ("step_mean_s",)),
    Case("record-step-huge", record_with(measured("step_mean_s", 1e300)), ("step_mean_s",)),
    Case("record-step-text", record_with(measured("step_mean_s", "fast")), ("step_mean_s",)),
    Case("record-startup-inf", record_with(measured("startup_s", INF)), ("startup_s",)),
    Case("record-params-huge", record_with(measured("params", 2**80)), ("params",)),
    Case(
        "record-samples-per-step-zero",
        record_with(measured("samples_per_step", 0)),
        ("samples_per_step",),
    ),
    Case("record-step-times-text", record_with(measured("step_times_s", "x")), ("step_times",)),
    Case("record-threads-negative", record_with(measured("torch_threads", -1)), ("torch_threads",)),
    Case("record-compile-cache", record_with(measured("compile_cache", "hot")), ("compile_cache",)),
    Case(
        "record-step-times-nan",
        record_with(measured("step_times_s", [NAN, 1.0])),
        ("step_times",),
    ),
    Case(
        "record-spec-a-list",
        record_with(lambda raw: raw.update(spec=[1])),
        ("cal.yaml (spec)", "expected a mapping"),
    ),
    Case(
        "record-measurement-a-list",
        record_with(lambda raw: raw.update(measurement=[1])),
        ("--calibration",),
    ),
    Case(
        "record-job-text",
        record_with(lambda raw: raw.update(job="x")),
        ("--calibration",),
    ),
    Case(
        "record-scaling-garbage",
        record_with(lambda raw: raw.update(scaling={"points": "x"})),
        ("--calibration",),
    ),
    Case("record-a-folder", plan_args(), ("--calibration",)),  # replaced below
]

RUN_FOLDERS = [
    Case(
        "plan-yaml-garbage",
        run_folder_with(["resubmit", "{run}", "--dry-run"], write("plan.yaml", "::: [")),
        ("plan.yaml",),
    ),
    Case(
        "plan-yaml-not-utf8",
        run_folder_with(["resubmit", "{run}", "--dry-run"], write("plan.yaml", b"a: \xe9\n")),
        ("plan.yaml",),
    ),
    Case(
        "plan-yaml-alias-bomb",
        run_folder_with(["resubmit", "{run}", "--dry-run"], write("plan.yaml", ALIAS_BOMB)),
        ("plan.yaml",),
    ),
    Case(
        "plan-yaml-a-folder",
        run_folder_with(["resubmit", "{run}", "--dry-run"], make_dir("plan.yaml")),
        ("plan.yaml",),
    ),
    Case(
        "train-json-garbage",
        run_folder_with(["resubmit", "{run}", "--dry-run"], write("train.json", "{")),
        ("train.json",),
    ),
    Case(
        "train-json-nan",
        run_folder_with(
            ["resubmit", "{run}", "--dry-run"],
            lambda run: (run / "train.json").write_text(
                (run / "train.json")
                .read_text()
                .replace('"total_steps": 3907', '"total_steps": NaN')
            ),
        ),
        ("train.json",),
    ),
    Case(
        "train-json-binary",
        run_folder_with(["submit", "{run}"], write("train.json", bytes(range(256)))),
        ("train.json",),
    ),
    Case(
        "jobs-yaml-garbage",
        run_folder_with(["eta", "{run}"], write("jobs.yaml", "jobs: [{segment: x}]\n")),
        ("jobs.yaml",),
    ),
    Case(
        "jobs-yaml-not-utf8",
        run_folder_with(["eta", "{run}"], write("jobs.yaml", b"jobs: \xe9\n")),
        ("jobs.yaml",),
    ),
    Case(
        "jobs-yaml-a-list",
        run_folder_with(["eta", "{run}"], write("jobs.yaml", "- 1\n")),
        ("jobs.yaml",),
    ),
    Case(
        "jobs-yaml-alias-bomb",
        run_folder_with(["resubmit", "{run}", "--dry-run"], write("jobs.yaml", ALIAS_BOMB)),
        ("jobs.yaml",),
    ),
    Case(
        "jobs-yaml-a-folder",
        run_folder_with(["eta", "{run}"], make_dir("jobs.yaml")),
        ("jobs.yaml",),
    ),
    Case(
        "progress-binary",
        run_folder_with(["eta", "{run}"], write("progress.jsonl", bytes(range(256)) * 4)),
        ("progress",),
    ),
    Case(
        "progress-a-folder",
        run_folder_with(["eta", "{run}"], make_dir("progress.jsonl")),
        ("progress",),
    ),
    Case(
        "marker-garbage-force",
        run_folder_with(
            ["emit", "{tmp}/run.yaml", "--calibration", "{tmp}/cal.yaml", "-o", "{run}", "--force"],
            lambda run: (write(".plan-job-run", b"\xff\xfe")(run), reference_files(run.parent)),
        ),
        ("--force",),
    ),
    Case("submit-not-a-run", run_folder_with(["submit", "{tmp}"], lambda run: None), ("{tmp}",)),
    Case(
        "submit-a-file",
        run_folder_with(["submit", "{run}/plan.yaml"], lambda run: None),
        ("plan.yaml",),
    ),
    Case(
        "submit-after-garbage",
        run_folder_with(["submit", "{run}", "--after", "1;rm"], lambda run: None),
        ("--after",),
    ),
    Case(
        "eta-garbage-target",
        run_folder_with(["eta", "not-a-run-or-job"], lambda run: None),
        ("not-a-run-or-job",),
    ),
    Case(
        "eta-watch-zero",
        run_folder_with(["eta", "{run}", "--watch", "0"], lambda run: None),
        ("--watch",),
    ),
    Case(
        "eta-watch-nan",
        run_folder_with(["eta", "{run}", "--watch", "nan"], lambda run: None),
        ("--watch",),
    ),
    Case(
        "resubmit-nodes-zero",
        run_folder_with(["resubmit", "{run}", "--nodes", "0"], lambda run: None),
        ("--nodes",),
    ),
    Case(
        "resubmit-retries-negative",
        run_folder_with(["resubmit", "{run}", "--max-retries", "-1"], lambda run: None),
        ("--max-retries",),
    ),
    Case(
        "tighten-garbage",
        run_folder_with(["tighten", "{tmp}/nothing-here"], lambda run: None),
        ("nothing-here",),
    ),
]

FLAGS = [
    Case("plan-deadline-nan", plan_args("--deadline", "nan"), ("deadline",)),
    Case("plan-deadline-negative", plan_args("--deadline", "-1"), ("deadline",)),
    Case("plan-deadline-inf", plan_args("--deadline", "inf"), ("deadline",)),
    Case("plan-nodes-zero", plan_args("--nodes", "0"), ("--nodes",)),
    Case("plan-nodes-huge", plan_args("--nodes", str(HUGE)), ("--nodes",)),
    Case("plan-set-alias-bomb", plan_args("--set", "name=[&a [1,1], *a]"), ("name",)),
    Case("plan-calibration-missing", plan_args("--calibration", "{tmp}/none.yaml"), ("none.yaml",)),
    Case("emit-o-a-file", plan_args("-o", "{tmp}/run.yaml", command="emit"), ("run.yaml",)),
    Case(
        "emit-o-name-too-long",
        plan_args("-o", "{tmp}/" + "z" * 300, command="emit"),
        ("-o",),
    ),
    Case("emit-o-under-a-file", plan_args("-o", "{tmp}/run.yaml/x", command="emit"), ("-o",)),
    Case("emit-python-newline", plan_args("--python", "py\nthon", command="emit"), ("--python",)),
    Case(
        "emit-template-missing",
        plan_args("--template", "{tmp}/none.j2", command="emit"),
        ("--template",),
    ),
    Case("emit-template-folder", plan_args("--template", "{tmp}", command="emit"), ("--template",)),
    Case("history-limit-negative", lambda tmp: ["history", "--limit", "-1"], ("--limit",)),
    Case("history-a-folder", lambda tmp: ["history", "--history", str(tmp)], ("history",)),
]


def template_case(id: str, text: str | bytes, says: tuple[str, ...]) -> Case:
    def setup(tmp: Path) -> list[str]:
        spec, cal = reference_files(tmp)
        template = tmp / "mine.j2"
        template.write_bytes(text if isinstance(text, bytes) else text.encode())
        return [
            "emit",
            str(spec),
            "--calibration",
            str(cal),
            "-o",
            str(tmp / "out"),
            "--template",
            str(template),
        ]

    return Case(id, setup, says)


TEMPLATES = [
    template_case(
        "template-undefined-variable",
        '{% extends "segment.sbatch.j2" %}{% block prologue %}{{ no_such_thing }}{% endblock %}',
        ("--template", "no_such_thing"),
    ),
    template_case("template-syntax", "{% block x %}", ("--template",)),
    template_case("template-divides-by-zero", "{{ 1 / 0 }}", ("--template",)),
    template_case("template-binary", bytes(range(256)), ("--template",)),
    template_case("template-extends-missing", '{% extends "nope.j2" %}', ("--template", "nope.j2")),
]

# Damage a reader is built to go past (a progress line being written, emit.yaml that the
# scripts repeat): the command goes on with what it can read, and shows it.
TOLERATED = [
    Case(
        "progress-nan-steps",
        run_folder_with(
            ["eta", "{run}"],
            write(
                "progress.jsonl",
                '{"event": "start", "time": 1, "step": 0, "total_steps": 10}\n'
                '{"event": "step", "time": NaN, "step": 1, "step_s": NaN}\n'
                '{"event": "step", "time": 3, "step": 1e400, "step_s": 1}\n',
            ),
        ),
        ("step",),
    ),
    Case(
        "progress-wrong-types",
        run_folder_with(
            ["eta", "{run}"],
            write(
                "progress.jsonl",
                '{"event": "start", "time": "x", "step": "y", "total_steps": [1]}\n'
                '{"event": "step", "time": {}, "step": [], "step_s": "z"}\n',
            ),
        ),
        ("step",),
    ),
    Case(
        "progress-huge-total",
        run_folder_with(
            ["eta", "{run}"],
            write(
                "progress.jsonl",
                '{"event": "start", "time": 1, "step": 0, "total_steps": 1e300}\n'
                '{"event": "step", "time": 2, "step": 1, "step_s": 1}\n'
                '{"event": "step", "time": 3, "step": 2, "step_s": 1}\n',
            ),
        ),
        ("step",),
    ),
    Case(
        "emit-yaml-garbage",
        run_folder_with(["resubmit", "{run}", "--dry-run"], write("emit.yaml", bytes(range(256)))),
        ("resubmit #1",),
    ),
    Case("owner-garbage", plan_args(command="emit"), ("warning:", "ckpt-000000100.pt")),
    Case("env-columns-text", plan_args(), ("plan-test",), {"COLUMNS": "wide"}),
    Case("env-columns-negative", plan_args(), ("plan-test",), {"COLUMNS": "-5"}),
    Case("env-columns-zero", plan_args(), ("plan-test",), {"COLUMNS": "0"}),
    Case("env-columns-huge", plan_args(), ("plan-test",), {"COLUMNS": "9" * 30}),
    Case("env-history-a-folder", plan_args(command="emit"), ("warning:", "nothing recorded")),
    Case("env-history-not-sqlite", plan_args(command="emit"), ("warning:", "nothing recorded")),
    Case("env-history-empty", plan_args(command="emit"), ("wrote",), {"PLANJOB_HISTORY": ""}),
    Case(
        "env-slurm-end-time-garbage",
        run_folder_with(["eta", "{run}"], lambda run: None),
        ("step 950",),
        {"SLURM_JOB_ID": "11", "SLURM_JOB_END_TIME": "soon"},
    ),
]


def trainer_state(data: str | bytes) -> Setup:
    """eta of a Hugging Face trainer_state.json holding ``data``."""

    def setup(tmp: Path) -> list[str]:
        path = tmp / "out" / "trainer_state.json"
        path.parent.mkdir()
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return ["eta", str(path)]

    return setup


OTHER_FILES = [
    Case("trainer-state-binary", trainer_state(bytes(range(256))), ("trainer_state.json",)),
    Case(
        "trainer-state-wrong-types",
        trainer_state('{"log_history": "x", "max_steps": [], "global_step": {}}'),
        ("trainer_state.json",),
    ),
    Case(
        "trainer-state-nan",
        trainer_state('{"log_history": [{"step": NaN}], "max_steps": 1e400, "global_step": -1}'),
        ("trainer_state.json",),
    ),
    Case("eta-job-id-without-slurm", lambda tmp: ["eta", "12345"], ("no Slurm client here",)),
    Case("history-db-not-sqlite", lambda tmp: ["history"], ("history",)),  # file set below
]

# Environment variables a command reads, given badly: exit 2 where the command cannot go on.
ENVIRONMENT = [
    Case("env-history-a-folder-history", lambda tmp: ["history"], ("history",)),
    Case(
        "env-slurm-conf-missing",
        lambda tmp: ["calibrate", str(write_spec(tmp, TINY_JIT)), "--executor", "slurm"],
        ("SLURM_CONF=",),
        {"SLURM_CONF": "/no/such/slurm.conf"},
    ),
]


def _special(case: Case, tmp: Path) -> tuple[list[str], dict[str, str]]:
    """Cases whose set-up is a file the common builders cannot express."""
    args = case.setup(tmp)
    env: dict[str, str] = {}
    if case.id == "spec-a-folder":
        args[1] = str(tmp)
    elif case.id == "spec-missing":
        args[1] = str(tmp / "nope.yaml")
    elif case.id == "record-a-folder":
        args[3] = str(tmp)
    elif case.id in ("env-history-a-folder", "env-history-a-folder-history"):
        env["PLANJOB_HISTORY"] = str(tmp)
    elif case.id == "history-db-not-sqlite":
        (tmp / "history.sqlite").write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)
    elif case.id == "owner-garbage":
        (tmp / "checkpoints").mkdir()
        (tmp / "checkpoints" / ".plan-job-owner").write_bytes(bytes(range(256)))
        (tmp / "checkpoints" / "ckpt-000000100.pt").write_bytes(b"weights")
    elif case.id == "env-slurm-conf-missing":
        bin_dir = tmp / "fake-slurm"  # commands that exist: the configuration is what is wrong
        bin_dir.mkdir()
        for name in ("scontrol", "sbatch", "sinfo", "squeue", "scancel"):
            (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
            (bin_dir / name).chmod(0o755)
        env["PATH"] = str(bin_dir)
    elif case.id == "env-history-not-sqlite":
        (tmp / "h.sqlite").write_bytes(b"not a database" * 100)
        env["PLANJOB_HISTORY"] = str(tmp / "h.sqlite")
    return args, env


EXIT_2 = (
    SPEC_FIELDS
    + CALIBRATION_FIELDS
    + SPEC_FILES
    + RECORDS
    + RUN_FOLDERS
    + FLAGS
    + TEMPLATES
    + OTHER_FILES
    + ENVIRONMENT
)


# --- running them ---------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            info = path.lstat()
            found[str(path.relative_to(folder))] = (info.st_size, info.st_mtime_ns)
    return found


@contextlib.contextmanager
def inside(folder: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def run_case(case: Case, tmp: Path) -> tuple[Any, dict[str, tuple[int, int]], dict[str, Any]]:
    (tmp / "home").mkdir()
    (tmp / "empty-path").mkdir()
    args, env = _special(case, tmp)
    env = {
        "PATH": str(tmp / "empty-path"),  # no Slurm: nothing to submit to by mistake
        "HOME": str(tmp / "home"),
        "PLANJOB_HISTORY": str(tmp / "history.sqlite"),
        "COLUMNS": "100",
        **case.env,
        **env,
    }
    before = snapshot(tmp)
    with inside(tmp):
        result = CliRunner().invoke(cli, args, env=env, catch_exceptions=True)
    return result, before, snapshot(tmp)


@pytest.mark.parametrize("case", EXIT_2, ids=[case.id for case in EXIT_2])
def test_bad_input_exits_2_naming_it_and_writes_nothing(case: Case, tmp_path: Path) -> None:
    result, before, after = run_case(case, tmp_path)
    message = " ".join((result.stderr or result.output).split())
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{case.id}: escaped as {result.exception!r}") from result.exception
    assert result.exit_code == 2, f"{case.id}: exit {result.exit_code}: {message[:2000]}"
    assert "Traceback" not in message
    says = [word.format(tmp=tmp_path) for word in case.says]
    assert all(word in message for word in says), f"{case.id}: {message[:2000]}"
    assert len(message) < 4000, f"{case.id}: a message of {len(message)} characters"
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert not changed, f"{case.id}: wrote {sorted(changed)}"


@pytest.mark.parametrize("case", TOLERATED, ids=[case.id for case in TOLERATED])
def test_damage_a_reader_goes_past_is_no_traceback(case: Case, tmp_path: Path) -> None:
    result, before, after = run_case(case, tmp_path)
    message = " ".join(result.output.split())
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{case.id}: escaped as {result.exception!r}") from result.exception
    assert result.exit_code == 0, f"{case.id}: exit {result.exit_code}: {message[:2000]}"
    assert all(word in message for word in case.says), f"{case.id}: {message[:2000]}"
    written = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    allowed = (
        {"out", "home", "checkpoints"} if "history" in case.id or "owner" in case.id else set()
    )
    assert {k.split("/")[0] for k in written} <= allowed | {"history.sqlite"}, written


def test_the_table_is_wide() -> None:
    """The sweep covers every kind of input; the count is reported in the issue's notes."""
    assert len(EXIT_2) + len(TOLERATED) >= 188


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A folder on a read-only filesystem: a tmpfs mounted ro where we are root (root writes
    through permissions), a folder without write permission otherwise."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert mounted.returncode == 0, f"cannot mount a read-only tmpfs: {mounted.stderr}"
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize(
    ("name", "args", "says"),
    [
        ("emit", ["emit", "{spec}", "--calibration", "{cal}", "-o", "{ro}/run"], "-o: got"),
        (
            "calibrate -o",
            ["calibrate", "{tiny}", "-o", "{ro}/cal.yaml"],
            "cannot write the record there: Read-only file system",
        ),
        (
            "calibrate checkpoint.dir",
            ["calibrate", "{tiny}", "--set", "checkpoint.dir={ro}/ck"],
            "checkpoint.dir: got",
        ),
        (
            "calibrate --jobs-dir",
            ["calibrate", "{tiny}", "--jobs-dir", "{ro}/jobs", "-o", "{tmp}/c.yaml"],
            "--jobs-dir",
        ),
    ],
)
def test_a_read_only_filesystem_is_named(
    read_only: Path, tmp_path: Path, name: str, args: list[str], says: str
) -> None:
    spec, cal = reference_files(tmp_path)
    tiny = write_spec(tmp_path, TINY_JIT, "tiny.yaml")
    values = {"spec": spec, "cal": cal, "ro": read_only, "tiny": tiny, "tmp": tmp_path}
    case = Case(name, lambda _tmp: [a.format(**values) for a in args], (says,))
    result, before, after = run_case(case, tmp_path)
    message = " ".join((result.stderr or result.output).split())
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == 2, message
    assert says in message, message
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert not changed, changed
