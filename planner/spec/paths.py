"""`~` and `$VAR` in the spec's path fields, expanded once, when the spec is read.

No shell ever sees these values (they reach the jobs through train.json and quoted #SBATCH
lines), so `checkpoint.dir: ~/ckpt` was a folder named `~` under the working directory.
They are expanded on the machine that reads the spec (the login node), and the CLI says so
in one line; a variable that is unset or empty there is refused by name rather than
expanded to nothing (`$SCRATCH/ckpt` must not become `/ckpt`). Torch-free.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from planner.errors import SpecError

# The spec's fields that hold a path of the filesystem (command.run is a command line, taken
# as written; workload.function is a Python name).
PATH_FIELDS = ("checkpoint.dir", "command.output_dir")
_VAR_RE = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def expand_path(
    field: str,
    value: str,
    source: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[str, str | None]:
    """``value`` with `~`, `~user`, `$VAR` and `${VAR}` expanded, and a note saying so (None
    when there was nothing to expand); SpecError naming an unset or empty variable."""
    env = os.environ if environ is None else environ

    def variable(match: re.Match[str]) -> str:
        name = match.group(1) if match.group(1) is not None else match.group(2)
        if not _NAME_RE.fullmatch(name):
            raise SpecError(field, value, f"${{{name}}} is not a variable name", source)
        found = env.get(name)
        if not found:
            state = "is empty" if found == "" else "is not set"
            raise SpecError(
                field,
                value,
                f"${name} {state} here; plan-job expands ~ and $VARIABLES in paths when it "
                f"reads the spec, on this machine: set {name}, or write the path out",
                source,
            )
        return found

    expanded = _VAR_RE.sub(variable, value)
    if expanded.startswith("~"):
        home = _expand_user(expanded, env)
        if home is None:
            user = expanded[1:].split("/", 1)[0]
            raise SpecError(
                field,
                value,
                f"~{user}: no such user here, so the path cannot be expanded; write it out",
                source,
            )
        expanded = home
    if expanded == value:
        return value, None
    return expanded, f"{field}: {value!r} read as {expanded!r} (~ and $VARIABLES are expanded)"


def _expand_user(path: str, env: Mapping[str, str]) -> str | None:
    head, sep, rest = path.partition("/")
    if head == "~" and env.get("HOME"):
        return env["HOME"].rstrip("/") + sep + rest if env["HOME"] != "/" else "/" + rest
    expanded = os.path.expanduser(path)
    return None if expanded.startswith("~") else expanded
