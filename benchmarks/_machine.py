"""What the benchmark reports say about the machine they ran on (one place for all of them)."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (``platform.processor()`` where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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
