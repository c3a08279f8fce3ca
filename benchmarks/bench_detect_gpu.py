"""Time to mAP of the demo detectors: how many steps YOLOS and DETR need on the synthetic set.

The demo's CPU budget gives YOLOS ~500 steps of 16 images, where its mAP50 stays near 0. This
measures, on whatever device is there (a GPU when one is lent), COCO mAP50 / mAP on the
synthetic val split against optimizer steps, with the pipeline's own pieces:
``components.data.synth`` (the embedded dataset), ``image_io.preprocess`` (the eval transform:
the whole image resized, so normalised boxes are those of the original image),
``components.models`` (detector + Hungarian ``SetCriterion``), the worker's ``StepRunner`` and
the one evaluator (``evaluate_detection``, pycocotools). Ray is not used (the GPU machine has
none); augmentation is a random horizontal flip (boxes follow) done on the device. Models
start from random weights, or with ``--init DIR`` from a vitpipe classifier checkpoint
(``yolos.init_from_classifier``, as the demo initialises YOLOS from its pretrained ViT; the
spec's stem must be the checkpoint's, e.g. ``yolos_demo+conv`` for a conv-stem ViT).
``--det-tokens`` sets YOLOS' ``num_det_tokens``, ``--eos-coef`` the criterion's no-object
weight, ``--clip`` the gradient-norm clip (0: none; default 0.1, the pipeline's).

A model spec is ``name[/patch][+stem]``: ``yolos_demo+conv`` builds YOLOS with the conv stem
(``stem="conv"``), ``yolos_demo/8`` with 8x8 patches. ``--match-repeats 1 3`` trains each
model once per k (one-to-many matching: every box matched to k queries); runs with k > 1
build the model with ``nms_iou=--nms-iou`` so the evaluator drops the duplicates, and their
curve also reports mAP50 without NMS (``map50_no_nms``).

    python benchmarks/bench_detect_gpu.py [--steps 3000] [--models yolos_demo yolos_demo/8 detr_demo]
    python benchmarks/bench_detect_gpu.py --models yolos_demo --batch 32 --steps 2000 \\
        --num-train 1000 --out benchmarks/results/detect_cpu.json          # this 2-core CPU
    OMP_NUM_THREADS=1 python benchmarks/bench_detect_gpu.py --threads 1 --models yolos_demo+conv \\
        --match-repeats 1 3 --nms-iou 0.7 --batch 16 --steps 1500 --eval-every 250 --num-train 1000 \\
        --out benchmarks/results/detect_cpu_o2m.json                      # one-to-many, one core
    OMP_NUM_THREADS=1 python benchmarks/bench_detect_gpu.py --threads 1 --models yolos_demo+conv \
        --match-repeats 3 --nms-iou 0.7 --batch 16 --steps 1000 --eval-every 250 --num-train 4000 \
        --init CHECKPOINT_DIR --out benchmarks/results/detect_cpu_recipe.json  # from a ViT
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

from components.core.checkpoint import load_checkpoint
from components.core.device import autocast_dtype, pick_device
from components.data.boxes import coco_to_batch
from components.data.image_io import decode_image, preprocess
from components.data.patchify import patchify, unpatchify
from components.data.synth import SynthConfig, synthesize
from components.models import build_model
from components.models.criterion import build_criterion
from components.models.yolos import init_from_classifier
from components.evaluation import evaluate_detection
from components.tasks.losses import detection_loss
from components.training.step import StepRunner
from _machine import cpu_name  # benchmarks/, the script's own folder
from _specs import parse_model_spec

IMAGE_SIZE, PATCH, MAX_BOXES = 96, 16, 10


def load_split(root: Path, split: str) -> dict[str, torch.Tensor]:
    """COCO split → images uint8 [N, H, W, 3] (eval transform), boxes [N, M, 4] normalised
    cxcywh, classes [N, M] (contiguous ids), box_mask [N, M], image_id [N], orig_size [N, 2]."""
    coco = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    cat_index = {cid: i for i, cid in enumerate(sorted(c["id"] for c in coco["categories"]))}
    anns: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        anns.setdefault(ann["image_id"], []).append(ann)
    images, boxes, classes, masks, ids, sizes = [], [], [], [], [], []
    for info in sorted(coco["images"], key=lambda i: i["id"]):
        rgb = decode_image((root / "images" / split / info["file_name"]).read_bytes())
        patches, grid = preprocess(rgb, image_size=IMAGE_SIZE, patch_size=PATCH)
        images.append(unpatchify(patches, grid, PATCH))  # [H, W, 3] at IMAGE_SIZE
        h, w = rgb.shape[:2]
        own = anns.get(info["id"], [])[:MAX_BOXES]
        padded = np.zeros((MAX_BOXES, 4), np.float32)
        labels = np.zeros(MAX_BOXES, np.int64)
        mask = np.zeros(MAX_BOXES, bool)
        if own:
            padded[: len(own)] = coco_to_batch(np.array([a["bbox"] for a in own]), w, h)
            labels[: len(own)] = [cat_index[a["category_id"]] for a in own]
            mask[: len(own)] = True
        boxes.append(padded)
        classes.append(labels)
        masks.append(mask)
        ids.append(info["id"])
        sizes.append((h, w))
    return {"images": torch.from_numpy(np.stack(images)), "boxes": torch.from_numpy(np.stack(boxes)),
            "classes": torch.from_numpy(np.stack(classes)), "box_mask": torch.from_numpy(np.stack(masks)),
            "image_id": torch.tensor(ids), "orig_size": torch.tensor(sizes)}


def val_batches(val: dict[str, torch.Tensor], patch: int, size: int = 256):
    for i in range(0, len(val["images"]), size):
        patches, grid = patchify(val["images"][i:i + size], patch)
        yield {"patches": patches, "grid": torch.tensor([grid] * len(patches)),
               "image_id": val["image_id"][i:i + size], "orig_size": val["orig_size"][i:i + size]}


def train_curve(spec: str, train, val, gt_path: Path, *, steps: int, eval_every: int, batch: int,
                lr: float, device, amp, match_repeats: int = 1, nms_iou: float | None = None,
                seed: int = 0, init: dict[str, torch.Tensor] | None = None, det_tokens: int | None = None,
                eos_coef: float = 0.1, clip: float = 0.1) -> dict:
    torch.manual_seed(seed)
    name, extra = parse_model_spec(spec)
    if nms_iou is not None:
        extra["nms_iou"] = nms_iou
    if det_tokens is not None:
        extra["num_det_tokens"] = det_tokens
    model = build_model(name, num_classes=5, img_size=IMAGE_SIZE, **extra)
    if init is not None:
        init_from_classifier(model, init)  # raises on a stem or shape mismatch
    model = model.to(device)
    patch = model.patch_size
    criterion = build_criterion(5, match_repeats=match_repeats, eos_coef=eos_coef).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(steps // 20, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    runner = StepRunner(model=model, optimizer=optimizer, scheduler=scheduler, loss_fn=detection_loss(criterion),
                        device=device, amp_dtype=amp, clip_grad_norm=clip)
    on_device = {k: v.to(device) for k, v in train.items()}
    generator = torch.Generator(device="cpu").manual_seed(seed)
    curve, started = [], time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(on_device["images"]), (batch,), generator=generator).to(device)
        images, boxes = on_device["images"][idx], on_device["boxes"][idx].clone()
        flip = (torch.rand(batch, generator=generator) < 0.5).to(device)
        images = torch.where(flip[:, None, None, None], images.flip(2), images)
        boxes[..., 0] = torch.where(flip[:, None], 1.0 - boxes[..., 0], boxes[..., 0])
        patches, grid = patchify(images, patch)
        out = runner.micro_step({"patches": patches, "grid": torch.tensor([grid] * batch), "boxes": boxes,
                                 "classes": on_device["classes"][idx], "box_mask": on_device["box_mask"][idx]},
                                step=step)
        if step % eval_every == 0 or step == steps:
            seconds = round(time.perf_counter() - started, 1)  # training and the evaluations before this one
            metrics = evaluate_detection(model, val_batches(val, patch), gt_path, device=device, autocast_dtype=amp)
            point = {"step": step, "images_seen": step * batch, "seconds": seconds,
                     "train_loss": round(float(out["loss"]), 4), "map50": round(metrics["map50"], 4),
                     "map": round(metrics["map"], 4)}
            if nms_iou is not None:  # the same weights without NMS: what the duplicates cost
                model.nms_iou = None
                plain = evaluate_detection(model, val_batches(val, patch), gt_path, device=device,
                                           autocast_dtype=amp)
                model.nms_iou = nms_iou
                point.update(map50_no_nms=round(plain["map50"], 4), map_no_nms=round(plain["map"], 4))
            curve.append(point)
            print(spec, f"k={match_repeats}", curve[-1], flush=True)
    first = next((p["step"] for p in curve if p["map50"] >= 0.5), None)
    return {"model": spec, "patch_size": patch, "match_repeats": match_repeats, "nms_iou": nms_iou, "seed": seed,
            "lr": lr, "init": "classifier" if init is not None else "random",
            "num_det_tokens": getattr(model, "num_det_tokens", None), "eos_coef": eos_coef, "clip": clip,
            "seconds_total": round(time.perf_counter() - started, 1), "curve": curve,
            "best_map50": max(p["map50"] for p in curve), "best_map": max(p["map"] for p in curve),
            "steps_to_map50_0.5": first}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--models", nargs="+", default=["yolos_demo", "yolos_demo/8", "detr_demo"])
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--match-repeats", type=int, nargs="+", default=[1],
                        help="train every model once per k (each box matched to k queries)")
    parser.add_argument("--nms-iou", type=float, default=None,
                        help="class-aware NMS IoU at eval for runs with match repeats > 1 (default: none)")
    parser.add_argument("--seed", type=int, default=0, help="weights and batch order (the data set is fixed)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--init", default=None,
                        help="vitpipe classifier checkpoint directory to initialise every YOLOS from")
    parser.add_argument("--det-tokens", type=int, default=None, help="YOLOS num_det_tokens (default: the model's)")
    parser.add_argument("--eos-coef", type=float, default=0.1, help="criterion no-object class weight")
    parser.add_argument("--clip", type=float, default=0.1, help="gradient-norm clip (0: none)")
    parser.add_argument("--out", default="benchmarks/results/detect_gpu.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device()
    amp = autocast_dtype(device, args.precision)
    init_state = load_checkpoint(args.init)[0] if args.init else None
    with tempfile.TemporaryDirectory() as tmp:
        root = synthesize(Path(tmp) / "synth", SynthConfig(seed=0, num_train=args.num_train, num_val=200))
        train, val = load_split(root, "train"), load_split(root, "val")
        gt_path = root / "annotations" / "instances_val.json"
        results = [train_curve(spec, train, val, gt_path, steps=args.steps, eval_every=args.eval_every,
                               batch=args.batch, lr=args.lr, device=device, amp=amp, match_repeats=k,
                               nms_iou=args.nms_iou if k > 1 else None, seed=args.seed, init=init_state,
                               det_tokens=args.det_tokens, eos_coef=args.eos_coef, clip=args.clip)
                   for spec in args.models for k in args.match_repeats]
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else cpu_name()
    report = {"benchmark": "detect_gpu", "device": device_name, "torch": torch.__version__,
              "torch_threads": torch.get_num_threads(),
              "precision": str(amp), "settings": vars(args), "image_size": IMAGE_SIZE,
              "init": f"classifier checkpoint {args.init}" if args.init else "random weights", "augment": "random horizontal flip", "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps([{k: r[k] for k in ("model", "init", "lr", "num_det_tokens", "eos_coef", "clip",
                                         "match_repeats", "nms_iou", "best_map50", "best_map",
                                         "seconds_total", "steps_to_map50_0.5")}
                      for r in results], indent=1))


if __name__ == "__main__":
    main()
