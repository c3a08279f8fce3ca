"""BCCD contest: our best detector against torchvision's detectors, same training time budget.

    python benchmarks/bench_bccd.py                       # 480 s each, seed 0, every contender
    python benchmarks/bench_bccd.py --budget 20 --seeds 0 --contenders frcnn --out /tmp/smoke.json
    # another vitpipe recipe against the peers of an earlier run on the same machine:
    python benchmarks/bench_bccd.py --set model.name=dfine_n --peers-from benchmarks/results/bccd_contest.json \
        --out /tmp/dfine_n.json

Real photographs (BCCD, Pascal VOC: 205 train / 87 val / 72 test, 640x480, RBC/WBC/Platelets),
every model from random weights, the same seconds of training on the same cores (2 torch
threads each), scored on the **test** split with one evaluator (pycocotools through
``components.evaluation.coco_metrics``, boxes in the photos' own pixels, the same COCO ground
truth from ``components.data.voc``) into mAP50 / mAP against seconds of training:

- ``frcnn``: torchvision ``fasterrcnn_mobilenet_v3_large_fpn`` (320 px), a plain loop with
  torchvision's detection reference recipe (SGD momentum 0.9, lr 0.02, weight decay 1e-4,
  linear warmup over the first epoch's steps), batch 4, flips both ways;
- ``fcos``: torchvision ``fcos_resnet50_fpn`` (320 px), the same loop (reference lr 0.01);
- ``vitpipe``: ``pipelines/configs/detect_bccd.yaml`` (RT-DETRv2-S) through the real entry
  point (``run_training`` on a local Ray cluster, MLflow off) with ``run.max_seconds`` set to
  the budget and a checkpoint every ``--ckpt-every`` steps; afterwards every checkpoint is
  scored on the test split with the detection task's evaluation, placed at the seconds of
  fitting it records (``train_seconds``).

The peers are scored every ``--eval-every`` seconds of training with the clock stopped while
scoring; vitpipe's clock likewise stops while it validates and writes checkpoints. The goal
(from the issue): our best mAP50 >= 1.2x the best peer's at the same budget. Writes JSON
(``--out``) and a PNG beside it (mAP50 against seconds, every contender).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _machine import bf16_isa, cpu_name  # noqa: E402  (benchmarks/, the script's own folder)

CONFIG = ROOT / "pipelines" / "configs" / "detect_bccd.yaml"
DATA = Path("/work/shared/data/bccd/BCCD")
GOAL_RATIO = 1.2
THREADS = 2
PEERS = {  # name: (torchvision builder, reference learning rate)
    "frcnn": ("fasterrcnn_mobilenet_v3_large_fpn", 0.02),
    "fcos": ("fcos_resnet50_fpn", 0.01),
}


# ----------------------------------------------------------------------------- data (peers)
def read_split(root: Path, split: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``split`` of the VOC folder: decoded photos with their boxes, and the COCO ground truth.

    Returns ``([{"image_id", "image": [3, H, W] float in 0..1, "boxes": [M, 4] xyxy pixels,
    "labels": [M] 1..C}], coco_gt)``; labels are the data layer's contiguous ids + 1
    (torchvision keeps 0 for the background)."""
    import io

    from PIL import Image

    from components.data.voc import read_voc

    source = read_voc(str(root), image_set=str(root / "ImageSets" / "Main" / f"{split}.txt"))
    rows = []
    for r in source.records:
        image = Image.open(io.BytesIO(source.images.read(r["file"]))).convert("RGB")
        arr = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255.0
        xywh = torch.tensor(r["boxes"], dtype=torch.float32).reshape(-1, 4)
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        rows.append({"image_id": int(r["image_id"]), "image": arr, "boxes": xyxy,
                     "labels": torch.tensor(r["classes"], dtype=torch.int64) + 1})
    return rows, source.gt


