"""The fields a user's own training command receives: as ``{name}`` in its argument list
and as ``$PLANJOB_<NAME>`` in its environment. Standard library only.

The spec's ``command.run`` is split into arguments once (shlex), on the login node; each
argument may hold fields, filled in on the node as the job starts (the resume path and the
stop time are only known then). An argument is never re-split or given to a shell, so a
value with spaces or quotes stays one argument. ``{{`` and ``}}`` are literal braces.

field_values gives every field's value as the launcher and the calibration fill them in; the
``*_field`` readers take them back from the environment in a user's script (jobs.report),
a keyword given to the Reporter being the default for a variable that is absent.
"""

from __future__ import annotations

import math
import os
import string
from collections.abc import Mapping, Sequence

ENV_PREFIX = "PLANJOB_"
# How the command tells plan-job its step timings: "progress" writes jobs.progress lines
# itself (jobs.report, or the Trainer/Lightning callbacks in jobs/); "trainer_state" changes
# nothing: the timings come from the Hugging Face Trainer's checkpoint-N folders.
REPORT_MODES = ("progress", "trainer_state")

FIELDS: dict[str, str] = {
    "total_steps": "optimizer steps to train to (the whole run's; a calibration's own cap)",
    "checkpoint_dir": "folder the command saves its checkpoints in",
    "checkpoint_interval_steps": "save a checkpoint every this many optimizer steps",
    "resume_from": "checkpoint to resume from: the newest saved one, '' on a fresh start",
    "progress_path": "the run's progress JSONL (jobs.report writes it)",
    "stop_at": "Unix seconds by which the job must have saved and exited; '' when unknown",
    "eval_interval_steps": "evaluate every this many steps; 0: never",
    "micro_batch": "samples per forward/backward on one GPU",
    "grad_accum": "micro-batches per optimizer step on one GPU",
    "global_batch": "samples per optimizer step, all GPUs together",
    "seed": "the spec's calibration.seed",
    "output_dir": "command.output_dir (the Trainer's output_dir); '' when not set",
}


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def fields_in(argv: Sequence[str]) -> list[str]:
    """The fields the arguments use, in order of first use. ValueError names a malformed
    argument or an unknown field, with the valid ones."""
    found: list[str] = []
    for arg in argv:
        try:
            parsed = list(string.Formatter().parse(arg))
        except ValueError as exc:
            raise ValueError(f"argument {arg!r}: {exc} (write {{{{ and }}}} for braces)") from exc
        for _literal, name, spec, conversion in parsed:
            if name is None:
                continue
            if name not in FIELDS:
                raise ValueError(
                    f"argument {arg!r}: unknown field {{{name}}}; valid: "
                    + ", ".join(f"{{{key}}}" for key in FIELDS)
                )
            if spec or conversion:
                raise ValueError(
                    f"argument {arg!r}: write the field as {{{name}}}, without a format spec"
                )
            if name not in found:
                found.append(name)
    return found


def _text(value: object) -> str:
    return "" if value is None else str(value)


def render(argv: Sequence[str], values: Mapping[str, object]) -> list[str]:
    """The arguments with their fields filled in; None renders as ''."""
    fields_in(argv)
    texts = {name: _text(values.get(name)) for name in FIELDS}
    return [arg.format(**texts) for arg in argv]


def environment(values: Mapping[str, object]) -> dict[str, str]:
    """``PLANJOB_<NAME>`` for every field; None renders as ''."""
    return {env_name(name): _text(values.get(name)) for name in FIELDS}


def world_size(env: Mapping[str, str]) -> int:
    """Ranks of the job, for ``{global_batch}``: WORLD_SIZE (torchrun), else SLURM_NTASKS,
    else 1."""
    for name in ("WORLD_SIZE", "SLURM_NTASKS"):
        try:
            value = int(env.get(name, ""))
        except ValueError:
            continue
        if value > 0:
            return value
    return 1


def field_values(
    *,
    total_steps: int,
    checkpoint_dir: str,
    checkpoint_interval_steps: int,
    resume_from: str | None,
    progress_path: str,
    stop_at: float | None,
    eval_interval_steps: int,
    micro_batch: int,
    grad_accum: int,
    seed: int,
    output_dir: str,
    ranks: int,
) -> dict[str, object]:
    """The values of every field of FIELDS, as the launcher and the calibration fill them."""
    return {
        "total_steps": total_steps,
        "checkpoint_dir": checkpoint_dir,
        "checkpoint_interval_steps": checkpoint_interval_steps,
        "resume_from": resume_from or "",
        "progress_path": progress_path,
        "stop_at": "" if stop_at is None else repr(float(stop_at)),
        "eval_interval_steps": eval_interval_steps,
        "micro_batch": micro_batch,
        "grad_accum": grad_accum,
        "global_batch": micro_batch * grad_accum * ranks,
        "seed": seed,
        "output_dir": output_dir,
    }


# --- read back on the node, by a user's script (jobs.report) -----------------------------


def env_value(field: str) -> str | None:
    return os.environ.get(env_name(field))


def int_field(field: str, default: int | None, minimum: int | None) -> int | None:
    text = (env_value(field) or "").strip()
    if text:
        try:
            value: int | None = int(text)
        except ValueError:
            raise ValueError(f"${env_name(field)}={text!r} is not an integer") from None
        where = f"${env_name(field)}"
    else:
        value, where = default, f"Reporter({field}=...)"
    if value is not None and minimum is not None and value < minimum:
        raise ValueError(f"{where}: got {value}; must be >= {minimum}")
    return value


def text_field(field: str, default: str | None) -> str | None:
    return env_value(field) or default


def optional_text_field(field: str, default: str | None) -> str | None:
    text = env_value(field)
    if text is None:
        return default or None
    return text or None  # '' from plan-job: a fresh start, whatever the default


def stop_at_field(default: float | None) -> float | None:
    text = env_value("stop_at")
    if text is None:
        return default
    if not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):  # "nan" and "inf" parse, and would never stop the run
        raise ValueError(f"${env_name('stop_at')}={text!r} is not Unix seconds")
    return value


def env_rank() -> int:
    """This process's rank among the job's tasks ($RANK, else $SLURM_PROCID, else 0): a
    script's rank 0 alone writes progress lines."""
    for name in ("RANK", "SLURM_PROCID"):
        text = os.environ.get(name, "").strip()
        if text:
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"${name}={text!r} is not a rank (an integer)") from None
    return 0
