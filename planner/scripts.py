"""From a plan to a folder of sbatch scripts that run the training to its last step.

The folder holds plan.yaml (what was planned), train.json (what the training entry reads),
segment-NN.sbatch (one Slurm job each, chained with afterany at submission) and logs/. It is
written into a temporary sibling and renamed into place, so it is whole or absent.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from jobs.train_config import TrainConfig
from planner.atomic import write_text_atomic
from planner.checkpoint_dir import FIELD as CHECKPOINT_FIELD
from planner.checkpoint_dir import check_writable, foreign_checkpoints
from planner.errors import SpecError
from planner.plan import Plan, Segment
from planner.plan_file import EmitSettings, emit_settings_text
from planner.run_folder import (
    EMIT_FILE,
    LOGS_DIR,
    MARKER,
    PLAN_FILE,
    PROGRESS_FILE,
    TRAIN_FILE,
    RunFolderExistsError,
    check_output_folder,
    new_marker,
)
from planner.units import slurm_minutes

__all__ = ["PLAN_FILE", "TRAIN_FILE", "EmitOptions", "RunFolderExistsError", "emit"]

TEMPLATE = "segment.sbatch.j2"
# Left between the training's stop and the job's end for the last progress line, the
# process exit and Slurm's step clean-up.
STOP_MARGIN_S = 20


@dataclass(frozen=True)
class EmitOptions:
    out_dir: Path
    workdir: Path  # the jobs' working directory: relative paths in the spec resolve here
    python: str = sys.executable  # the interpreter on the nodes (a shared venv, usually)
    template: Path | None = None  # a user template extending segment.sbatch.j2
    force: bool = False  # replace an existing run folder that plan-job wrote
    correction: float | None = None  # the history correction the plan carries, for emit.yaml


@dataclass(frozen=True)
class EmittedRun:
    folder: Path
    plan_path: Path
    train_config_path: Path
    scripts: tuple[Path, ...]
    run_id: str = ""
    warnings: tuple[str, ...] = ()  # for the user to read before submitting


def script_name(segment: Segment) -> str:
    return f"segment-{segment.index:02d}.sbatch"


def train_config(plan: Plan, run_dir: Path, workdir: Path, run_id: str = "") -> TrainConfig:
    from jobs.contract.work import Work

    spec = plan.spec
    checkpoint_dir = Path(spec.checkpoint.dir)
    if not checkpoint_dir.is_absolute():
        checkpoint_dir = workdir / checkpoint_dir
    work = Work(
        builder_path=spec.workload.builder_path,
        workload_name=spec.workload.name,
        preset=spec.workload.preset,
        overrides=dict(spec.workload.overrides),
        micro_batch=spec.batch.micro_batch,
        grad_accum=plan.grad_accum,
        precision=spec.precision,
        device=spec.calibration.device,
        seed=spec.calibration.seed,
        compile=spec.workload.compile,
        **_command_fields(plan, workdir),
    )
    return TrainConfig(
        work=work,
        total_steps=plan.total_steps,
        checkpoint_dir=str(checkpoint_dir),
        checkpoint_interval_steps=plan.checkpoint_interval_steps,
        keep_checkpoints=spec.checkpoint.keep,
        progress_path=str(run_dir / PROGRESS_FILE),
        run_id=run_id,
        eval_interval_steps=spec.plan.eval_interval_steps or 0,
        eval_batches=spec.plan.eval_batches,
    )


def _command_fields(plan: Plan, workdir: Path) -> dict[str, object]:
    command = plan.spec.command
    if command is None:
        return {}
    output_dir = ""
    if command.output_dir is not None:
        output_dir = str(workdir / command.output_dir)  # an absolute one stays as it is
    return {
        "command": command.argv,
        "report": command.report,
        "output_dir": output_dir,
        "stop_grace_s": command.stop_grace_s,
    }


def sbatch_options(plan: Plan, segment: Segment, run_dir: Path) -> list[tuple[str, str | None]]:
    """The #SBATCH lines after --job-name, in order; None marks a flag without a value."""
    cluster = plan.spec.cluster
    options: list[tuple[str, str | None]] = []
    for key, value in (
        ("partition", cluster.partition),
        ("account", cluster.account),
        ("qos", cluster.qos),
    ):
        if value is not None:
            options.append((key, value))
    options += [
        ("nodes", str(plan.nodes)),
        # One training process per GPU (one per node on CPU): jobs.distributed reads srun's ranks.
        ("ntasks-per-node", str(max(plan.gpus_per_node, 1))),
        ("cpus-per-task", str(cluster.cpus_per_task)),
    ]
    if plan.gpus_per_node > 0:
        options.append(("gres", f"gpu:{plan.gpus_per_node}"))
    if cluster.mem is not None:
        options.append(("mem", cluster.mem))
    options += [
        ("time", slurm_minutes(segment.time_limit_minutes)),
        ("time-min", slurm_minutes(min(segment.time_min_minutes, segment.time_limit_minutes))),
        ("signal", plan.signal_option),
        # A requeued job (preemption, node failure) resumes from the newest checkpoint too.
        ("requeue", None),
        ("open-mode", "append"),
        ("output", str(run_dir / LOGS_DIR / f"segment-{segment.index:02d}-%j.out")),
    ]
    return options


