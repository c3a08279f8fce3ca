"""Time-to-accuracy of the demo's tiny classifiers: how many steps and images they need.

The demo's CPU budget gives the tiny ViT ~370 steps on ~800 crops, where it stays near 0.35
val top-1. This measures, on whatever device is there (a GPU when one is lent), the val top-1
of the demo classifiers against optimizer steps for two training-set sizes, with the
pipeline's own pieces: ``components.data.synth`` (the embedded dataset), ``image_io.preprocess``
(the eval transform), ``components.models`` and the worker's ``StepRunner``. Ray is not used
(the GPU machine has none); augmentation is a random horizontal flip (``--rot90``: and quarter
turns) done on the device. Model specs: ``name[/patch][+stem]`` (``vit_demo+conv``: the conv stem).

    python benchmarks/bench_accuracy_gpu.py [--steps 3000] [--out benchmarks/results/accuracy_gpu.json]
    # the conv stem against the patchify stem, one CPU thread (accuracy_cpu_stem.json):
    python benchmarks/bench_accuracy_gpu.py --threads 1 --steps 600 --eval-every 100 --batch 64 \\
        --num-train 1000 4000 --models vit_demo+conv vit_demo --rot90 --out benchmarks/results/accuracy_cpu_stem.json
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _machine import cpu_name  # benchmarks/, the script's own folder
from _specs import parse_model_spec
from components.core.device import autocast_dtype, pick_device
from components.data.image_io import decode_image, preprocess
from components.data.patchify import patchify, unpatchify
from components.data.synth import SynthConfig, synthesize
from components.models import build_model
from components.tasks.losses import classification_loss
from components.training.step import StepRunner

IMAGE_SIZE, PATCH = 64, 16  # crops are stored at PATCH-aligned 64 px; a model may use a finer patch


def load_crops(root: Path, split: str, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageFolder crops → (uint8 images [N, H, W, 3], labels [N]) through the eval transform."""
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / split / name).iterdir()):
            patches, grid = preprocess(decode_image(path.read_bytes()), image_size=IMAGE_SIZE, patch_size=PATCH)
            images.append(unpatchify(patches, grid, PATCH))
            labels.append(label)
    return torch.from_numpy(np.stack(images)), torch.tensor(labels)


def augment(images: torch.Tensor, generator: torch.Generator, *, rot90: bool) -> torch.Tensor:
    """Random horizontal flip (and, with ``rot90``, a random multiple of 90°) per image [B, H, W, 3]."""
    batch = images.shape[0]
    flip = (torch.rand(batch, generator=generator) < 0.5).to(images.device)
    images = torch.where(flip[:, None, None, None], images.flip(2), images)
    if rot90:  # square crops: each group of images with the same turn count rotates at once
        turns = torch.randint(0, 4, (batch,), generator=generator).to(images.device)
        images = images.clone()
        for k in range(1, 4):
            chosen = turns == k
            images[chosen] = torch.rot90(images[chosen], k, dims=(1, 2))
    return images


def evaluate(model, images, labels, amp, patch: int) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode(), torch.autocast(images.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        for i in range(0, len(images), 512):
            patches, grid = patchify(images[i:i + 512], patch)
            correct += (model(patches, grid).argmax(1) == labels[i:i + 512]).sum().item()
    return correct / len(images)


def train_curve(spec: str, train, val, *, steps: int, eval_every: int, batch: int, lr: float,
                device, amp, rot90: bool) -> dict:
    torch.manual_seed(0)
    name, extra = parse_model_spec(spec)
    patch = extra.get("patch_size", PATCH)
    if "vit" in name:
        extra["head"] = "mlp"
    model = build_model(name, num_classes=5, img_size=IMAGE_SIZE, **extra).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(steps // 20, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    runner = StepRunner(model=model, optimizer=optimizer, scheduler=scheduler, loss_fn=classification_loss(0.0),
                        device=device, amp_dtype=amp, clip_grad_norm=1.0)
    x_train, y_train = train
    curve, started = [], time.perf_counter()
    generator = torch.Generator(device="cpu").manual_seed(0)
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x_train), (batch,), generator=generator).to(device)
        images = augment(x_train[idx], generator, rot90=rot90)
        patches, grid = patchify(images, patch)
        out = runner.micro_step({"patches": patches, "grid": torch.tensor([grid] * batch), "label": y_train[idx]}, step=step)
        if step % eval_every == 0 or step == steps:
            top1 = evaluate(model, *val, amp, patch)
            curve.append({"step": step, "images_seen": step * batch, "seconds": round(time.perf_counter() - started, 1),
                          "train_loss": round(float(out["loss"]), 4), "val_top1": round(top1, 4)})
            print(name, curve[-1], flush=True)
    first = {t: next((p["step"] for p in curve if p["val_top1"] >= t), None) for t in (0.9, 0.95)}
    return {"model": spec, "curve": curve, "best_val_top1": max(p["val_top1"] for p in curve),
            "steps_to_0.90": first[0.9], "steps_to_0.95": first[0.95]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--num-train", type=int, nargs="+", default=[320, 2000])
    parser.add_argument("--models", nargs="+", default=["vit_demo", "hybrid_demo", "resnet_demo"])
    parser.add_argument("--rot90", action="store_true", help="also rotate by multiples of 90 degrees")
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--out", default="benchmarks/results/accuracy_gpu.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device()
    amp = autocast_dtype(device, args.precision)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for num_train in args.num_train:
            root = synthesize(Path(tmp) / str(num_train), SynthConfig(seed=0, num_train=num_train, num_val=args.num_val))
            crops = root / "imagefolder"
            classes = sorted(p.name for p in (crops / "train").iterdir())
            train = tuple(t.to(device) for t in load_crops(crops, "train", classes))
            val = tuple(t.to(device) for t in load_crops(crops, "val", classes))
            for name in args.models:
                row = train_curve(name, train, val, steps=args.steps, eval_every=args.eval_every,
                                  batch=args.batch, lr=args.lr, device=device, amp=amp, rot90=args.rot90)
                row.update(synth_images=num_train, train_crops=len(train[0]), val_crops=len(val[0]))
                results.append(row)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else cpu_name()
    report = {"benchmark": "accuracy_gpu", "device": device_name, "torch": torch.__version__,
              "precision": str(amp), "torch_threads": torch.get_num_threads(), "settings": vars(args),
              "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps([{k: r[k] for k in ("model", "synth_images", "train_crops", "best_val_top1", "steps_to_0.90", "steps_to_0.95")} for r in results], indent=1))


if __name__ == "__main__":
    main()
