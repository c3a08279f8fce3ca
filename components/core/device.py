"""Device and precision choice, decided at run time from the hardware (config may override).

The same code path runs on this CPU and on N GPUs: ``pick_device`` and ``autocast_dtype``
are the only places that look at the hardware.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch


def pick_device(prefer_gpu: bool = True) -> torch.device:
    if prefer_gpu and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """True when this CPU runs bf16 matmuls natively (AMX or AVX512-BF16).

    Without them bf16 on a CPU is emulated and slower than fp32, so autocast stays off.
    """
    try:
        capability = torch.backends.cpu.get_cpu_capability()  # e.g. "AVX512", "AMX"...
    except AttributeError:  # older torch
        capability = ""
    if "AMX" in capability.upper():
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("amx_bf16", "avx512_bf16"))


def autocast_dtype(device: torch.device, requested: str = "auto") -> torch.dtype | None:
    """The autocast dtype to train or serve with on ``device``; ``None`` means fp32.

    ``requested`` is ``"auto"``, ``"bf16"``, ``"fp16"`` or ``"fp32"``. ``auto`` picks bf16 on
    GPUs that support it and on CPUs with native bf16, fp16 on older GPUs, fp32 otherwise.
    """
    if requested == "fp32":
        return None
    if requested == "bf16":
        return torch.bfloat16
    if requested == "fp16":
        return torch.float16
    if requested != "auto":
        raise ValueError(f"precision must be auto|bf16|fp16|fp32, got {requested!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def needs_grad_scaler(dtype: torch.dtype | None, device: torch.device) -> bool:
    """fp16 on a GPU needs loss scaling; bf16 and fp32 do not."""
    return dtype is torch.float16 and device.type == "cuda"
