"""NMS threshold of a trained detector: COCO mAP on a val split for several ``nms_iou``.

A one-to-many-trained YOLOS (``criterion.match_repeats`` > 1) emits duplicate boxes; NMS
(``model.nms_iou``, a build keyword that travels in the checkpoint) drops them at eval and
serving. This re-evaluates one checkpoint with the promotion gate's own pieces (the
checkpoint loader, the eval data path, ``evaluate_detection``) at each threshold; training
is untouched, so each row is what that run would report with that setting. The threshold is
picked on the same split it is scored on: read small differences as ties.

    python benchmarks/nms_sweep.py CHECKPOINT_DIR --data-root .demo/synth \\
        [--nms 0 0.7 0.6 0.5 0.45 0.4] [--out benchmarks/results/detect_demo_nms.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ray
import torch

from _machine import cpu_name  # benchmarks/, the script's own folder
from components.core.config import load_config
from components.tracking.packaging import model_from_checkpoint
from components.tracking.promotion import PromoteConfig, _eval_batches, coco_ground_truth
from components.evaluation import evaluate_detection

PROMOTE_CONFIG = Path(__file__).resolve().parent.parent / "pipelines" / "configs" / "promote.yaml"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--nms", type=float, nargs="+", default=[0, 0.7, 0.6, 0.5, 0.45, 0.4],
                        help="IoU thresholds; 0 = no NMS")
    parser.add_argument("--out", default="benchmarks/results/detect_demo_nms.json")
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    model, meta = model_from_checkpoint(args.checkpoint, device=torch.device("cpu"))
    cfg = load_config(PromoteConfig, PROMOTE_CONFIG,
                      ["task=detection", "data.format=coco", f"data.root={args.data_root}"])
    data_cfg = cfg.data.model_copy(update={"image_size": meta.image_size, "patch_size": meta.patch_size})
    bundle, batches = _eval_batches(data_cfg, args.split, "detection", cfg.batch_size)
    ground_truth = coco_ground_truth(bundle)
    rows = []
    for nms in args.nms:
        model.nms_iou = nms or None
        started = time.perf_counter()
        m = evaluate_detection(model, batches(), ground_truth, device=torch.device("cpu"), autocast_dtype=None,
                               score_threshold=0.0, class_names=meta.class_names)
        rows.append({"nms_iou": nms or None, "map50": round(m["map50"], 4), "map": round(m["map"], 4),
                     "map75": round(m["map75"], 4), "seconds": round(time.perf_counter() - started, 1)})
        print(json.dumps(rows[-1]), flush=True)
    report = {"benchmark": "nms_sweep", "device": cpu_name(), "checkpoint": str(args.checkpoint),
              "model": meta.model_name, "model_config": meta.model_config, "step": meta.step,
              "split": args.split, "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
