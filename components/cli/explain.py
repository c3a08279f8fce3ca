"""``vitpipe explain --checkpoint DIR --image FILE --out DIR``: attention maps as PNG overlays.

For a ViT-family classifier: the attention rollout from [CLS] (``rollout.png``) and each
layer's head-mean [CLS] attention (``layer_XX.png``). For YOLOS: the rollout from the
``--top`` highest-scoring [DET] tokens, with their boxes drawn (``det_K.png``). Always
``explain.json``: the prediction and the files written. Exit 2 for an unreadable
checkpoint or image, or a model without ViT attention (CNN, TNT, DETR).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("explain", help="attention maps (rollout, per layer) of a ViT/YOLOS checkpoint")
    p.add_argument("--checkpoint", required=True, help="vitpipe checkpoint directory")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--out", required=True, help="output folder for PNGs and explain.json")
    p.add_argument("--top", type=int, default=3, help="detection: explain this many best detections")
    p.add_argument("--max-pixels", type=int, default=50_000_000, help="refuse larger images")
    p.set_defaults(handler=_explain)


def _explain(args: argparse.Namespace) -> int:
    import torch

    from components.cli.main import UserError
    from components.core.checkpoint import load_checkpoint
    from components.data.image_io import BadImageError, decode_image, preprocess
    from components.models import build_model, load_weights
    from components.models.attention import (
        attention_maps, overlay, patch_map, rollout, save_png, token_layout,
    )
    from components.models.postprocess import detection_settings, detections

    state, meta = load_checkpoint(args.checkpoint)
    image_path = Path(args.image)
    if not image_path.is_file():
        raise UserError(f"no image at {image_path}")
    try:
        image = decode_image(image_path.read_bytes(), max_pixels=args.max_pixels)
    except BadImageError as err:
        raise UserError(f"{image_path}: {err}") from None
    model = build_model(meta.model_name, **meta.model_config)
    load_weights(model, state)
    model.eval()
    try:
        layout = token_layout(model)
    except TypeError as err:
        raise UserError(str(err)) from None
    patches, grid = preprocess(image, image_size=meta.image_size, patch_size=meta.patch_size)
    outputs, layers = attention_maps(model, torch.from_numpy(patches)[None], grid)
    joint = rollout(layers)[0]  # [T, T]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"checkpoint": str(args.checkpoint), "image": str(image_path), "model": meta.model_name,
                    "task": meta.task, "layers": len(layers), "files": []}
    if isinstance(outputs, torch.Tensor):  # a classifier's logits (a detector answers a dict)
        probs = outputs.float().softmax(-1)[0]
        score, label = probs.max(0)
        report["prediction"] = {"label": int(label), "class_name": _name(meta.class_names, int(label)),
                                "score": float(score)}
        cls = 0  # rows of the [CLS] token
        files = [save_png(overlay(image, patch_map(joint[cls], layout)), out / "rollout.png")]
        for i, layer in enumerate(layers):
            files.append(save_png(overlay(image, patch_map(layer[0].mean(0)[cls], layout)), out / f"layer_{i:02d}.png"))
    else:
        orig = torch.tensor([image.shape[:2]])
        (det,) = detections(outputs, orig, top_k=args.top, **detection_settings(model))
        queries = det["queries"]  # after the model's NMS, if it has one
        report["detections"] = []
        files = []
        for k, q in enumerate(queries.tolist()):
            row = joint[layout.prefix + layout.grid[0] * layout.grid[1] + q]
            files.append(save_png(overlay(image, patch_map(row, layout)), out / f"det_{k}.png",
                                  boxes_xyxy=det["boxes"][k].numpy()))
            report["detections"].append({
                "query": q, "label": int(det["labels"][k]), "class_name": _name(meta.class_names, int(det["labels"][k])),
                "score": float(det["scores"][k]), "box_xyxy": [float(v) for v in det["boxes"][k]],
            })
    report["files"] = [str(f) for f in files]
    (out / "explain.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({"out": str(out), "files": len(files)}))
    return 0


def _name(names: list[str], label: int) -> str:
    return names[label] if 0 <= label < len(names) else str(label)
