"""Compatibility shim: ``jobs.compiling`` moved into the subpackages of jobs/.

This old path only re-exports its names from their new modules (below), so that
``from jobs.compiling import ...`` keeps working; new code imports the new paths."""

from jobs.node.compiling import (
    EAGER_MAX_STEPS,
    EAGER_MIN_S,
    EAGER_SHARE,
    SETTING,
    check,
    compile_model,
    eager_then_compiled,
    failure,
    missing_compiler,
)

__all__ = [
    "EAGER_MAX_STEPS",
    "EAGER_MIN_S",
    "EAGER_SHARE",
    "SETTING",
    "check",
    "compile_model",
    "eager_then_compiled",
    "failure",
    "missing_compiler",
]
