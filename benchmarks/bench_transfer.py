"""Does our own pretraining help a ViT detector on real photographs? MAE on BCCD, then detection.

    python benchmarks/bench_transfer.py                  # YOLOS-Ti, seeds 0 and 1, every arm
    python benchmarks/bench_transfer.py --detector lwdetr --precision bf16   # LW-DETR on ViT-Ti
    python benchmarks/bench_transfer.py --seeds 0 --mae-steps 20 --det-steps 20 --out /tmp/smoke.json

BCCD (Pascal VOC, 205 train / 87 val / 72 test photographs of blood cells, 640x480), a
detector whose backbone is a plain ViT-Ti/16: YOLOS-Ti ([DET] tokens,
``detect_bccd_yolos.yaml``) or LW-DETR (windowed ViT-Ti + a deformable decoder,
``detect_bccd_lwdetr.yaml``); every run through the real entry point (``run_training`` on a
local Ray cluster, MLflow off, the precision fixed by ``--precision`` so that no run depends
on a timing probe), scored on the **test** split with the detection task's evaluation
(pycocotools, boxes in the photos' pixels). Per seed:

- ``mae``: masked-autoencoder pretraining of the ViT-Ti encoder on the train + val
  photographs without their labels (``pretrain_mae_bccd.yaml``, ``--mae-steps``);
- ``scratch``: the detector from random weights, ``--det-steps`` steps;
- ``pretrained``: the same detector and steps, its ViT from the MAE checkpoint (YOLOS: position
  embeddings resized from 14x14 to the 20x15 grid, layer decay ``--layer-decay`` so the
  pretrained blocks learn slower than the new [DET] tokens and heads; LW-DETR: the blocks in
  its backbone's names, every parameter at one learning rate);
- ``pretrained_flat_lr`` (with ``--flat-lr``, first seed): the same without layer decay, every
  parameter at the new heads' learning rate (the question of why a hand-off can learn
  slower than scratch);
- ``scratch_equal``: from random weights for ``--det-steps`` plus as many steps as the MAE
  pretraining's seconds buy at the scratch run's measured seconds per step: the same total
  compute (seconds of fitting on these cores) as MAE + ``pretrained``.

Goals (from the issue): ``pretrained`` beats ``scratch`` at equal steps, and beats
``scratch_equal`` at equal total compute, on every seed. Writes JSON (``--out``) and a PNG
beside it (test mAP50 against detection steps, and against total seconds of fitting).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _machine import bf16_isa, cpu_name  # noqa: E402
from bench_bccd import DATA, THREADS, run_vitpipe  # noqa: E402

CONFIGS = ROOT / "pipelines" / "configs"
DETECTORS = {"yolos": CONFIGS / "detect_bccd_yolos.yaml", "lwdetr": CONFIGS / "detect_bccd_lwdetr.yaml"}
MAE = CONFIGS / "pretrain_mae_bccd.yaml"


def run_mae(*, steps: int, seed: int, storage: Path, data_root: Path, fixed: tuple[str, ...]) -> dict[str, Any]:
    """MAE pretraining on the train + val photographs (labels unused); its checkpoint and
    seconds of fitting."""
    from components.core.checkpoint import read_meta
    from components.training.config import load_train_config
    from components.training.trainer import run_training

    name = f"mae-bccd-s{seed}"
    sets = data_root / "ImageSets" / "Main"
    cfg = load_train_config(MAE, [
        *fixed, f"data.root={data_root}",
        f"data.splits.train.images={data_root}", f"data.splits.train.image_set={sets / 'trainval.txt'}",
        f"data.splits.val.images={data_root}", f"data.splits.val.image_set={sets / 'val.txt'}",
        f"run.storage_path={storage}", f"run.name={name}", f"run.seed={seed}", f"data.seed={seed}",
        f"max_steps={steps}", "epochs=1000", "mlflow.enabled=false", "registry.enabled=false",
        "eval.every_n_epochs=100000", "checkpoint.keep_best_k=100000",  # validate once: the last is the best
        f"scaling.torch_threads={THREADS}"])
    started = time.perf_counter()
    summary = run_training(cfg)
    checkpoint = Path(summary["checkpoint"])
    meta = read_meta(checkpoint)
    if meta.step != summary["steps"]:  # the detector starts from all the compute the MAE was given
        raise RuntimeError(f"MAE checkpoint at step {meta.step}, the run ended at step {summary['steps']}")
    return {"checkpoint": str(checkpoint), "steps": summary["steps"],
            "seconds": round(float(meta.extra["train_seconds"]), 1),
            "val_loss": round(float(summary["metrics"]["val_loss"]), 4),
            "run_wall_s": round(time.perf_counter() - started, 1)}


def detect(arm: str, *, steps: int, seed: int, storage: Path, data_root: Path, ckpt_every: int, config: Path,
           fixed: tuple[str, ...], extra: tuple[str, ...] = ()) -> dict[str, Any]:
    run = run_vitpipe(max_steps=steps, seed=seed, ckpt_every=ckpt_every, storage=storage, data_root=data_root,
                      config=config, overrides=(*fixed, f"data.seed={seed}", *extra), name=f"{arm}-s{seed}")
    end = run["curve"][-1]
    return {**run, "final": {"map50": end["map50"], "map": end["map"], "steps": end["steps"],
                             "seconds": end["seconds"]}}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"scratch": "C0", "pretrained": "C1", "pretrained_flat_lr": "C2", "scratch_equal": "C3"}
    fig, (by_steps, by_time) = plt.subplots(1, 2, figsize=(9.6, 3.6), dpi=110)
    for k, seed_result in enumerate(result["seeds"]):
        alpha = 1.0 if k == 0 else 0.5
        mae_s = seed_result["mae"]["seconds"]
        for arm, run in seed_result["arms"].items():
            label = f"{arm} (seed {seed_result['seed']})"
            steps = [p["steps"] for p in run["curve"]]
            seconds = [p["seconds"] + (mae_s if arm.startswith("pretrained") else 0.0) for p in run["curve"]]
            maps = [p["map50"] for p in run["curve"]]
            if arm != "scratch_equal":
                by_steps.plot(steps, maps, marker=".", color=colors[arm], alpha=alpha, label=label)
            if arm != "pretrained_flat_lr":
                by_time.plot(seconds, maps, marker=".", color=colors[arm], alpha=alpha, label=label)
        by_time.axvline(mae_s, color="C1", alpha=0.3 * alpha, linestyle=":")
    by_steps.set_xlabel(f"detection steps (batch {result['settings']['batch_size']})")
    by_time.set_xlabel("seconds of fitting, MAE pretraining included (dotted: its end)")
    for ax in (by_steps, by_time):
        ax.set_ylabel("BCCD test mAP50")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(f"{result['settings']['detector_name']} on BCCD: from random weights vs from MAE on BCCD's "
                 f"own photos ({result['machine']['cores']} cores, {result['settings']['precision']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detector", choices=sorted(DETECTORS), default="yolos")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="every run's precision (fixed: no run depends on the timing probe)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--mae-steps", type=int, default=400)
    ap.add_argument("--det-steps", type=int, default=400)
    ap.add_argument("--layer-decay", type=float, default=0.75, help="YOLOS only")
    ap.add_argument("--flat-lr", action="store_true",
                    help="also the pretrained arm without layer decay (first seed only: a diagnostic)")
    ap.add_argument("--ckpt-every", type=int, default=50, help="a checkpoint (scored on test) every this many steps")
    ap.add_argument("--data-root", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=None,
                    help="default benchmarks/results/transfer.json (YOLOS), transfer_lwdetr.json (LW-DETR)")
    args = ap.parse_args()
    suffix = "" if args.detector == "yolos" else f"_{args.detector}"
    args.out = args.out or ROOT / "benchmarks" / "results" / f"transfer{suffix}.json"
    config = DETECTORS[args.detector]
    fixed = (f"precision={args.precision}",)
    layer_decay = args.layer_decay if args.detector == "yolos" else 1.0
    from components.models import get_spec
    from components.training.config import load_train_config

    det_cfg = load_train_config(config, [])

    import ray

    torch.set_num_threads(THREADS)
    load_start = os.getloadavg()
    started = time.perf_counter()
    ray.init(num_cpus=THREADS, include_dashboard=False, configure_logging=False, log_to_driver=False)
    seeds = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="bccd-transfer-") as tmp:
            storage = Path(tmp)
            common = dict(seed=seed, storage=storage, data_root=args.data_root, ckpt_every=args.ckpt_every,
                          config=config, fixed=fixed)
            print(f"seed {seed}: MAE {args.mae_steps} steps", flush=True)
            mae = run_mae(steps=args.mae_steps, seed=seed, storage=storage, data_root=args.data_root, fixed=fixed)
            print(f"seed {seed}: MAE {mae}", flush=True)
            arms: dict[str, Any] = {}
            arms["scratch"] = detect("scratch", steps=args.det_steps, **common)
            init = (f"model.init_from={mae['checkpoint']}",)
            arms["pretrained"] = detect("pretrained", steps=args.det_steps, **common,
                                        extra=(*init, f"optim.layer_decay={layer_decay}"))
            if args.flat_lr and seed == args.seeds[0]:
                arms["pretrained_flat_lr"] = detect("pretrained_flat_lr", steps=args.det_steps, **common,
                                                    extra=init)
            per_step = arms["scratch"]["final"]["seconds"] / max(arms["scratch"]["final"]["steps"], 1)
            extra_steps = round(mae["seconds"] / per_step)
            arms["scratch_equal"] = detect("scratch_equal", steps=args.det_steps + extra_steps, **common)
            seeds.append({"seed": seed, "mae": {k: v for k, v in mae.items() if k != "checkpoint"},
                          "scratch_seconds_per_step": round(per_step, 3), "scratch_equal_extra_steps": extra_steps,
                          "arms": arms})
    final = {s["seed"]: {arm: run["final"]["map50"] for arm, run in s["arms"].items()} for s in seeds}
    equal_steps = [f["pretrained"] > f["scratch"] for f in final.values()]
    equal_compute = [f["pretrained"] > f["scratch_equal"] for f in final.values()]
    mean = {arm: round(sum(f[arm] for f in final.values() if arm in f) / sum(arm in f for f in final.values()), 4)
            for arm in next(iter(final.values()))}
    result = {
        "benchmark": "transfer",
        "machine": {"cpu": cpu_name(), "bf16_isa": bf16_isa(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": THREADS,
                    "load_average_at_start": [round(v, 2) for v in load_start],
                    "load_average_1m_at_end": round(os.getloadavg()[0], 2), "gpu": None},
        "settings": {"seeds": args.seeds, "mae_steps": args.mae_steps, "det_steps": args.det_steps,
                     "layer_decay": layer_decay, "ckpt_every": args.ckpt_every, "precision": args.precision,
                     "detector": config.name, "detector_name": get_spec(det_cfg.model.name).description,
                     "batch_size": det_cfg.batch_size, "pretraining": MAE.name, "split_scored": "test",
                     "mae_data": "BCCD train + val photographs, labels unused"},
        "seeds": seeds,
        "final_map50": {str(k): v for k, v in final.items()},
        "mean_final_map50": mean,
        "goals": {
            "equal_steps": {"statement": "pretrained > scratch at equal detection steps, every seed",
                            "per_seed": equal_steps, "met": all(equal_steps)},
            "equal_compute": {"statement": "MAE + pretrained > scratch_equal at equal seconds of fitting, every seed",
                              "per_seed": equal_compute, "met": all(equal_compute)},
        },
        "wall_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps({"final_map50": result["final_map50"], "goals": result["goals"]}, indent=1))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
