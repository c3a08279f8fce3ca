"""Can the demo detectors' backbones localise one shape at all? (issue #4, YOLOS mAP50 ~0)

The synthetic images holding exactly one object (``components.data.synth``, eval transform,
~25% of the split) train one query of a detector with a *direct* loss, no Hungarian matching:
``5 * L1 + 2 * (1 - GIoU)`` on the box plus cross-entropy on the class of query 0. Reported:
val mean IoU of that box and val class accuracy against steps. A backbone that cannot get
past the constant-box IoU here cannot make the set-prediction detector work either.

Variants (``--variants``): ``yolos`` (yolos_demo, ViT with a linear 16x16 patch embedding),
``yolos/8`` (8x8 patches), ``yolos+stem`` (the same ViT, its patch embedding replaced by a
4-conv stride-16 stem: Xiao et al. 2021, "Early convolutions help transformers see better")
and ``detr`` (detr_demo, ResNet backbone). Random init, one thread, seconds per variant.

    OMP_NUM_THREADS=1 python benchmarks/probe_localization.py [--steps 600] [--variants yolos detr]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torchvision.ops import box_convert, box_iou, generalized_box_iou_loss

from bench_detect_gpu import load_split  # benchmarks/, the script's own folder
from components.data.patchify import patchify
from components.data.synth import SynthConfig, synthesize
from components.models import build_model


def conv_stem(embed_dim: int) -> nn.Sequential:
    """Stride-16 stem: four 3x3 stride-2 conv-BN-ReLU (3→24→48→96→192) + a 1x1 projection."""
    chans = [3, 24, 48, 96, 192]
    layers: list[nn.Module] = []
    for cin, cout in zip(chans[:-1], chans[1:]):
        layers += [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Conv2d(chans[-1], embed_dim, 1))


def build(variant: str) -> nn.Module:
    if variant == "detr":
        return build_model("detr_demo", num_classes=5, img_size=96)
    patch = 8 if variant == "yolos/8" else 16
    model = build_model("yolos_demo", num_classes=5, img_size=96, patch_size=patch, num_det_tokens=1)
    if variant == "yolos+stem":
        model.backbone.patch_embed.proj = conv_stem(model.embed_dim)  # [B,3,96,96] → [B,D,6,6]
    elif variant not in ("yolos", "yolos/8"):
        raise ValueError(f"unknown variant {variant!r}")
    return model


def single_object(split: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keep = split["box_mask"].sum(1) == 1
    return {k: v[keep] for k, v in split.items()}


def losses(model: nn.Module, data: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float, float]:
    """``(loss, mean IoU, class accuracy)`` of query 0 against each image's one box."""
    patches, grid = patchify(data["images"], model.patch_size)
    out = model(patches, torch.tensor([grid] * len(patches)))
    pred = box_convert(out["pred_boxes"][:, 0], "cxcywh", "xyxy")
    true = box_convert(data["boxes"][:, 0], "cxcywh", "xyxy")
    logits, label = out["pred_logits"][:, 0, :-1], data["classes"][:, 0]
    loss = (5 * (out["pred_boxes"][:, 0] - data["boxes"][:, 0]).abs().sum(-1).mean()
            + 2 * generalized_box_iou_loss(pred, true, reduction="mean")
            + nn.functional.cross_entropy(logits, label))
    iou = float(box_iou(pred, true).diag().mean().detach())
    return loss, iou, float((logits.argmax(-1) == label).float().mean().detach())


def probe(variant: str, train, val, *, steps: int, batch: int, lr: float, eval_every: int) -> dict:
    torch.manual_seed(0)
    model = build(variant)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    curve, started = [], time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(train["images"]), (batch,), generator=generator)
        loss, _, _ = losses(model, {k: v[idx] for k, v in train.items()})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                _, iou, acc = losses(model, val)
            model.train()
            curve.append({"step": step, "seconds": round(time.perf_counter() - started, 1),
                          "val_iou": round(iou, 3), "val_class_acc": round(acc, 3)})
            print(variant, curve[-1], flush=True)
    return {"variant": variant, "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--variants", nargs="+", default=["yolos", "yolos/8", "yolos+stem", "detr"])
    parser.add_argument("--out", default=None, help="write the curves as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = synthesize(Path(tmp) / "synth", SynthConfig(seed=0, num_train=args.num_train, num_val=200))
        train, val = single_object(load_split(root, "train")), single_object(load_split(root, "val"))
    print(f"{len(train['images'])} train / {len(val['images'])} val single-object images", flush=True)
    results = [probe(v, train, val, steps=args.steps, batch=args.batch, lr=args.lr,
                     eval_every=args.eval_every) for v in args.variants]
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