def launch_command(plan: Plan, python: str, config_path: Path) -> str:
    """srun starts every rank; the training sets up torch.distributed from Slurm's env."""
    argv = ["srun", "--kill-on-bad-exit=1", python, "-m", "jobs.train", str(config_path)]
    return " ".join(shlex.quote(arg) for arg in argv)


def check_one_line(plan: Plan, options: EmitOptions, run_dir: Path) -> None:
    """A line break in a value would end its #SBATCH line or comment: quoting cannot help."""
    cluster = plan.spec.cluster
    values = {
        "name": plan.spec.name,
        "cluster.partition": cluster.partition,
        "cluster.account": cluster.account,
        "cluster.qos": cluster.qos,
        "cluster.mem": cluster.mem,
        "checkpoint.dir": plan.spec.checkpoint.dir,
        "--output": str(run_dir),
        "working directory": str(options.workdir),
        "--python": options.python,
    }
    for field, value in values.items():
        if value is not None and any(ord(char) < 32 for char in value):
            raise SpecError(field, value, "must not contain line breaks or control characters")


def render(plan: Plan, segment: Segment, options: EmitOptions, run_dir: Path) -> str:
    import jinja2

    check_one_line(plan, options, run_dir)

    import templates

    search = [str(Path(templates.__file__).resolve().parent)]
    name = TEMPLATE
    if options.template is not None:
        if not options.template.is_file():
            raise SpecError("--template", str(options.template), "no such file")
        search.insert(0, str(options.template.resolve().parent))
        name = options.template.name
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(search),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["q"] = lambda value: shlex.quote(str(value))
    try:
        template = env.get_template(name)
    except jinja2.TemplateError as exc:
        raise SpecError(
            "--template", str(options.template), f"not a usable template: {exc}"
        ) from exc
    return template.render(
        version=_version(),
        run_name=plan.spec.name,
        job_name=f"plan-job-{plan.spec.name}",
        plan_path=str(run_dir / PLAN_FILE),
        segment=segment,
        segments=len(plan.segments),
        sbatch_options=sbatch_options(plan, segment, run_dir),
        workdir=str(options.workdir),
        run_dir=str(run_dir),
        stop_margin_s=STOP_MARGIN_S,
        signal=plan.signal,
        signal_option=plan.signal_option,
        command=launch_command(plan, options.python, run_dir / TRAIN_FILE),
    )


def emit(plan: Plan, options: EmitOptions) -> EmittedRun:
    """Write the run folder whole, or not at all."""
    out_dir = options.out_dir.resolve()
    check_output_folder(out_dir, options.force, Path.cwd(), Path.home())
    workdir = options.workdir.resolve()
    # Rendered against the final path: the scripts name where they will live.
    rendered = {script_name(s): render(plan, s, options, out_dir) for s in plan.segments}
    marker = new_marker()
    config = train_config(plan, out_dir, workdir, marker.run_id)
    checkpoints = Path(config.checkpoint_dir)
    check_writable(checkpoints, plan.spec.source)
    foreign = foreign_checkpoints(checkpoints, marker.run_id, bool(config.command))
    warnings = ()
    if foreign is not None:
        warnings = (
            f"{foreign.describe()}; `plan-job submit` refuses to start unless given "
            f"--resume-foreign: give a new run an empty {CHECKPOINT_FIELD}",
        )
    template = options.template.resolve() if options.template else None
    # What resubmit needs to render more segments the same way; the plan does not know it.
    settings = EmitSettings(workdir, options.python, template, options.correction, EMIT_FILE)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (staging / LOGS_DIR).mkdir()
        write_text_atomic(staging / PLAN_FILE, yaml.safe_dump(plan.to_dict(), sort_keys=False))
        write_text_atomic(staging / TRAIN_FILE, config.to_json() + "\n")
        write_text_atomic(staging / EMIT_FILE, emit_settings_text(settings))
        for name, text in rendered.items():
            write_text_atomic(staging / name, text, mode=0o755)
        # Last: a folder holds the marker only once everything else is in it.
        write_text_atomic(staging / MARKER, marker.to_json())
        staging.chmod(0o755)
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return EmittedRun(
        folder=out_dir,
        plan_path=out_dir / PLAN_FILE,
        train_config_path=out_dir / TRAIN_FILE,
        scripts=tuple(out_dir / name for name in rendered),
        run_id=marker.run_id,
        warnings=warnings,
    )


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{staging.name[-8:]}")
    out_dir.rename(old)
    staging.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _version() -> str:
    try:
        return version("plan-job")
    except PackageNotFoundError:
        return "unknown"
