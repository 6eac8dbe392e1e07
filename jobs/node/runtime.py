"""Node-side set-up shared by the calibration harness and the training entry: the device, how
to wait for it, and building the workload with failures that say what went wrong.

torch is passed in or imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from typing import Any

from jobs.contract.failure import NodeError
from jobs.workloads.base import Workload, WorkloadConfig


def resolve_device(name: str, torch: Any, setting: str = "calibration.device") -> Any:
    """``name`` is auto | cpu | cuda; ``setting`` is how the user's file names it."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise NodeError(
                "device",
                f"{setting} is 'cuda' but torch sees no "
                "CUDA device on this node (CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', '')!r})",
            )
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def synchronizer(device: Any, torch: Any) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None  # CPU kernels have returned by the time the Python call does


def build_workload(builder_path: str, config: WorkloadConfig, device: Any) -> Workload:
    """Import ``module:function`` and call it; every way that fails is a NodeError."""
    from jobs.workloads.registry import import_callable

    try:
        builder = import_callable(builder_path)
    except (ImportError, AttributeError) as exc:
        raise NodeError("import_error", f"cannot import workload {builder_path!r}: {exc}") from exc
    import torch

    try:
        workload = builder(config)
    except torch.cuda.OutOfMemoryError as exc:
        raise oom_failure(config.micro_batch, config.precision, device, exc) from exc
    except NodeError:
        raise
    except Exception as exc:
        raise NodeError(
            "workload_error",
            f"building workload {builder_path!r} raised {type(exc).__name__}: {exc}{where(exc)}",
        ) from exc
    if not isinstance(workload, Workload):
        raise NodeError(
            "workload_error",
            f"{builder_path!r} returned "
            f"{type(workload).__name__}, expected jobs.workloads.base.Workload",
        )
    return workload


def where(exc: BaseException) -> str:
    """Where the user's code raised: the log's tail shows only the harness's frames."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" (at {last.filename}:{last.lineno} in {last.name})"


def oom_failure(micro_batch: int, precision: str, device: Any, exc: BaseException) -> NodeError:
    return NodeError(
        "oom",
        f"{device.type.upper()} out of memory at micro-batch {micro_batch} "
        f"(precision {precision}); lower batch.micro_batch and raise grad_accum: "
        f"{str(exc).splitlines()[0] if str(exc) else ''}",
        micro_batch=micro_batch,
    )


def evaluate(
    workload: Workload, batches: int, sync: Callable[[], None], first: int = 0
) -> tuple[float, float]:
    """One evaluation over held-out batches first..first+batches-1: (seconds, mean loss).

    The time runs from the first batch's data to the last loss, the device synchronised at
    both ends, so it is what a run pays per evaluation. A CUDA OOM propagates (the caller
    names the micro-batch); any other exception is a NodeError naming the batch.
    """
    if workload.eval_step is None or workload.eval_batch is None:
        raise NodeError(
            "workload_error",
            f"evaluation was asked for (plan.eval_interval_steps) but workload "
            f"{workload.name!r} has no eval_step/eval_batch: add them (see "
            "jobs.workloads.base.Workload) or drop plan.eval_interval_steps",
        )
    sync()
    start = time.perf_counter()
    total: Any = 0.0
    for index in range(first, first + batches):
        try:
            total = total + workload.eval_step(workload.eval_batch(index))
        except Exception as exc:
            if type(exc).__name__ == "OutOfMemoryError":
                raise
            raise NodeError(
                "workload_error",
                f"evaluation batch {index} raised {type(exc).__name__}: {exc}{where(exc)}",
            ) from exc
    loss = float(total) / batches  # float() waits for the device, as the sync below does
    sync()
    return time.perf_counter() - start, loss
