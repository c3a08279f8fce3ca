"""GPU path of the training step (no Ray needed): ViT-Ti/16 and ViT-S/16 at 224 px, bf16.

Runs :class:`components.training.step.StepRunner` — the exact step the Ray Train worker
runs — on CUDA with uint8 patch batches resident on the GPU (the data loader's output
contract), AdamW + warmup/cosine, clipping. Reports img/s and MFU (model FLOPs per step
counted with ``torch.utils.flop_counter`` on one real step, divided by the step time and
the card's dense bf16 peak). Writes ``benchmarks/results/train_gpu.json``.

    python benchmarks/bench_train_gpu.py [--out PATH] [--steps 30] [--compile]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.core.device import autocast_dtype  # noqa: E402
from components.models import build_model  # noqa: E402
from components.training.optim import build_optimizer, build_scheduler  # noqa: E402
from components.tasks.losses import classification_loss  # noqa: E402
from components.training.step import StepRunner  # noqa: E402

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, by marketing name fragment.
PEAKS = {"H100 80GB HBM3": 989e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


class Optim:  # the fields build_optimizer/build_scheduler read (no pydantic on the GPU box)
    lr = 1e-3
    weight_decay = 0.05
    betas = (0.9, 0.999)
    warmup_steps = 5
    schedule = "cosine"
    min_lr_ratio = 0.01
    layer_decay = 1.0


def peak_flops(name: str) -> float | None:
    for key, value in PEAKS.items():
        if key in name:
            return value
    return None


def make_batch(batch: int, img: int, patch: int, classes: int, device) -> dict[str, torch.Tensor]:
    g = img // patch
    return {
        "patches": torch.randint(0, 256, (batch, g * g, patch * patch * 3), dtype=torch.uint8, device=device),
        "grid": torch.tensor([[g, g]] * batch, device=device),
        "label": torch.randint(0, classes, (batch,), device=device),
    }


def bench_model(name: str, batch: int, steps: int, warmup: int, compile_model: bool, device,
                fused: bool | None = None) -> dict:
    torch.manual_seed(0)
    model = build_model(name, num_classes=1000, head="linear").to(device)
    img, patch = int(model.img_size), int(model.patch_size)
    optimizer = build_optimizer(model, Optim, fused=fused)
    scheduler = build_scheduler(optimizer, Optim, total_steps=steps + warmup)
    amp = autocast_dtype(device, "bf16")
    runner_model = torch.compile(model) if compile_model else model
    runner = StepRunner(model=runner_model, optimizer=optimizer, scheduler=scheduler,
                        loss_fn=classification_loss(0.1), device=device, amp_dtype=amp,
                        clip_grad_norm=1.0, check_finite=False)
    data = make_batch(batch, img, patch, 1000, device)
    from torch.utils.flop_counter import FlopCounterMode

    runner.micro_step(data)  # warm (and compile) outside the counter
    with FlopCounterMode(display=False) as counter:
        runner.micro_step(data)
    step_flops = counter.get_total_flops()
    for _ in range(warmup):
        runner.micro_step(data)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        out = runner.micro_step(data)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    loss = float(out["loss"])
    img_s = batch * steps / elapsed
    peak = peak_flops(torch.cuda.get_device_name(0))
    achieved = step_flops * steps / elapsed
    return {
        "model": name, "img_size": img, "patch_size": patch, "batch_size": batch,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "precision": "bf16 autocast", "compiled": compile_model, "steps_timed": steps,
        "adamw": "fused" if fused else "foreach (default)",
        "step_ms": round(1000 * elapsed / steps, 2), "img_per_s": round(img_s, 1),
        "flops_per_step": step_flops, "achieved_tflops": round(achieved / 1e12, 1),
        "peak_tflops_bf16_dense": peak and peak / 1e12,
        "mfu": round(achieved / peak, 4) if peak else None, "final_loss": round(loss, 4),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def profile_step(name: str, batch: int, device) -> None:
    from torch.profiler import ProfilerActivity, profile

    model = build_model(name, num_classes=1000, head="linear").to(device)
    optimizer = build_optimizer(model, Optim)
    runner = StepRunner(model=model, optimizer=optimizer,
                        scheduler=build_scheduler(optimizer, Optim, total_steps=100),
                        loss_fn=classification_loss(0.1), device=device,
                        amp_dtype=torch.bfloat16, clip_grad_norm=1.0, check_finite=False)
    data = make_batch(batch, int(model.img_size), int(model.patch_size), 1000, device)
    for _ in range(5):
        runner.micro_step(data)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            runner.micro_step(data)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/train_gpu.json")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--profile", action="store_true", help="print the top CUDA kernels of ViT-Ti")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda", 0)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    results = []
    if args.profile:
        profile_step("vit_tiny_patch16_224", args.batch, device)
    for name, batch in (("vit_tiny_patch16_224", args.batch), ("vit_small_patch16_224", args.batch)):
        for compiled, fused in ([(False, None), (False, True), (True, True)] if args.compile
                                else [(False, None), (False, True)]):
            torch.cuda.reset_peak_memory_stats()
            row = bench_model(name, batch, args.steps, args.warmup, compiled, device, fused)
            print(json.dumps(row), flush=True)
            results.append(row)
    doc = {
        "benchmark": "train_step_gpu",
        "what": "components.training.step.StepRunner on CUDA (the Ray Train worker's step, run "
                "without Ray: the GPU machine has no Ray), uint8 patch batches on the GPU, AdamW, "
                "bf16 autocast, grad clipping; FLOPs counted by torch.utils.flop_counter",
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__, "python": platform.python_version(),
        "cuda": torch.version.cuda, "host_cpus": os.cpu_count(),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
