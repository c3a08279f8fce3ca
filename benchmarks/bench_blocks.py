"""Ray Data block size: the validation pass and one training epoch of the demo's data, by
``data.rows_per_block``.

Every map task costs Ray a few milliseconds of scheduling, serialisation and bookkeeping,
whatever its size; a 64-px crop costs about 0.5 ms to read, decode, augment and patchify.
So small blocks spend more time on tasks than on images. This measures, on a local
cluster of 2 CPUs (the decode tasks' share on the demo's 2-core machine):

- ``validate_s``: ``build_dataset`` of the train split (the up-front decode-everything pass);
- ``epoch_s``: iterating one epoch of torch batches (decode, the pretraining stage's
  augmentation from ``pipelines/configs/pretrain.yaml``, patchify, collate), no model.

Block sizes are interleaved, after one warm-up round that starts the Ray workers, and
``--rounds`` rounds are timed (median reported); the ratio to 16-row blocks (the old
default) is in the same run.

Run: ``python benchmarks/bench_blocks.py [--root .demo/synth]`` → ``benchmarks/results/data_blocks.json``.
With no ``--root`` the synthetic set is written to a temp dir first (the demo's 4,000 images).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.pop("RAY_ADDRESS", None)
PRETRAIN_CONFIG = ROOT / "pipelines" / "configs" / "pretrain.yaml"


def pretrain_data(root: str):
    """The demo pretraining stage's data section (its crops, size and augmentation) on ``root``."""
    from components.training.config import load_train_config

    return load_train_config(PRETRAIN_CONFIG, [f"data.root={root}"]).data


def measure(data_cfg, rows_per_block: int | None, *, batch_size: int) -> dict:
    from components.data.dataset import build_dataset
    from components.data.loader import iter_batches

    cfg = data_cfg.model_copy(update={"rows_per_block": rows_per_block})
    t = time.perf_counter()
    bundle = build_dataset(cfg, "train", training=True)
    validate_s = time.perf_counter() - t
    t, rows = time.perf_counter(), 0
    for batch in iter_batches(bundle.dataset, batch_size=batch_size, task="classification", device="cpu"):
        rows += len(batch["label"])
    return {"validate_s": validate_s, "epoch_s": time.perf_counter() - t, "rows": rows,
            "block_rows": cfg.block_rows()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="an existing synthetic dataset (default: write one)")
    parser.add_argument("--num-images", type=int, default=4000, help="synthetic images to write")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--blocks", default="16,64,auto", help="rows per block to compare")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_blocks.json"))
    args = parser.parse_args()

    import ray

    from benchmarks._machine import cpu_name

    began = time.perf_counter()
    sizes = [None if b == "auto" else int(b) for b in args.blocks.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-blocks-") as tmp:
        root = args.root
        if root is None:
            from components.data.synth import SynthConfig, synthesize

            synthesize(tmp, SynthConfig(seed=0, num_train=args.num_images, num_val=0, image_size=96))
            root = tmp
        data_cfg = pretrain_data(root)
        ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False,
                 configure_logging=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        runs: dict[str, list[dict]] = {str(s or "auto"): [] for s in sizes}
        for round_ in range(args.rounds + 1):  # round 0: warm-up (starts Ray's workers)
            for size in sizes:
                result = measure(data_cfg, size, batch_size=args.batch_size)
                if round_:
                    runs[str(size or "auto")].append(result)
        ray.shutdown()
    rows = {}
    for key, results in runs.items():
        rows[key] = {"block_rows": results[0]["block_rows"], "rows": results[0]["rows"],
                     "validate_s": round(statistics.median(r["validate_s"] for r in results), 2),
                     "epoch_s": round(statistics.median(r["epoch_s"] for r in results), 2)}
    base = rows.get("16")
    for row in rows.values():
        if base:
            row["validate_speedup_vs_16"] = round(base["validate_s"] / row["validate_s"], 2)
            row["epoch_speedup_vs_16"] = round(base["epoch_s"] / row["epoch_s"], 2)
        row["images_per_s"] = round(row["rows"] / row["epoch_s"], 1)
    result = {
        "benchmark": "data_blocks",
        "what": "validation pass and one training epoch of 64-px crops through Ray Data, by rows per block",
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_name(), "ray_cpus": 2,
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "by_rows_per_block": rows,
        "wall_s": round(time.perf_counter() - began, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
