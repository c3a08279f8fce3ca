"""CPU training-step throughput and MFU of ViT-Ti/16 and ViT-S/16: the pipeline's step vs a
plain eager timm loop (fp32 and bf16), all measured in this one run.

Variants per model (same architecture, batch and image size; random data, 1000 classes):

- ``timm_eager_fp32``: ``timm.create_model`` + ``torch.optim.AdamW`` (default foreach), fp32;
- ``timm_eager_bf16``: the same under ``torch.autocast(bf16)``;
- ``pipeline_eager``: ``components.models.build_model`` fed uint8 patch batches (the data
  contract) through ``components.training.step.StepRunner`` — the Ray Train worker's step —
  with the precision from ``autocast_dtype(device, "auto")``, fused AdamW, grad clipping;
- ``pipeline_compiled``: the same with ``torch.compile(model)``.

MFU = model FLOPs per step (``torch.utils.flop_counter`` on one real step) / step time /
a GEMM peak measured here (square matmuls in the step's dtype). Model FLOPs are counted
once per model (eager fp32 step) and shared by its variants. The variants of a model are
timed round-robin (one step of each in turn, ``--seconds`` per variant in total, at least
``--min-steps`` rounds; medians), so load from other processes on a shared machine falls
on all of them alike. Bounded: variants that would start after ``--budget-s`` are recorded
as skipped (default 600 s).

    python benchmarks/bench_models.py [--batch 16] [--img 64] [--seconds 5] [--out PATH]

Defaults: the models' own 224 px, batch 16 (the demo trains at 64-96 px: pass --img 64).
A run whose measured fp32 GEMM peak is below a quarter of the CPU's nominal rate (clock ×
FLOPs per cycle of its vector ISA) is refused: other work held the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.core.device import autocast_dtype, cpu_has_fast_bf16  # noqa: E402
from components.data.patchify import images_to_patches  # noqa: E402
from components.models import build_model  # noqa: E402
from components.tasks.losses import classification_loss  # noqa: E402
from components.training.step import StepRunner  # noqa: E402
from _machine import MIN_PEAK_SHARE, check_gemm_peak, gemm_peak  # noqa: E402  (benchmarks/, the script's own folder)

MODELS = ("vit_tiny_patch16_224", "vit_small_patch16_224")


def timed_round_robin(steps: dict, seconds: float, min_rounds: int) -> dict[str, tuple[float, float, int]]:
    """Median wall seconds and median CPU seconds (this process, all threads) per call of each
    ``steps[name]()``, calling them in turn (one round = one call of each) so that load
    changes on a shared machine hit every variant alike. CPU time is the steadier number
    when other processes compete for the cores."""
    wall: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    end = time.perf_counter() + seconds
    rounds = 0
    while rounds < min_rounds or time.perf_counter() < end:
        for name, step in steps.items():
            t, c = time.perf_counter(), time.process_time()
            step()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
        rounds += 1
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    return {k: (med(wall[k]), med(cpu[k]), len(wall[k])) for k in steps}


def count_flops(step) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def timm_loop(name: str, images: torch.Tensor, labels: torch.Tensor, amp: torch.dtype | None):
    """A plain eager timm training step (what a user would write without vitpipe)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=1000, img_size=images.shape[-1])
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    x = ((images.float() / 255) - 0.5) / 0.5

    def step():
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(model(x).float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def pipeline_loop(name: str, images: torch.Tensor, labels: torch.Tensor, amp: torch.dtype | None, compiled: bool):
    """The pipeline's step: vitpipe model on uint8 patches, StepRunner, fused AdamW, clipping."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=1000, img_size=images.shape[-1], head="linear")
    patches, grid = images_to_patches(images, model.patch_size)
    batch = {"patches": patches.contiguous(), "grid": torch.tensor([grid] * len(images)), "label": labels}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _s: 1.0)
    runner = StepRunner(model=torch.compile(model) if compiled else model, optimizer=opt, scheduler=sched,
                        loss_fn=classification_loss(), device=torch.device("cpu"), amp_dtype=amp,
                        clip_grad_norm=1.0, check_finite=False)
    return lambda: runner.micro_step(batch)["loss"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per variant")
    parser.add_argument("--min-steps", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=600.0, help="start no variant after this")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--out", default="benchmarks/results/models.json")
    parser.add_argument("--allow-loaded", action="store_true",
                        help="measure even when the GEMM peak shows a loaded machine (not for publishing)")
    args = parser.parse_args()
    started = time.perf_counter()
    load_at_start = os.getloadavg()
    device = torch.device("cpu")
    amp = autocast_dtype(device, "auto")
    peaks = {"fp32": gemm_peak(torch.float32, 3.0)}
    if cpu_has_fast_bf16():
        peaks["bf16"] = gemm_peak(torch.bfloat16, 3.0)
    print(json.dumps({"gemm_peak_tflops": {k: round(v / 1e12, 3) for k, v in peaks.items()}}), flush=True)
    peak_check = check_gemm_peak(peaks["fp32"], torch.get_num_threads())
    if peak_check["ok"] is False and not args.allow_loaded:
        print(f"refusing to measure: the fp32 GEMM peak {peaks['fp32'] / 1e12:.4f} TFLOP/s is "
              f"{peak_check['share']:.0%} of this CPU's nominal {peak_check['nominal_tflops']} "
              f"TFLOP/s (below {MIN_PEAK_SHARE:.0%}: other work holds the cores); rerun on a "
              "quiet machine or pass --allow-loaded", file=sys.stderr)
        return 2
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, args.img, args.img), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 1000, (args.batch,), generator=g)
    results = []
    for name in args.models:
        variants = [
            ("timm_eager_fp32", None, lambda: timm_loop(name, images, labels, None)),
            ("timm_eager_bf16", torch.bfloat16, lambda: timm_loop(name, images, labels, torch.bfloat16)),
            ("pipeline_eager", amp, lambda: pipeline_loop(name, images, labels, amp, False)),
            ("pipeline_compiled", amp, lambda: pipeline_loop(name, images, labels, amp, True)),
        ]
        rows, steps, warm = {}, {}, {}
        flops = 0
        for variant, dtype, make in variants:
            if time.perf_counter() - started > args.budget_s:
                rows[variant] = {"model": name, "variant": variant, "skipped": "time budget spent"}
                print(json.dumps(rows[variant]), flush=True)
                continue
            t0 = time.perf_counter()
            steps[variant] = make()
            steps[variant]()  # warm-up (and compile)
            warm[variant] = time.perf_counter() - t0
            flops = flops or count_flops(steps[variant])  # model FLOPs: counted once, eager
        timings = timed_round_robin(steps, args.seconds * len(steps), args.min_steps)
        for variant, dtype, _ in variants:
            if variant not in steps:
                continue
            sec, cpu_sec, n = timings[variant]
            peak = peaks.get("bf16" if dtype is torch.bfloat16 else "fp32")
            achieved = flops / sec
            rows[variant] = {
                "model": name, "variant": variant, "precision": "bf16 autocast" if dtype else "fp32",
                "batch_size": args.batch, "img_size": args.img, "steps_timed": n,
                "step_ms": round(sec * 1000, 1), "img_per_s": round(args.batch / sec, 2),
                "step_cpu_ms": round(cpu_sec * 1000, 1),
                "flops_per_step": flops, "achieved_tflops": round(achieved / 1e12, 4),
                "mfu": round(achieved / peak, 4) if peak else None, "warmup_s": round(warm[variant], 1),
            }
            print(json.dumps(rows[variant]), flush=True)
        done = {k: v for k, v in rows.items() if "img_per_s" in v}
        base = done.get("timm_eager_bf16", {}).get("img_per_s")
        base_cpu = done.get("timm_eager_bf16", {}).get("step_cpu_ms")
        for row in done.values():
            row["speedup_vs_timm_eager_bf16"] = round(row["img_per_s"] / base, 3) if base else None
            row["cpu_time_speedup_vs_timm_eager_bf16"] = round(base_cpu / row["step_cpu_ms"], 3) if base_cpu else None
        candidates = [v for v in ("pipeline_eager", "pipeline_compiled") if v in done]
        if candidates:
            done[max(candidates, key=lambda v: done[v]["img_per_s"])]["pipeline_choice"] = True
        results.extend(rows.values())
    doc = {
        "benchmark": "models_train_step_cpu",
        "what": __doc__.split("\n\n")[0].replace("\n", " "),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "host_cpus": os.cpu_count(), "fast_bf16": cpu_has_fast_bf16(),
                    "loadavg_at_start": load_at_start,
                    "loadavg_at_end": os.getloadavg()},
        "torch": torch.__version__, "python": platform.python_version(),
        "gemm_peak_tflops": {k: round(v / 1e12, 4) for k, v in peaks.items()},
        "gemm_peak_check": peak_check,
        "pipeline_precision": str(amp), "wall_s": round(time.perf_counter() - started, 1),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(f"wrote {args.out} in {doc['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
