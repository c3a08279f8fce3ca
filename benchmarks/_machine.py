"""What the benchmark reports say about the machine they ran on (one place for all of them)."""

from __future__ import annotations

import time

import torch

from components.core.device import cpu_name  # noqa: F401  (re-exported for the scripts)


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
