"""What the benchmark reports say about the machine they ran on (one place for all of them)."""

from __future__ import annotations

import time

import torch

from components.core.device import cpu_bf16_isa as bf16_isa  # noqa: F401  (re-exported for the scripts)
from components.core.device import cpu_name  # noqa: F401

def gemm_peak(dtype: torch.dtype, seconds: float, n: int = 2048) -> float:
    """Best FLOP/s of ``n×n @ n×n`` matmuls in ``dtype`` over ``seconds`` (current threads):
    a measured practical peak for MFU where the datasheet rate is unknown."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


# fp32 FLOPs per cycle per core by vector ISA (two FMA ports: 2 × lanes × 2).
_FLOPS_PER_CYCLE = (("avx512f", 64), ("avx2", 32), ("sse2", 16))
# A measured GEMM peak below this share of the nominal rate means other work held the cores.
MIN_PEAK_SHARE = 0.25


def nominal_fp32_peak(threads: int) -> float | None:
    """Datasheet-style fp32 FLOP/s of ``threads`` cores: clock (``/proc/cpuinfo``) × FLOPs
    per cycle of the widest vector ISA the CPU reports; None where /proc/cpuinfo is absent."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return None
    mhz = [float(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
    flags = next((line.split(":")[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    per_cycle = next((n for isa, n in _FLOPS_PER_CYCLE if isa in flags), 8)
    return max(mhz) * 1e6 * per_cycle * threads if mhz else None


def check_gemm_peak(measured_fp32: float, threads: int) -> dict:
    """Whether a measured fp32 GEMM peak is plausible for an idle machine (see MIN_PEAK_SHARE);
    ``{"nominal_tflops", "share", "ok"}`` (ok None when the nominal rate is unknown)."""
    nominal = nominal_fp32_peak(threads)
    if not nominal:
        return {"nominal_tflops": None, "share": None, "ok": None}
    share = measured_fp32 / nominal
    return {"nominal_tflops": round(nominal / 1e12, 4), "share": round(share, 3),
            "ok": share >= MIN_PEAK_SHARE}