def flip(image: torch.Tensor, boxes: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal and vertical flips, each with p=0.5, boxes following (cells have no up)."""
    _, h, w = image.shape
    boxes = boxes.clone()
    if rng.random() < 0.5:
        image = image.flip(-1)
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    if rng.random() < 0.5:
        image = image.flip(-2)
        boxes[:, [1, 3]] = h - boxes[:, [3, 1]]
    return image, boxes


# ----------------------------------------------------------------------------- scoring
def peer_metrics(model: torch.nn.Module, test: list[dict[str, Any]], coco_gt: dict[str, Any]) -> dict[str, float]:
    """Test mAP50 / mAP of a torchvision detector (its outputs are in the photos' pixels)."""
    from components.evaluation.evaluator import coco_metrics, contiguous_to_coco_ids, load_coco

    cat_ids = contiguous_to_coco_ids(load_coco(coco_gt))
    results = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(test), 8):
            chunk = test[i:i + 8]
            for row, det in zip(chunk, model([r["image"] for r in chunk])):
                for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
                    if 1 <= label <= len(cat_ids):
                        x0, y0, x1, y1 = box
                        results.append({"image_id": row["image_id"], "category_id": cat_ids[label - 1],
                                        "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})
    model.train()
    m = coco_metrics(results, coco_gt, image_ids=[r["image_id"] for r in test])
    return {"map50": round(m["map50"], 4), "map": round(m["map"], 4)}


# ----------------------------------------------------------------------------- peers
def run_peer(name: str, *, budget: float, seed: int, batch: int, eval_every: float,
             train: list[dict[str, Any]], test: list[dict[str, Any]], coco_gt: dict[str, Any],
             bf16: bool = False) -> dict[str, Any]:
    """A plain torchvision training loop for ``budget`` seconds of training (scoring excluded);
    ``bf16``: its forward pass under CPU bf16 autocast (scored in fp32)."""
    import torchvision.models.detection as tvd

    builder, lr = PEERS[name]
    torch.manual_seed(seed)
    rng = random.Random(seed)
    kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None, "num_classes": 4,
                              "min_size": 320, "max_size": 320}
    if name == "fcos":
        kwargs["score_thresh"] = 0.05  # torchvision's default 0.2 would cut recall at scoring
    model = getattr(tvd, builder)(**kwargs)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    steps_per_epoch = len(train) // batch
    warmup = min(1000, steps_per_epoch - 1)  # the reference's first-epoch warmup
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.001 + (1 - 0.001) * min(1.0, s / warmup) if s < warmup else 1.0)
    curve = [{"seconds": 0.0, "steps": 0, "images": 0, **peer_metrics(model, test, coco_gt)}]
    seconds, steps, next_eval, losses = 0.0, 0, eval_every, []
    while seconds < budget:
        order = list(range(len(train)))
        rng.shuffle(order)
        for k in range(steps_per_epoch):
            if seconds >= budget:
                break
            t0 = time.perf_counter()
            images, targets = [], []
            for i in order[k * batch:(k + 1) * batch]:
                image, boxes = flip(train[i]["image"], train[i]["boxes"], rng)
                images.append(image)
                targets.append({"boxes": boxes, "labels": train[i]["labels"]})
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss_dict = model(images, targets)
            loss = sum(v.float() for v in loss_dict.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            steps += 1
            losses.append(float(loss.detach()))
            seconds += time.perf_counter() - t0
            if not np.isfinite(losses[-1]):
                raise RuntimeError(f"{name}: loss {losses[-1]} at step {steps}")
            if seconds >= next_eval and seconds < budget:
                curve.append({"seconds": round(seconds, 1), "steps": steps, "images": steps * batch,
                              **peer_metrics(model, test, coco_gt)})
                next_eval += eval_every
                print(f"  {name} seed {seed}: {curve[-1]} loss {np.mean(losses[-10:]):.3f}", flush=True)
    curve.append({"seconds": round(seconds, 1), "steps": steps, "images": steps * batch,
                  **peer_metrics(model, test, coco_gt)})
    print(f"  {name} seed {seed}: final {curve[-1]}", flush=True)
    return {"curve": curve, "loss_first10": _mean(losses[:10]), "loss_last10": _mean(losses[-10:])}


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


# ----------------------------------------------------------------------------- vitpipe
def run_vitpipe(*, budget: float | None = None, max_steps: int | None = None, seed: int, ckpt_every: int,
                storage: Path, data_root: Path, config: Path = CONFIG, overrides: tuple[str, ...] = (),
                name: str | None = None) -> dict[str, Any]:
    """``config`` (``detect_bccd.yaml``) with ``overrides`` through ``run_training``, boxed by
    ``budget`` seconds of fitting (``run.max_seconds``) or ``max_steps``; every checkpoint is
    scored on the test split afterwards (:func:`score_checkpoints`)."""
    from components.training.config import load_train_config
    from components.training.trainer import run_training

    name = name or f"bccd-contest-s{seed}"
    box = [f"run.max_seconds={budget}"] if budget is not None else [f"max_steps={max_steps}"]
    # The schedule counts steps, as in every published run (--set optim.anneal_to_budget=true
    # anneals to the budget instead).
    cfg = load_train_config(config, ["optim.anneal_to_budget=false", *overrides,
        f"data.root={data_root}", f"run.storage_path={storage}", f"run.name={name}", f"run.seed={seed}",
        "epochs=200", *box, f"checkpoint.every_n_steps={ckpt_every}",
        "checkpoint.keep_best_k=100000", "eval.every_n_epochs=100000",  # validate once, at the end
        "mlflow.enabled=false", "registry.enabled=false", f"scaling.torch_threads={THREADS}"])
    started = time.perf_counter()
    summary = run_training(cfg)
    wall = time.perf_counter() - started
    curve = score_checkpoints(cfg, storage / name, label=f"{name}")
    return {"curve": curve, "steps": summary["steps"], "run_wall_s": round(wall, 1),
            "val_map50_at_end": summary["metrics"].get("map50"), "precision": trained_precision(cfg)}


def trained_precision(cfg: Any) -> str:
    """What ``cfg.precision`` trains the model in on this CPU (``auto``: the cached measurement
    the training worker made)."""
    from components.core.device import autocast_dtype, precision_name
    from components.tasks import get_task

    model = get_task(cfg.task).build_model(cfg, num_classes=3, image_size=cfg.data.image_size)
    return precision_name(autocast_dtype(torch.device("cpu"), cfg.precision, model, train=True))


def score_checkpoints(cfg: Any, run_dir: Path, *, label: str) -> list[dict[str, Any]]:
    """Test mAP50 / mAP of every checkpoint in ``run_dir``, in step order, each placed at the
    seconds of fitting it records (``train_seconds``)."""
    from components.core.checkpoint import read_meta
    from components.core.device import autocast_dtype
    from components.data.dataset import build_dataset
    from components.data.loader import iter_batches
    from components.models import model_from_checkpoint
    from components.tasks import get_task

    task = get_task("detection")
    test = build_dataset(cfg.data, "test", training=False)
    curve = []
    for ckpt in sorted(run_dir.glob("checkpoint_step*")):
        if not (ckpt / "vitpipe.json").is_file():
            continue
        meta = read_meta(ckpt)
        model, _ = model_from_checkpoint(ckpt, device="cpu")
        report = task.evaluate(model, iter_batches(test.dataset, batch_size=cfg.eval.batch_size,
                                                   task=task.batch_kind),
                               device=torch.device("cpu"), amp_dtype=autocast_dtype(torch.device("cpu"),
                                                                                  cfg.precision, model),
                               class_names=meta.class_names, coco_gt=test.coco_gt,
                               score_threshold=cfg.eval.score_threshold)
        curve.append({"seconds": round(float(meta.extra.get("train_seconds", float("nan"))), 1),
                      "steps": meta.step, "images": meta.step * cfg.batch_size,
                      "map50": round(report["map50"], 4), "map": round(report["map"], 4)})
        print(f"  {label}: {curve[-1]}", flush=True)
    curve.sort(key=lambda p: p["steps"])
    return curve


# ----------------------------------------------------------------------------- results
def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    finals = [r["curve"][-1] for r in per_seed]
    return {"map50": round(float(np.mean([f["map50"] for f in finals])), 4),
            "map": round(float(np.mean([f["map"] for f in finals])), 4),
            "map50_per_seed": [f["map50"] for f in finals],
            "steps": round(float(np.mean([f["steps"] for f in finals])), 1),
            "seconds": round(float(np.mean([f["seconds"] for f in finals])), 1)}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    for name, entry in result["contenders"].items():
        for i, run in enumerate(entry["runs"]):
            ax.plot([p["seconds"] for p in run["curve"]], [p["map50"] for p in run["curve"]], marker=".",
                    label=f"{entry['label']} (seed {run['seed']})", color=f"C{list(result['contenders']).index(name)}",
                    alpha=1.0 if i == 0 else 0.5)
    ax.set_xlabel("seconds of training (scoring excluded)")
    ax.set_ylabel("test mAP50")
    ax.set_title(f"BCCD test mAP50, random weights, {result['settings']['budget_s']:.0f} s on "
                 f"{result['settings']['torch_threads']} threads", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


LABELS = {"frcnn": "Faster R-CNN MobileNetV3-L FPN (torchvision)", "fcos": "FCOS ResNet-50 FPN (torchvision)",
          "vitpipe": "vitpipe"}


def vitpipe_label(config: Path, overrides: list[str]) -> str:
    """``"<model description> (vitpipe <config>[, overrides])"``."""
    from components.models.registry import get_spec
    from components.training.config import load_train_config

    cfg = load_train_config(config, overrides)
    extra = f", {' '.join(overrides)}" if overrides else ""
    return f"{get_spec(cfg.model.name).description.split(' (')[0]} (vitpipe {config.name}{extra})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=480.0, help="seconds of training per contender")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--contenders", nargs="+", default=["frcnn", "fcos", "vitpipe"], choices=list(LABELS))
    ap.add_argument("--eval-every", type=float, default=60.0, help="peers: score every this many seconds")
    ap.add_argument("--ckpt-every", type=int, default=15, help="vitpipe: a checkpoint every this many steps")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--peer-precision", choices=["fp32", "bf16"], default="fp32",
                    help="peers: the plain loop in fp32, or its forward pass under bf16 autocast (on CPUs "
                         "where bf16 is fast, e.g. with AMX, the peers then run as fast as the CPU allows)")
    ap.add_argument("--data-root", type=Path, default=DATA)
    ap.add_argument("--config", type=Path, default=CONFIG, help="vitpipe: the training config")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="vitpipe: config overrides")
    ap.add_argument("--peers-from", type=Path, default=None,
                    help="take the peers' runs from this earlier result (same machine and settings) "
                         "instead of training them again")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bccd_contest.json")
    args = ap.parse_args()

    torch.set_num_threads(THREADS)
    load_start = os.getloadavg()
    started = time.perf_counter()
    contenders: dict[str, Any] = {}
    reused = json.loads(args.peers_from.read_text()) if args.peers_from else None
    if reused is not None:
        theirs = reused["settings"]
        if (theirs["budget_s"], theirs["batch"], theirs.get("peer_precision", "fp32")) != (
                args.budget, args.batch, args.peer_precision):
            ap.error(f"--peers-from ran {theirs['budget_s']:.0f} s at batch {theirs['batch']} in "
                     f"{theirs.get('peer_precision', 'fp32')}; this run asks for {args.budget:.0f} s at batch "
                     f"{args.batch} in {args.peer_precision}")
        contenders.update({n: {**c, "from": str(args.peers_from.name)}
                           for n, c in reused["contenders"].items() if n in PEERS})
        args.contenders = [c for c in args.contenders if c not in PEERS]
    peers = [c for c in args.contenders if c in PEERS]
    if peers:
        train, _ = read_split(args.data_root, "train")
        test, coco_gt = read_split(args.data_root, "test")
    for name in args.contenders:
        runs = []
        for seed in args.seeds:
            print(f"{name} seed {seed}: {args.budget:.0f} s", flush=True)
            if name in PEERS:
                run = run_peer(name, budget=args.budget, seed=seed, batch=args.batch, eval_every=args.eval_every,
                               train=train, test=test, coco_gt=coco_gt, bf16=args.peer_precision == "bf16")
            else:
                import ray

                if not ray.is_initialized():
                    ray.init(num_cpus=THREADS, include_dashboard=False, configure_logging=False,
                             log_to_driver=False)
                with tempfile.TemporaryDirectory(prefix="bccd-contest-") as storage:
                    run = run_vitpipe(budget=args.budget, seed=seed, ckpt_every=args.ckpt_every,
                                      storage=Path(storage), data_root=args.data_root,
                                      config=args.config, overrides=tuple(args.set))
            runs.append({"seed": seed, **run})
        label = vitpipe_label(args.config, args.set) if name == "vitpipe" else LABELS[name]
        contenders[name] = {"label": label, "runs": runs, "final": summarise(runs)}

    finals = {n: c["final"]["map50"] for n, c in contenders.items()}
    best_peer = max((v, n) for n, v in finals.items() if n in PEERS) if any(n in PEERS for n in finals) else None
    goal: dict[str, Any] = {"statement": f"vitpipe's best test mAP50 >= {GOAL_RATIO}x the best peer's "
                                         f"at the same {args.budget:.0f} s of training"}
    if best_peer is not None and "vitpipe" in finals:
        ratio = finals["vitpipe"] / max(best_peer[0], 1e-9)
        goal.update({"best_peer": best_peer[1], "best_peer_map50": best_peer[0],
                     "vitpipe_map50": finals["vitpipe"], "ratio": round(ratio, 3), "met": ratio >= GOAL_RATIO})
    else:
        goal["met"] = None  # not every side ran
    result = {
        "benchmark": "bccd_contest",
        "machine": {"cpu": cpu_name(), "bf16_isa": bf16_isa(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": THREADS,
                    "load_average_1m_at_start": round(load_start[0], 2),
                    "load_average_at_start": [round(v, 2) for v in load_start],
                    "load_average_1m_at_end": round(os.getloadavg()[0], 2), "gpu": None},
        "settings": {"budget_s": args.budget, "seeds": args.seeds, "batch": args.batch, "image_size": 320,
                     "torch_threads": THREADS, "peer_eval_every_s": args.eval_every,
                     "peer_precision": args.peer_precision,
                     "vitpipe_ckpt_every_steps": args.ckpt_every, "split_scored": "test",
                     "data": "BCCD VOC (205 train / 87 val / 72 test)", "weights": "random",
                     "vitpipe_config": args.config.name, "vitpipe_overrides": args.set,
                     "peers_from": args.peers_from.name if args.peers_from else None},
        "contenders": contenders,
        "goal": goal,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps({"finals": finals, "goal": goal}, indent=1))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
