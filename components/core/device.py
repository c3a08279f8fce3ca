"""Device and precision choice, decided at run time from the hardware (config may override).

The same code path runs on this CPU and on N GPUs: ``pick_device`` and ``autocast_dtype``
are the only places that look at the hardware.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

# bf16 autocast must beat fp32 by this factor before ``auto`` picks it on a CPU: a choice
# made on a ~2% difference would flip between runs of a noisy machine.
BF16_MIN_SPEEDUP = 1.1

# Speedups this process has read or measured, by (cache file, model key): a serving replica
# asks again at every registry poll, and must neither reread the file nor measure again.
_SPEEDUPS: dict[tuple[str, str], float] = {}


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
    return cpu_bf16_isa() is not None


@functools.lru_cache(maxsize=None)
def cpu_bf16_isa() -> str | None:
    """The CPU's bf16 matrix instructions from ``/proc/cpuinfo``: ``"amx"`` (tile units, bf16
    several times fp32), ``"avx512_bf16"`` (vector dot products only), or None."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = set(next((line.split(":")[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return "amx" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else None


def precision_name(amp: torch.dtype | None) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"`` for an autocast dtype from :func:`autocast_dtype`."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]


@functools.lru_cache(maxsize=None)
def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (``platform.processor()`` where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cache_file() -> Path:
    """One JSON file of measurements per CPU model, torch thread count and torch version."""
    root = os.environ.get("VITPIPE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vitpipe")
    key = f"{cpu_name()}|{torch.get_num_threads()}t|torch {torch.__version__}"
    return Path(root) / f"cpu-precision-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"


def _model_key(model: nn.Module, batch: int, train: bool) -> str:
    config = getattr(model, "build_config", None)
    if config is None:  # not built by the registry: its class and size stand for it
        config = {"params": sum(p.numel() for p in model.parameters())}
    name = getattr(model, "name", type(model).__name__)
    return f"{name}|{json.dumps(config, sort_keys=True, default=str)}|b{batch}|{'train' if train else 'eval'}"


def _float_sum(out) -> torch.Tensor:
    """The sum of every floating tensor in a model output (tensor, dict, list or tuple)."""
    if isinstance(out, torch.Tensor):
        return out.float().sum() if out.is_floating_point() else out.new_zeros((), dtype=torch.float32)
    values = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else ()
    return sum((_float_sum(v) for v in values), torch.zeros(()))


def measure_bf16_speedup(model: nn.Module, *, batch: int = 4, train: bool = True,
                         min_pairs: int = 7, max_pairs: int = 25, min_seconds: float = 0.5) -> float:
    """fp32 time / bf16-autocast time of ``model`` on this CPU; > 1 means bf16 is faster.

    Times the forward pass (and the backward pass when ``train``) on random uint8 patches at
    the model's own input size (``model.img_size``, ``model.patch_size``: the batch contract).
    The two precisions alternate call by call and the answer is the median of the pairs'
    ratios, so drift and bursts of load from other processes hit both sides alike. It runs on
    a copy in eval mode with the RNG state forked: the model, its batch-norm statistics and a
    seeded run's random stream are left as they were.
    """
    import copy
    import statistics

    h, w = (model.img_size, model.img_size) if isinstance(model.img_size, int) else model.img_size
    p = model.patch_size
    grid = (h // p, w // p)
    gen = torch.Generator().manual_seed(0)
    patches = torch.randint(0, 256, (batch, grid[0] * grid[1], p * p * 3), generator=gen, dtype=torch.uint8)
    probe = copy.deepcopy(model).cpu().eval()

    def once(bf16: bool) -> float:
        t0 = time.perf_counter()
        with torch.set_grad_enabled(train), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = probe(patches, grid)
        if train:
            _float_sum(out).backward()
            probe.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    ratios: list[float] = []
    spent = 0.0
    with torch.random.fork_rng(devices=[]):
        once(False), once(True)  # warm-up: kernels, allocator
        while len(ratios) < max_pairs and (len(ratios) < min_pairs or spent < min_seconds):
            fp32, bf16 = once(False), once(True)
            ratios.append(fp32 / bf16)
            spent += fp32 + bf16
    return statistics.median(ratios)


def cpu_bf16_is_faster(model: nn.Module, *, train: bool = True, batch: int = 4) -> bool:
    """Whether bf16 autocast beats fp32 by ``BF16_MIN_SPEEDUP`` for ``model`` on this CPU.

    False at once on a CPU without native bf16. Otherwise measured once per model
    architecture, mode and CPU (:func:`measure_bf16_speedup`, a second or so) and kept in
    ``~/.cache/vitpipe/cpu-precision-<cpu>.json`` (``VITPIPE_CACHE`` moves it) for every later
    process, unless the machine was too loaded to trust it (load average over twice the
    cores). Within a process the answer is kept in memory: asking again costs nothing. AMX CPUs answer yes; AVX512-BF16 without AMX answers no for narrow models, where
    the casts outweigh the GEMMs.
    """
    if not cpu_has_fast_bf16():
        return False
    key = _model_key(model, batch, train)
    path = _cache_file()
    known = _SPEEDUPS.get((str(path), key))
    if known is not None:
        return known >= BF16_MIN_SPEEDUP
    try:
        cached = json.loads(path.read_text())
        if not isinstance(cached, dict):
            cached = {}
    except (OSError, ValueError):
        cached = {}
    entry = cached.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("speedup"), (int, float)):
        _SPEEDUPS[(str(path), key)] = entry["speedup"]
        return entry["speedup"] >= BF16_MIN_SPEEDUP
    speedup = measure_bf16_speedup(model, batch=batch, train=train)
    _SPEEDUPS[(str(path), key)] = speedup
    cpus = os.cpu_count() or 1
    if os.getloadavg()[0] > 2 * cpus:  # too busy to trust for later runs: answer, don't keep
        log.info("bf16 vs fp32 for %s: %.2fx measured under load, not cached", key, speedup)
        return speedup >= BF16_MIN_SPEEDUP
    cached[key] = {"speedup": round(speedup, 3)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached, indent=1))
        tmp.replace(path)
    except OSError as err:  # a read-only home still gets the measured answer
        log.debug("precision cache not written: %s", err)
    log.info("bf16 autocast vs fp32 for %s on this CPU: %.2fx -> %s", key, speedup,
             "bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32")
    return speedup >= BF16_MIN_SPEEDUP


def autocast_dtype(device: torch.device, requested: str = "auto",
                   model: nn.Module | None = None, *, train: bool = False) -> torch.dtype | None:
    """The autocast dtype to train or serve with on ``device``; ``None`` means fp32.

    ``requested`` is ``"auto"``, ``"bf16"``, ``"fp16"`` or ``"fp32"``. ``auto`` picks bf16 on
    GPUs that support it, fp16 on older GPUs; on a CPU, bf16 where it is measured to be faster
    for ``model`` (its training step when ``train``, else its forward pass:
    :func:`cpu_bf16_is_faster`; without ``model``, where the CPU has native bf16), fp32
    otherwise.
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
    if model is None:
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    return torch.bfloat16 if cpu_bf16_is_faster(model, train=train) else None


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``'s type; a no-op context when ``dtype`` is
    ``None`` (fp32). Every forward pass under a chosen precision enters it here."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def needs_grad_scaler(dtype: torch.dtype | None, device: torch.device) -> bool:
    """fp16 on a GPU needs loss scaling; bf16 and fp32 do not."""
    return dtype is torch.float16 and device.type == "cuda"
