"""Inference cost of one registered model: parameters, MACs, latency, throughput, memory.

Each model is measured in a fresh Python process (``measure_in_subprocess``) so that its
peak memory is its own: the child resets the kernel's resident-set high-water mark
(``/proc/self/clear_refs``) after imports and reads ``VmHWM`` after each phase.

Numbers:
- ``params``: parameter count of the built model (random weights; nothing downloaded).
- ``gmacs``: multiply-accumulates of one forward pass at batch 1 counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention), divided
  by 2. Papers' "GFLOPs" for ResNet-50 (4.1) and ViT-B/16 (17.6) are these MACs.
- ``latency_ms_b1``: median wall time of ``model(patches, grid)`` at batch 1 under
  ``torch.inference_mode`` and the device's autocast dtype, after warm-up.
- ``throughput_b32``: images per second at batch 32 (total images / total time).
- ``peak_rss_mib_b1`` / ``peak_rss_mib_b32``: resident-set high-water mark during the
  batch-1 / batch-32 phase, minus the process's resident set before the model was built.

The input is what the data layer produces: uint8 patches ``[B, N, P*P*3]`` of random pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class InferenceResult:
    model: str
    task: str
    img_size: list[int]
    precision: str
    threads: int
    params: int
    gmacs: float
    latency_ms_b1: float
    latency_runs_b1: int
    throughput_b32: float
    batches_b32: int
    peak_rss_mib_b1: float
    peak_rss_mib_b32: float


def _rss_kib(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in KiB (Linux), 0 where unavailable."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0); harmless elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        pass


def _extra_flop_formulas() -> dict:
    """FLOP formulas torch's counter lacks: SDPA's CPU kernel (two matmuls, like the GPU ones)."""
    import torch
    from torch.utils.flop_counter import sdpa_flop_count

    def cpu_flash_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: cpu_flash_attention} if op is not None else {}


def count_macs(model, patches, grid) -> float:
    """Multiply-accumulates (MACs) of one forward pass, in GMACs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas())
    # The counter's module tracker hooks tensors that require grad, which fails for
    # parameters passed as arguments under no_grad: count with gradients off instead.
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.no_grad(), counter:
            model(patches, grid)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return counter.get_total_flops() / 2e9


def _timed_runs(fn, *, min_runs: int, budget_s: float) -> list[float]:
    """Wall times of ``fn()``: at least ``min_runs``, more while within ``budget_s``."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start) < budget_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 200:
            break
    return times


def measure_model(
    name: str,
    *,
    img_size: int | tuple[int, int] | None = None,
    num_classes: int | None = None,
    precision: str = "auto",
    budget_s: float = 5.0,
    batch_large: int = 32,
    threads: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> InferenceResult:
    """Measure ``name`` (built with ``overrides``, e.g. ``{"stem": "conv"}``) in this process
    (see the module docstring for each number)."""
    import numpy as np
    import torch

    from components.core.device import autocast, autocast_dtype
    from components.data.patchify import patchify
    from components.models import build_model

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    base_rss = _rss_kib("VmRSS")
    model = build_model(name, num_classes=num_classes, img_size=img_size, **(overrides or {})).eval()
    h, w = (model.img_size, model.img_size) if isinstance(model.img_size, int) else model.img_size
    device = torch.device("cpu")
    amp = autocast_dtype(device, precision, model)
    rng = np.random.default_rng(0)

    def inputs(batch: int):
        pixels = rng.integers(0, 256, size=(batch, h, w, 3), dtype=np.uint8)
        return patchify(torch.from_numpy(pixels), model.patch_size)

    def run(patches, grid):
        with torch.inference_mode(), autocast("cpu", amp):
            return model(patches, grid)

    params = sum(p.numel() for p in model.parameters())
    patches1, grid = inputs(1)
    gmacs = count_macs(model, patches1.float(), grid)

    _reset_peak()
    run(patches1, grid)  # warm-up (allocator, autocast caches, oneDNN kernels)
    lat = _timed_runs(lambda: run(patches1, grid), min_runs=3, budget_s=budget_s / 2)
    peak_b1 = _rss_kib("VmHWM")

    patches32, grid = inputs(batch_large)
    _reset_peak()
    run(patches32, grid)  # warm-up at the large batch
    big = _timed_runs(lambda: run(patches32, grid), min_runs=1, budget_s=budget_s / 2)
    peak_b32 = _rss_kib("VmHWM")
    return InferenceResult(
        model=name, task=model.task, img_size=[int(h), int(w)],
        precision=str(amp).replace("torch.", "") if amp is not None else "fp32",
        threads=torch.get_num_threads(), params=int(params), gmacs=round(gmacs, 4),
        latency_ms_b1=round(statistics.median(lat) * 1e3, 3), latency_runs_b1=len(lat),
        throughput_b32=round(batch_large * len(big) / sum(big), 3), batches_b32=len(big),
        peak_rss_mib_b1=round(max(0, peak_b1 - base_rss) / 1024, 1),
        peak_rss_mib_b32=round(max(0, peak_b32 - base_rss) / 1024, 1),
    )


def measure_in_subprocess(name: str, *, img_size: int | tuple[int, int] | None = None,
                          num_classes: int | None = None, precision: str = "auto",
                          budget_s: float = 5.0, batch_large: int = 32, threads: int | None = None,
                          overrides: dict[str, Any] | None = None, timeout_s: float = 900.0) -> InferenceResult:
    """:func:`measure_model` in a fresh interpreter (own memory high-water mark)."""
    cmd = [sys.executable, "-m", "components.report.inference", "--model", name,
           "--precision", precision, "--budget-s", str(budget_s), "--batch-large", str(batch_large)]
    if overrides:
        cmd += ["--overrides", json.dumps(overrides)]
    if img_size is not None:
        size = [img_size, img_size] if isinstance(img_size, int) else list(img_size)
        cmd += ["--img-size", str(size[0]), str(size[1])]
    if num_classes is not None:
        cmd += ["--num-classes", str(num_classes)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    last = proc.stdout.strip().splitlines()[-1]
    return InferenceResult(**json.loads(last))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="measure one model's inference cost (JSON on stdout)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--img-size", type=int, nargs=2, default=None)
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--budget-s", type=float, default=5.0)
    parser.add_argument("--batch-large", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--overrides", type=json.loads, default=None, help="build keywords, a JSON object")
    args = parser.parse_args(argv)
    result = measure_model(args.model, img_size=tuple(args.img_size) if args.img_size else None,
                           num_classes=args.num_classes, precision=args.precision,
                           budget_s=args.budget_s, batch_large=args.batch_large,
                           threads=args.threads, overrides=args.overrides)
    print(json.dumps(asdict(result)))
    return 0


def as_dict(result: InferenceResult) -> dict[str, Any]:
    return asdict(result)


if __name__ == "__main__":
    sys.exit(main())
