"""Peak dense FLOP/s of common accelerators, for MFU. Overridable per spec (peak_tflops).

Figures are NVIDIA's datasheet numbers for dense math (no 2:4 sparsity), per GPU, SXM parts
unless the name says PCIe. fp32 means plain FP32 (PyTorch does not use TF32 for matmuls by
default). The seed document's "~2000 TFLOPS" for H200 is the sparse figure: dense is half.
"""

from __future__ import annotations

from dataclasses import dataclass

# (substring of torch.cuda.get_device_name(), {precision: TFLOP/s})
_PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
)


@dataclass(frozen=True)
class Peak:
    tflops: float
    source: str  # "table: H100" or "override"


def peak_for(
    device_name: str,
    precision: str,
    gpu_type: str | None = None,
    override_tflops: float | None = None,
) -> Peak | None:
    """The peak to divide by for MFU, or None when unknown (a CPU, an unlisted GPU)."""
    if override_tflops is not None:
        return Peak(override_tflops, "override (calibration.peak_tflops)")
    for name in (device_name, gpu_type or ""):
        for key, peaks in _PEAKS:
            if key.lower() in name.lower() and precision in peaks:
                return Peak(peaks[precision], f"table: {key} {precision} dense")
    return None


def known_devices() -> list[str]:
    return [key for key, _ in _PEAKS]
