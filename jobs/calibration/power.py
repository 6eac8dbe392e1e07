"""Each GPU's power during a calibration, read from NVML (the nvidia-ml-py package) where it
is installed and a driver answers: the idle power before the steps and the median over the
steady steps, one figure per GPU. Without NVML, or on a CPU, the power is unknown and the
reason is kept instead: a plan must never show an energy figure nobody measured.

Standard library only; pynvml is imported inside open_gpus, so a node without it (or
without a GPU) pays nothing. A background thread reads every GPU's power every PERIOD_S
(NVML's nvmlDeviceGetPowerUsage, milliwatts, the board's power as nvidia-smi's power.draw);
the steady window is cut from those readings afterwards, once the steps' warm-up is known.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

PERIOD_S = 0.1
IDLE_S = 1.0  # read before the steps start: what the GPU draws doing nothing
MIN_SAMPLES = 3  # fewer readings than this in a window: no median worth recording
SOURCE = "nvml"  # Measurement.power_source when the figures were read


@dataclass(frozen=True)
class PowerReading:
    """What a calibration records: W per GPU, in the order the GPUs were given; () and a
    reason in ``source`` when unknown."""

    power_w: tuple[float, ...]
    idle_w: tuple[float, ...]
    source: str


def unknown(reason: str) -> PowerReading:
    return PowerReading((), (), f"unknown: {reason}")


@dataclass
class Gpus:
    """NVML handles of the GPUs to read, and the module that reads them."""

    nvml: Any
    handles: list[Any]

    def read_w(self) -> tuple[float, ...]:
        return tuple(self.nvml.nvmlDeviceGetPowerUsage(h) / 1000.0 for h in self.handles)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a failed shutdown must not fail the calibration
            self.nvml.nvmlShutdown()


def open_gpus(selectors: Sequence[str] | None) -> tuple[Gpus | None, str]:
    """NVML's handles of the GPUs that ``selectors`` name (UUIDs, with or without their
    ``GPU-`` prefix, or NVML indices as CUDA_VISIBLE_DEVICES lists them; None: every GPU),
    or None and why not."""
    try:
        import pynvml  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        return None, "nvidia-ml-py is not installed on the node (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return None, f"NVML did not start ({exc})"
    gpus = Gpus(pynvml, [])
    try:
        count = pynvml.nvmlDeviceGetCount()
        by_uuid = {}
        for index in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            by_uuid[_plain_uuid(pynvml.nvmlDeviceGetUUID(handle))] = (index, handle)
        if selectors is None:
            gpus.handles = [handle for _, handle in sorted(by_uuid.values(), key=_first)]
        else:
            for selector in selectors:
                handle = _find(selector, by_uuid)
                if handle is None:
                    gpus.close()
                    return None, f"no NVML device matches GPU {selector!r}"
                gpus.handles.append(handle)
        if not gpus.handles:
            gpus.close()
            return None, "NVML lists no GPU"
        gpus.read_w()  # a GPU that cannot report its power fails here, not in the thread
    except pynvml.NVMLError as exc:
        gpus.close()
        return None, f"NVML cannot read the power ({exc})"
    return gpus, ""


def visible_selectors(environ: dict[str, str]) -> list[str] | None:
    """The GPUs CUDA_VISIBLE_DEVICES gives this job (what a user's command will use); None
    when it is unset (every GPU of the node)."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    return [item.strip() for item in visible.split(",") if item.strip() not in ("", "-1")]


def _first(pair: tuple[int, Any]) -> int:
    return pair[0]


def _plain_uuid(uuid: Any) -> str:
    text = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    return text.lower().removeprefix("gpu-")


def _find(selector: str, by_uuid: dict[str, tuple[int, Any]]) -> Any:
    if selector.isdigit():
        return next((h for i, h in by_uuid.values() if i == int(selector)), None)
    wanted = _plain_uuid(selector)
    # CUDA accepts a unique prefix of a UUID; so do we.
    found = [h for uuid, (_, h) in by_uuid.items() if uuid.startswith(wanted)]
    return found[0] if len(found) == 1 else None


class Sampler:
    """Reads every GPU's power every ``period_s`` on a daemon thread, each reading with
    ``clock()``'s time, until stop(). ``read`` raising ends the readings (kept so far)."""

    def __init__(
        self,
        read: Callable[[], tuple[float, ...]],
        period_s: float = PERIOD_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.read, self.period_s, self.clock = read, period_s, clock
        self.samples: list[tuple[float, tuple[float, ...]]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="plan-job power", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, tuple[float, ...]]]:
        self._stop.set()
        self._thread.join()
        return list(self.samples)

    def _run(self) -> None:
        while True:
            try:
                self.samples.append((self.clock(), self.read()))
            except Exception as exc:  # the GPU fell off the bus, the driver went away
                self.error = f"{type(exc).__name__}: {exc}"
                return
            if self._stop.wait(self.period_s):
                return


def window_medians(
    samples: Sequence[tuple[float, tuple[float, ...]]], start: float, end: float
) -> tuple[float, ...] | None:
    """Each GPU's median power over the readings taken from ``start`` to ``end``; None with
    fewer than MIN_SAMPLES of them."""
    inside = [watts for moment, watts in samples if start <= moment <= end]
    if len(inside) < MIN_SAMPLES:
        return None
    return tuple(statistics.median(column) for column in zip(*inside, strict=True))


def reading(
    samples: Sequence[tuple[float, tuple[float, ...]]],
    idle: tuple[float, float],
    steady: tuple[float, float],
    error: str | None = None,
) -> PowerReading:
    """The record's figures from one sampler's readings: the idle window before the steps,
    the steady window of the steps."""
    power = window_medians(samples, *steady)
    if power is None:
        why = f"the readings stopped ({error})" if error else "the steady steps were too short"
        return unknown(f"{why}: fewer than {MIN_SAMPLES} power readings over them")
    idle_w = window_medians(samples, *idle) or ()
    return PowerReading(_rounded(power), _rounded(idle_w), SOURCE)


def _rounded(watts: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(round(w, 2) for w in watts)


class Watch:
    """A calibration's power, start to finish: ``begin()`` opens NVML and reads the idle
    power for IDLE_S; ``steps_started()`` marks where the idle window ends; ``finish(start,
    end)`` stops reading and keeps the medians over the steady window. Every method is safe
    to call where NVML is missing: the result then says why the power is unknown."""

    def __init__(self, selectors: Sequence[str] | None, idle_s: float = IDLE_S) -> None:
        self.selectors, self.idle_s = selectors, idle_s
        self.gpus: Gpus | None = None
        self.sampler: Sampler | None = None
        self.why = ""
        self.idle: tuple[float, float] = (0.0, 0.0)

    def begin(self) -> Watch:
        self.gpus, self.why = open_gpus(self.selectors)
        if self.gpus is not None:
            began = time.time()
            self.sampler = Sampler(self.gpus.read_w).start()
            time.sleep(self.idle_s)
            self.idle = (began, time.time())
        return self

    @property
    def idle_spent_s(self) -> float:
        """How long begin() waited reading the idle power."""
        return self.idle[1] - self.idle[0]

    def finish(self, start: float, end: float) -> PowerReading:
        if self.sampler is None or self.gpus is None:
            return unknown(self.why or "no GPU was read")
        sampler, self.sampler = self.sampler, None
        samples = sampler.stop()
        self.gpus.close()
        self.gpus = None
        return reading(samples, self.idle, (start, end), sampler.error)

    def abandon(self) -> None:
        """On a failure: stop the thread and NVML, keep nothing."""
        if self.sampler is not None:
            self.sampler.stop()
            self.sampler = None
        if self.gpus is not None:
            self.gpus.close()
            self.gpus = None
