"""workload.compile: torch.compile of the workload's model, done the same way by the
calibration harness and the training entry.

``nn.Module.compile()`` compiles the module in place: every call of the model (the workload's
own train_step and eval_step call it) goes through the compiled graph, and the state dict
keeps its keys, so a checkpoint loads in an eager or a compiled job alike. Compilation itself
happens at the first call: the first step (and the first evaluation, a graph of its own) pays
it, in every job that starts. torch is passed in, so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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


# Where torch.compile keeps what it built, by default node-local (/tmp/torchinductor_<user>,
# ~/.triton/cache): a job on a node that compiled the graph before compiles in a fraction of
# the time (the tiny JiT on the CPU VM: 38.5 s cold, 4.5 s warm).
CACHE_ENV = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


@dataclass(frozen=True)
class CompileTiming:
    eager_step_times: list[float]  # the eager steps before compiling
    cold_s: float  # the compile call and the first compiled step, in an empty cache
    warm_s: float  # the same again with the graph in the cache (0.0: not timed)
    cache: str  # what the cold compile found: cold, warm, partly warm, unknown


def eager_then_compiled(
    workload: Workload,
    request: CalibrationRequest,
    device: Any,
    torch: Any,
    run_steps: Callable[[CalibrationRequest], _Steps],
) -> CompileTiming:
    """The calibration's side of workload.compile, ``run_steps`` being its step loop: eager
    steps first (the step compiling replaces; the kernels' first use paid), then the model
    compiled as jobs.train compiles it and its first step, which compiles, timed on its own
    (the steady steps' time cap starts after it): the compile call and that step are what a
    training job pays between its start and the end of its first step.

    The compile runs against an empty inductor and Triton cache of its own, so that it is
    the cold compile the run's first job pays on a fresh node whatever this node compiled
    before (a warm cache made the same spec's plan 10 min in 7 jobs instead of 24 min in
    17); inductor's cache counters say whether it was. Then, its in-memory graphs dropped,
    the model compiles again from that cache: the warm compile a job pays where the cache
    holds the graph."""
    check(workload, device, torch)  # before spending the eager steps
    budget = max(EAGER_MIN_S, EAGER_SHARE * request.max_seconds)
    # No progress lines (the CLI shows the steady steps') and no CI stop: a count and a time.
    quiet = dataclasses.replace(
        request, progress_path=None, min_steps=EAGER_MAX_STEPS, target_ci=0.0
    )
    eager = run_steps(dataclasses.replace(quiet, max_steps=EAGER_MAX_STEPS, max_seconds=budget))
    with private_cache():
        _reset(torch)  # graphs this process compiled before (a second calibration) dropped
        counts = cache_counts(torch)
        calling = time.perf_counter()
        try:
            compile_model(workload, device, torch)  # imports torch._dynamo: ~0.8 s on a CPU
            called = time.perf_counter()
            first = run_steps(dataclasses.replace(quiet, max_steps=1))
        except NodeError as exc:
            if exc.kind != "time_limit":
                raise
            raise NodeError(
                "time_limit",
                f"the calibration job reached its time limit while torch.compile compiled "
                f"the model ({time.perf_counter() - calling:.0f} s into a cold compile: an "
                f"empty cache, as a run's first job on a fresh node has). A cold compile of "
                f"this model takes longer than the job leaves it: raise "
                f"calibration.time_limit_minutes (or lower calibration.max_seconds)",
            ) from exc
        cold = called - calling + first.step_times[0]
        cache = cache_state(torch, counts)
        warm = _warm_compile(workload, quiet, torch, run_steps, called - calling)
    return CompileTiming(eager.step_times, cold, warm, cache)


def _warm_compile(
    workload: Workload,
    quiet: CalibrationRequest,
    torch: Any,
    run_steps: Callable[[CalibrationRequest], _Steps],
    call_s: float,
) -> float:
    """The first compiled step again after torch._dynamo.reset(): its graph comes from the
    cache the cold compile filled. 0.0 when this torch cannot reset."""
    if not _reset(torch):
        return 0.0
    return call_s + run_steps(dataclasses.replace(quiet, max_steps=1)).step_times[0]


def _reset(torch: Any) -> bool:
    """torch._dynamo.reset(): the compiled graphs in this process dropped, so the next call
    compiles, from the disk cache or from nothing. False where this torch has none."""
    reset = getattr(getattr(torch, "_dynamo", None), "reset", None)
    if reset is None:
        return False
    reset()
    return True


@contextlib.contextmanager
def private_cache() -> Iterator[None]:
    """TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR pointed at a new empty folder, removed
    after; both read at each compile, so set here they hold for this one."""
    folder = tempfile.mkdtemp(prefix="plan-job-compile-cache.")
    saved = {name: os.environ.get(name) for name in CACHE_ENV}
    os.environ[CACHE_ENV[0]] = folder
    os.environ[CACHE_ENV[1]] = os.path.join(folder, "triton")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(folder, ignore_errors=True)


# inductor's compiled-graph cache and AOTAutograd's, as torch._dynamo.utils.counters counts
# their hits and misses (torch 2.4+).
_CACHE_COUNTERS = (
    ("inductor", "fxgraph_cache_hit", "fxgraph_cache_miss"),
    ("aot_autograd", "autograd_cache_hit", "autograd_cache_miss"),
)


def cache_counts(torch: Any) -> tuple[int, int]:
    """(hits, misses) of torch.compile's caches so far in this process; (0, 0) unknown."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0, 0
    hits = sum(counters[group][hit] for group, hit, _ in _CACHE_COUNTERS)
    misses = sum(counters[group][miss] for group, _, miss in _CACHE_COUNTERS)
    return hits, misses


def cache_state(torch: Any, before: tuple[int, int]) -> str:
    hits, misses = (now - was for now, was in zip(cache_counts(torch), before, strict=True))
    if misses and not hits:
        return "cold"
    if hits and not misses:
        return "warm"
    return "partly warm" if hits else "unknown"


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


def time_limit_in(exc: BaseException) -> bool:
    """Whether submitit's time-limit exception is ``exc`` or its cause: torch.compile wraps
    what is raised inside it (the signal's handler raises in whatever runs) in its own."""
    seen: BaseException | None = exc
    for _ in range(20):  # a chain, not a cycle
        if seen is None:
            return False
        if type(seen).__name__ == "UncompletedJobError":
            return True
        seen = seen.__cause__ or seen.__context__
    return False


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
