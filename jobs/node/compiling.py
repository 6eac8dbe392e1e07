"""workload.compile: torch.compile of the workload's model, done the same way by the
calibration harness and the training entry.

``nn.Module.compile()`` compiles the module in place: every call of the model (the workload's
own train_step and eval_step call it) goes through the compiled graph, and the state dict
keeps its keys, so a checkpoint loads in an eager or a compiled job alike. Compilation itself
happens at the first call: the first step (and the first evaluation, a graph of its own) pays
it, in every job that starts. torch is passed in, so importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from typing import Any, Protocol

from jobs.contract.failure import NodeError
from jobs.contract.measurement import CalibrationRequest
from jobs.workloads.base import Workload

SETTING = "workload.compile"
# The calibration's eager steps before compiling: at most this many, for this share of
# calibration.max_seconds (at least EAGER_MIN_S).
EAGER_MAX_STEPS, EAGER_SHARE, EAGER_MIN_S = 50, 0.1, 2.0


class _Steps(Protocol):
    @property
    def step_times(self) -> list[float]: ...


def eager_then_compiled(
    workload: Workload,
    request: CalibrationRequest,
    device: Any,
    torch: Any,
    run_steps: Callable[[CalibrationRequest], _Steps],
) -> tuple[list[float], float]:
    """The calibration's side of workload.compile, ``run_steps`` being its step loop: eager
    steps first (the step compiling replaces; the kernels' first use paid), then the model
    compiled as jobs.train compiles it and its first step, which compiles, timed on its own
    (the steady steps' time cap starts after it). Returns (the eager step times, the compile
    call and the first compiled step's time: a training job pays both between its start and
    the end of its first step)."""
    check(workload, device, torch)  # before spending the eager steps
    budget = max(EAGER_MIN_S, EAGER_SHARE * request.max_seconds)
    # No progress lines (the CLI shows the steady steps') and no CI stop: a count and a time.
    quiet = dataclasses.replace(
        request, progress_path=None, min_steps=EAGER_MAX_STEPS, target_ci=0.0
    )
    eager = run_steps(dataclasses.replace(quiet, max_steps=EAGER_MAX_STEPS, max_seconds=budget))
    calling = time.perf_counter()
    compile_model(workload, device, torch)  # imports torch._dynamo: ~0.8 s on a CPU
    called = time.perf_counter()
    first = run_steps(dataclasses.replace(quiet, max_steps=1))
    return eager.step_times, called - calling + first.step_times[0]


def compile_model(workload: Workload, device: Any, torch: Any) -> None:
    """Compile ``workload.model`` in place; NodeError("compile") when this node
    cannot (see check)."""
    check(workload, device, torch)
    workload.model.compile()


def check(workload: Workload, device: Any, torch: Any) -> None:
    """NodeError("compile") naming workload.compile when this node cannot compile:
    no nn.Module.compile, no compiler for the generated kernels."""
    if not hasattr(workload.model, "compile"):
        raise NodeError(
            "compile",
            f"{SETTING} is true but torch {torch.__version__} has no nn.Module.compile "
            "(torch >= 2.2 has): install a newer torch or set workload.compile: false",
        )
    missing = missing_compiler(device.type)
    if missing:
        raise NodeError("compile", missing)


def missing_compiler(device_type: str) -> str:
    """Why torch.compile cannot build kernels here, or '' when it can. Inductor writes C++
    for a CPU and builds it with $CXX (else g++); on CUDA, Triton builds its launcher with
    $CC (else cc/gcc/clang)."""
    if device_type == "cpu":
        names = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
        need = "a C++ compiler ($CXX, g++, c++ or clang++)"
    else:
        names = [os.environ.get("CC", ""), "cc", "gcc", "clang"]
        need = "a C compiler ($CC, cc, gcc or clang) for Triton's kernel launchers"
    if any(name and shutil.which(name) for name in names):
        return ""
    return (
        f"{SETTING} is true but torch.compile on {device_type.upper()} needs {need}, and "
        f"none is on this node's PATH: install one, or set workload.compile: false"
    )


def failure(exc: BaseException, compiled: bool, what: str) -> NodeError | None:
    """A NodeError naming workload.compile when ``exc`` (raised by ``what``, e.g.
    "training step 1") came from torch.compile's machinery; None otherwise."""
    module = type(exc).__module__ or ""
    if not compiled or not module.startswith(("torch._dynamo", "torch._inductor", "triton")):
        return None
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return NodeError(
        "compile",
        f"{SETTING} is true and torch.compile failed in {what} on this node: "
        f"{type(exc).__name__}: {first} -- set workload.compile: false to run eager",
    )
