"""The run's energy beside its GPU-hours: GPU-hours at P50 x the calibration's median power
per GPU over its steady steps (NVML, jobs.calibration.power) x plan.pue, in kWh.

Only what was measured: without a power reading (no NVML on the node, a CPU calibration, a
record from before power was read, a CPU-only plan) the energy is unknown and the note says
why; no figure is made up from a datasheet TDP. Every hour of the plan is counted at the
steady steps' power, start-up, saves and waits between steps included: those draw less, so
the figure leans high by their share of the run (the plan's "why (P50)" terms). Only the
GPUs' own board power: CPUs, memory, network and cooling are outside NVML's reading, which
is what plan.pue (the facility's power usage effectiveness, >= 1) scales for the cooling
and power delivery. Torch-free.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from jobs.contract.measurement import Measurement
from planner.spec.run_spec import RunSpec


@dataclass(frozen=True)
class PowerFacts:
    """What a plan's energy rests on."""

    power_w: float | None  # per GPU: the mean of the calibration's per-GPU medians
    idle_w: float | None  # per GPU, before the steps (shown, not used)
    pue: float
    note: str  # how the energy is counted, or why it is unknown

    def kwh(self, gpu_hours: float) -> float | None:
        """GPU-hours at this power, with the facility's PUE, in kWh."""
        if self.power_w is None:
            return None
        return gpu_hours * self.power_w * self.pue / 1000.0


def power_facts(spec: RunSpec, m: Measurement) -> PowerFacts:
    pue = spec.plan.pue
    if spec.cluster.gpus_per_node == 0:
        return PowerFacts(None, None, pue, "unknown: a CPU-only plan (GPU power does not apply)")
    if not m.power_w:
        if m.device_kind != "cuda":
            why = "unknown: the calibration ran on the CPU (no GPU power read)"
        elif m.power_source:
            why = m.power_source  # "unknown: ..." as the calibration found it
        else:
            why = "unknown: the record was made before plan-job read GPU power; calibrate again"
        return PowerFacts(None, None, pue, why)
    power = statistics.fmean(m.power_w)
    idle = statistics.fmean(m.idle_power_w) if m.idle_power_w else None
    gpus = len(m.power_w)
    idle_text = f", idle {idle:.0f} W" if idle is not None else ""
    note = (
        f"GPU-hours x {power:.0f} W per GPU (the calibration's median over its steady steps, "
        f"{gpus} GPU{'s' if gpus != 1 else ''}, NVML{idle_text}) x PUE {pue:g}; GPUs only"
    )
    return PowerFacts(power, idle, pue, note)
