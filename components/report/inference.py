"""Inference cost of one registered model: parameters, MACs, latency, throughput, memory.

Each model is measured in a fresh Python process (``measure_in_subprocess``) so that its
peak memory is its own: the child resets the kernel's resident-set high-water mark
(``/proc/self/clear_refs``) after imports and reads ``VmHWM`` after each phase.

Numbers, per precision (fp32 always; bf16 autocast too where the CPU runs bf16 natively,
the only place ``precision: auto`` would pick it):
- ``params``: parameter count of the built model (random weights; nothing downloaded).
- ``gmacs``: multiply-accumulates of one forward pass at batch 1 counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention), divided
  by 2. Papers' "GFLOPs" for ResNet-50 (4.1) and ViT-B/16 (17.6) are these MACs. Ops the
  counter has no formula for (deformable attention's ``grid_sample``) count zero.
- ``latency_ms_b1``: median wall time of ``latency_runs`` calls of ``model(patches, grid)`` at
  batch 1 under ``torch.inference_mode`` after ``warmup_runs`` untimed ones.
- ``throughput``: images per second at ``batch_large`` (after one untimed batch).
- ``peak_rss_mib_b1`` / ``peak_rss_mib_large``: resident-set high-water mark during the
  batch-1 / large-batch phase, minus the process's resident set before the model was built
  (weights + activations + workspace).
- ``auto_pick``: the precision ``precision: auto``'s rule (bf16 at least
  ``BF16_MIN_SPEEDUP`` times faster than fp32) picks from these batch-1 medians.

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
class PrecisionCost:
    """The timings and memory of one precision."""

    latency_ms_b1: float  # median of the timed batch-1 runs
    latency_ms_b1_min: float
    latency_runs_b1: int
    throughput: float  # images/s at ``batch_large``
    batches_large: int
    peak_rss_mib_b1: float  # resident-set high-water mark over the pre-model baseline
    peak_rss_mib_large: float


@dataclass
class InferenceResult:
    model: str
    task: str
    img_size: list[int]
    threads: int
    params: int
    gmacs: float
    batch_large: int
    by_precision: dict[str, PrecisionCost]
    bf16_speedup_b1: float | None  # fp32 / bf16 median batch-1 latency (None: bf16 not measured)
    auto_pick: str  # what ``precision: auto``'s rule (bf16 >= BF16_MIN_SPEEDUP x fp32) picks here

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InferenceResult":
        d = dict(d)
        d["by_precision"] = {k: PrecisionCost(**v) for k, v in d["by_precision"].items()}
        return cls(**d)


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


def _timed(fn, runs: int) -> list[float]:
    """Wall times of ``runs`` calls of ``fn()``."""
    times: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def precisions_to_measure(requested: str) -> list[str]:
    """``fp32+bf16``: fp32, and bf16 too where the CPU runs it natively (the only place
    ``precision: auto`` would consider it); ``fp32`` / ``bf16``: that one."""
    from components.core.device import cpu_has_fast_bf16

    if requested == "fp32+bf16":
        return ["fp32", "bf16"] if cpu_has_fast_bf16() else ["fp32"]
    return [requested]


def measure_model(
    name: str,
    *,
    img_size: int | tuple[int, int] | None = None,
    num_classes: int | None = None,
    precision: str = "fp32+bf16",
    warmup_runs: int = 2,
    latency_runs: int = 5,
    batch_large: int = 32,
    throughput_batches: int = 1,
    threads: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> InferenceResult:
    """Measure ``name`` (built with ``overrides``, e.g. ``{"stem": "conv"}``) in this process
    (see the module docstring for each number). Peak memory is meaningful only in a fresh
    process (:func:`measure_in_subprocess`)."""
    import numpy as np
    import torch

    from components.core.device import BF16_MIN_SPEEDUP
    from components.data.patchify import patchify
    from components.models import build_model

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    base_rss = _rss_kib("VmRSS")
    model = build_model(name, num_classes=num_classes, img_size=img_size, **(overrides or {})).eval()
    h, w = (model.img_size, model.img_size) if isinstance(model.img_size, int) else model.img_size
    rng = np.random.default_rng(0)

    def inputs(batch: int):
        pixels = rng.integers(0, 256, size=(batch, h, w, 3), dtype=np.uint8)
        return patchify(torch.from_numpy(pixels), model.patch_size)

    params = sum(p.numel() for p in model.parameters())
    patches1, grid = inputs(1)
    gmacs = count_macs(model, patches1.float(), grid)
    patches_large, grid_large = inputs(batch_large)

    by_precision: dict[str, PrecisionCost] = {}
    for prec in precisions_to_measure(precision):
        amp = torch.bfloat16 if prec == "bf16" else None

        def run(patches, grid, amp=amp):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp is not None):
                return model(patches, grid)

        _reset_peak()
        _timed(lambda: run(patches1, grid), warmup_runs)  # allocator, autocast caches, oneDNN kernels
        lat = _timed(lambda: run(patches1, grid), latency_runs)
        peak_b1 = _rss_kib("VmHWM")
        _reset_peak()
        run(patches_large, grid_large)  # warm-up at the large batch
        big = _timed(lambda: run(patches_large, grid_large), throughput_batches)
        peak_large = _rss_kib("VmHWM")
        by_precision[prec] = PrecisionCost(
            latency_ms_b1=round(statistics.median(lat) * 1e3, 3), latency_ms_b1_min=round(min(lat) * 1e3, 3),
            latency_runs_b1=len(lat), throughput=round(batch_large * len(big) / sum(big), 3),
            batches_large=len(big),
            peak_rss_mib_b1=round(max(0, peak_b1 - base_rss) / 1024, 1),
            peak_rss_mib_large=round(max(0, peak_large - base_rss) / 1024, 1),
        )
    speedup = None
    if "fp32" in by_precision and "bf16" in by_precision:
        speedup = round(by_precision["fp32"].latency_ms_b1 / by_precision["bf16"].latency_ms_b1, 3)
    auto = ("bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32") if speedup is not None else next(iter(by_precision))
    return InferenceResult(
        model=name, task=model.task, img_size=[int(h), int(w)], threads=torch.get_num_threads(),
        params=int(params), gmacs=round(gmacs, 4), batch_large=batch_large, by_precision=by_precision,
        bf16_speedup_b1=speedup, auto_pick=auto,
    )


_KEYWORDS = ("img_size", "num_classes", "precision", "warmup_runs", "latency_runs", "batch_large",
             "throughput_batches", "threads", "overrides")


def measure_in_subprocess(name: str, *, timeout_s: float = 600.0, **kwargs: Any) -> InferenceResult:
    """:func:`measure_model` in a fresh interpreter (its own memory high-water mark).
    ``kwargs``: :func:`measure_model`'s keywords."""
    unknown = set(kwargs) - set(_KEYWORDS)
    if unknown:
        raise TypeError(f"unknown keywords {sorted(unknown)}")
    request = {"name": name, **{k: v for k, v in kwargs.items() if v is not None}}
    cmd = [sys.executable, "-m", "components.report.inference", json.dumps(request)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    last = proc.stdout.strip().splitlines()[-1]
    return InferenceResult.from_dict(json.loads(last))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="measure one model's inference cost (JSON on stdout)")
    parser.add_argument("request", type=json.loads,
                        help='a JSON object: {"name": ..., and measure_model\'s keywords}')
    args = parser.parse_args(argv)
    request = dict(args.request)
    if isinstance(request.get("img_size"), list):
        request["img_size"] = tuple(request["img_size"])
    result = measure_model(request.pop("name"), **request)
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
