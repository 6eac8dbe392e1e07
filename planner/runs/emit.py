"""From a plan to a folder of sbatch scripts that run the training to its last step.

The folder holds plan.yaml (what was planned), train.json (what the training entry reads),
emit.yaml, segment-NN.sbatch (one Slurm job each, chained with afterany at submission) and
logs/ (planner.runs.run_folder names and writes them). It is written into a temporary sibling
and renamed into place, so it is whole or absent.

--force deletes the folder it replaces, so it must never reach a folder that holds anything
but plan-job's own files: not the working directory or one above it, not $HOME, not a folder
without the marker, not a marked folder into which someone put files of their own (a
checkpoint folder, notes): check_output_folder.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from jobs.contract.train_config import DEFAULT_LOCK_HEARTBEAT_S, TrainConfig
from planner.errors import RunFolderExistsError, SpecError, UnsafeRunFolderError
from planner.model.plan import Plan, Segment
from planner.runs.folder_lock import exclusive_claim
from planner.runs.hang_timeouts import hang_timeouts
from planner.runs.run_folder import (
    EMIT_FILE,
    MARKER,
    PLAN_FILE,
    PROGRESS_FILE,
    TRAIN_FILE,
    EmitSettings,
    is_own_name,
    log_pattern,
    new_marker,
    read_marker,
    script_name,
    write_run_files,
)
from planner.slurm.options import CLUSTER_SETTINGS, JobShape, job_options, sbatch_lines
from planner.spec.checkpoint_dir import FIELD as CHECKPOINT_FIELD
from planner.spec.checkpoint_dir import (
    check_space,
    check_writable,
    foreign_checkpoints,
    node_local_warning,
)
from planner.spec.run_spec import RunSpec
from planner.spec.work import build_work
from planner.units import slurm_minutes

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
    # The checkpoint size checkpoint.dir must have room for checkpoint.keep + 1 of
    # (planner.spec.checkpoint_dir.check_space); None: the plan's (the calibration's).
    checkpoint_bytes: int | None = None


@dataclass(frozen=True)
class EmittedRun:
    folder: Path
    plan_path: Path
    train_config_path: Path
    scripts: tuple[Path, ...]
    run_id: str = ""
    warnings: tuple[str, ...] = ()  # for the user to read before submitting


def train_config(plan: Plan, run_dir: Path, workdir: Path, run_id: str = "") -> TrainConfig:
    spec = plan.spec
    checkpoint_dir = Path(spec.checkpoint.dir)
    if not checkpoint_dir.is_absolute():
        checkpoint_dir = workdir / checkpoint_dir
    command = spec.command
    # An absolute command.output_dir stays as it is; a relative one is the jobs' workdir's.
    output = workdir / command.output_dir if command and command.output_dir else None
    work = build_work(spec, plan.grad_accum, output)
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
        # What keeps a long run honest on the node (jobs.node): the hang watchdog's
        # timeouts, the chain's progress guard, the space check and the trainer lock.
        hang_timeouts=hang_timeouts(plan),
        max_stalled_segments=spec.plan.max_stalled_segments,
        checkpoint_bytes=plan.checkpoint_bytes or None,
        lock_heartbeat_s=DEFAULT_LOCK_HEARTBEAT_S,
    )


def sbatch_options(plan: Plan, segment: Segment, run_dir: Path) -> list[tuple[str, str | None]]:
    """The #SBATCH lines after --job-name, in order; None marks a flag without a value."""
    # One training process per GPU (one per node on CPU): jobs.node.world reads srun's ranks.
    shape = JobShape(plan.nodes, max(plan.gpus_per_node, 1), plan.gpus_per_node)
    options: list[tuple[str, str | None]] = []
    options += sbatch_lines(job_options(plan.spec.cluster, shape))
    options += [
        ("time", slurm_minutes(segment.time_limit_minutes)),
        ("time-min", slurm_minutes(min(segment.time_min_minutes, segment.time_limit_minutes))),
        ("signal", plan.signal_option),
        # A requeued job (preemption, node failure) resumes from the newest checkpoint too.
        ("requeue", None),
        ("open-mode", "append"),
        ("output", str(log_pattern(run_dir, segment.index))),
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
        **{f"cluster.{s.field}": getattr(cluster, s.field) for s in CLUSTER_SETTINGS},
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
        try:
            usable = options.template.is_file()
        except OSError:  # a name too long, a loop of links
            usable = False
        if not usable:
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
    values = _template_values(plan, segment, options, run_dir)
    try:
        return env.get_template(name).render(**values)
    except (jinja2.TemplateError, UnicodeDecodeError) as exc:
        if options.template is None:
            raise  # the shipped template: a bug, not the user's input
        raise SpecError(
            "--template", str(options.template), f"not a usable template: {_why(exc)}"
        ) from None
    except Exception as exc:
        if options.template is None:
            raise
        # A user's template runs code ({{ 1 / 0 }}, a filter given the wrong type).
        raise SpecError(
            "--template", str(options.template), f"rendering it raised {_why(exc)}"
        ) from None


def _why(exc: BaseException) -> str:
    where = getattr(exc, "lineno", None)
    text = f"{type(exc).__name__}: {str(exc)[:300]}"
    return f"{text} (line {where})" if where else text


def _template_values(
    plan: Plan, segment: Segment, options: EmitOptions, run_dir: Path
) -> dict[str, object]:
    return dict(
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
    """Write the run folder whole, or not at all. Two emits into one folder at once: the
    second fails naming the first (planner.runs.folder_lock). A folder that cannot be made
    or written (a read-only filesystem, a name too long, a file in the way) is a SpecError
    naming -o."""
    out_dir = options.out_dir.resolve()
    try:
        return _emit(plan, options, out_dir)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(out_dir) else ""
        raise SpecError(
            "-o",
            str(out_dir),
            f"cannot write the run folder there: {exc.strerror or exc}{where}; choose a folder "
            "you can write",
        ) from None


def _emit(plan: Plan, options: EmitOptions, out_dir: Path) -> EmittedRun:
    check_output_folder(out_dir, options.force, Path.cwd(), Path.home())
    workdir = options.workdir.resolve()
    # Rendered against the final path: the scripts name where they will live.
    rendered = {script_name(s.index): render(plan, s, options, out_dir) for s in plan.segments}
    marker = new_marker()
    config = train_config(plan, out_dir, workdir, marker.run_id)
    checkpoints = Path(config.checkpoint_dir)
    check_writable(checkpoints, plan.spec.source)
    size = options.checkpoint_bytes or plan.checkpoint_bytes or None
    check_space(checkpoints, plan.spec.checkpoint.keep, size)
    foreign = foreign_checkpoints(checkpoints, marker.run_id, bool(config.work.command))
    warnings: list[str] = []
    if foreign is not None:
        warnings.append(
            f"{foreign.describe()}; `plan-job submit` refuses to start unless given "
            f"--resume-foreign: give a new run an empty {CHECKPOINT_FIELD}"
        )
    local = node_local_warning(checkpoints, len(plan.segments), plan.nodes)
    if local is not None:
        warnings.append(local)
    template = options.template.resolve() if options.template else None
    correction = plan.step_correction if plan.step_correction != 1.0 else None
    # What resubmit needs to render more segments the same way; the plan does not know it.
    settings = EmitSettings(workdir, options.python, template, correction, EMIT_FILE)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_claim(out_dir, "emit"):
        # Checked again under the claim: an emit that finished since the first check has
        # written the folder, and this one must not replace it.
        check_output_folder(out_dir, options.force, Path.cwd(), Path.home())
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        try:
            write_run_files(staging, plan, config, settings, rendered, marker)
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
        warnings=tuple(warnings),
    )


def record_mismatch(spec: RunSpec, measured: RunSpec, record_path: str) -> str | None:
    """A warning when the calibration record (whose spec is ``measured``) ran another
    workload or command than ``spec`` trains: the plan's step would be another's. (A
    different built-in workload or micro-batch is refused by planning; a command's text is
    not part of that check, and may differ in what does not change its step.)"""
    ours, theirs = _trains(spec), _trains(measured)
    if ours == theirs:
        return None
    return (
        f"the calibration record {record_path} measured {theirs}, but {spec.source or 'the spec'} "
        f"trains {ours}: the plan's step time is the recorded one's; calibrate this spec "
        f"(`plan-job calibrate SPEC`) unless the two take the same step"
    )


def _trains(spec: RunSpec) -> str:
    if spec.command is not None:
        return f"the command `{spec.command.run}` (report: {spec.command.report})"
    workload = spec.workload
    what = workload.function or f"{workload.name}:{workload.preset}"
    if workload.overrides:
        what += f" with overrides {dict(workload.overrides)}"
    return f"workload {what}" + (" compiled" if workload.compile else "")


def protected_reason(folder: Path, cwd: Path, home: Path) -> str | None:
    """Why ``folder`` (resolved) can never be a run folder emit replaces, or None."""
    cwd, home = cwd.resolve(), home.resolve()
    if folder == cwd:
        return "it is the current directory"
    if folder in cwd.parents:
        return "it holds the current directory"
    if folder == home or folder in home.parents:
        return "it is your home directory" if folder == home else "it holds your home directory"
    return None


def check_output_folder(folder: Path, force: bool, cwd: Path, home: Path) -> None:
    """Raise unless emit may write ``folder`` (resolved): absent, empty, or with --force a
    folder holding plan-job's marker and nothing but plan-job's own files."""
    reason = protected_reason(folder, cwd, home)
    if reason is not None:
        raise UnsafeRunFolderError(
            f"-o {folder}: {reason}; emit writes a run folder of its own: choose a new "
            f"folder, e.g. -o runs/NAME"
        )
    if folder.exists() and not folder.is_dir():
        raise UnsafeRunFolderError(f"-o {folder}: is a file, not a folder; choose another -o")
    if not folder.exists() or not any(folder.iterdir()):
        return
    if not force:
        raise RunFolderExistsError(
            f"{folder} already holds a run; choose another -o folder or pass --force to "
            f"replace it (its logs and progress go with it)"
        )
    if read_marker(folder) is None:
        raise UnsafeRunFolderError(
            f"-o {folder}: --force replaces only a run folder that plan-job emit wrote (it "
            f"holds {MARKER}); this one does not, so nothing was changed: choose another -o "
            f"folder"
        )
    foreign = sorted(p.name for p in folder.iterdir() if not is_own_name(p.name))
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        shown = ", ".join(foreign[:5]) + more
        raise UnsafeRunFolderError(
            f"-o {folder}: --force would delete files plan-job did not write ({shown}); move "
            f"them out of the run folder or choose another -o folder"
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
