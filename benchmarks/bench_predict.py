"""Batch inference throughput: the Ray Data pipeline (``run_predict``) vs a plain loop.

Both sides do the same work per image over the same files and checkpoint, end to end: load
the model, then for every image read the bytes,
decode and eval transform (``components.predict.stages.model_input``: a JPEG decoded at the
smallest reduced scale covering the model's size, whole-image resize, patchify), a batched
forward pass, softmax top-5. Both run in fp32, or both
in bf16 autocast when this CPU has native bf16 and a forward pass is measured > 5% faster
in it (``bf16_forward_speedup`` in the JSON). The plain loop is
what a user would write in one process: load the model (the same loader as the actors),
decode a batch of ``--batch-size`` files with the same decode-at-size helper, stack, forward
with torch's default threads (all cores), top-5, repeat. The Ray side is
``python -m pipelines.predict``'s own code path (``run_predict``: model resolution, listing,
decode tasks, an actor pool of model replicas, Parquet out), timed around the whole call, on
a local Ray cluster of this machine's CPUs started once beforehand (a user's running
cluster), in the configurations listed in ``--ray`` (each a set of ``key=value`` config
overrides). Both sides' images/s are end to end: every start-up cost is in them.

Runs alternate (loop, each Ray configuration, loop, ...) ``--rounds`` times so that load from
other processes hits every side alike; each side's images/s is its median over the rounds.
Ray is reported twice: end to end (the goal: ``goal_ratio`` x the loop) and steady (after
the first answered batch, for diagnosis). Peak memory is the summed PSS
(proportional set size) of the driver and its Ray worker processes (Ray's daemons apart),
sampled every 0.1 s (``bench_data.PeakMemory``). Beside them, the ceiling: the largest
ratio any pipeline could reach over the loop on these cores, from the measured per-image
decode and forward costs (``ceiling``): the loop already runs the forward pass on every
core, so only the decode time can be hidden.

Image sets, the goal stated for each:

- ``bccd_640x480``: the small-folder case, BCCD's 364 640×480 microscope JPEGs (``--bccd``,
  the real photographs), a run of seconds in which start-up weighs most;
- ``bucket_<W>x<H>``: the batch-inference case, a folder large enough that start-up is
  amortised as it is for a user scoring a bucket: ``--bucket-images`` JPEGs of ``--large``
  pixels (a camera's 3:2 frame, quality 90, smooth gradients + noise; ``--unique`` distinct
  images repeated under distinct names, so that generating them stays quick).

Smoke run (small): ``python benchmarks/bench_predict.py --images 48 --bucket-images 96 --rounds 1``
Full run (about 5 minutes on 2 quiet cores):
``python benchmarks/bench_predict.py --out benchmarks/results/predict.json``
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.pop("RAY_ADDRESS", None)

from _machine import cpu_name  # noqa: E402  (benchmarks/, the script's own folder)
from bench_data import PeakMemory  # noqa: E402

MODEL = "vit_tiny_patch16_224"
GOAL = 1.5  # pipelines.predict's end-to-end images/s over the loop's, on each image set
# Two model replicas of one thread each, decoding their own batches (decode fused into the
# actors); two one-thread replicas fed by decode tasks (the local cluster then has more
# logical CPUs than cores).
DEFAULT_RAY = [
    "inference.actors=2 inference.num_cpus=1 inference.threads=1 decode.num_cpus=1",
    "inference.actors=2 inference.num_cpus=1 inference.threads=1 decode.num_cpus=0.5",
]


def make_checkpoint(directory: Path) -> Path:
    from components.core.checkpoint import CheckpointMeta, save_checkpoint
    from components.models import build_model

    model = build_model(MODEL, num_classes=1000)
    meta = CheckpointMeta(model_name=MODEL, task="classification",
                          model_config={"num_classes": 1000},
                          class_names=[f"class{i}" for i in range(1000)], image_size=224,
                          patch_size=16, mean=tuple(model.mean), std=tuple(model.std))
    return save_checkpoint(directory, model.state_dict(), meta)


def bccd_images(root: Path, n: int, out: Path) -> Path:
    files = sorted(root.rglob("*.jpg"))[:n]
    if not files:
        raise SystemExit(f"no JPEGs under {root}")
    out.mkdir(parents=True)
    for f in files:
        shutil.copy(f, out / f.name)
    return out


def large_images(size: tuple[int, int], n: int, out: Path, unique: int | None = None) -> Path:
    """``n`` JPEGs of ``size`` (w, h), quality 90: smooth colour fields plus sensor-like noise;
    ``unique`` distinct ones (default: all), repeated under distinct names."""
    from PIL import Image

    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    unique = min(n, unique or n)
    for i in range(n):
        if i >= unique:
            shutil.copyfile(out / f"large_{i % unique:05d}.jpg", out / f"large_{i:05d}.jpg")
            continue
        phase = rng.uniform(0, 6.28, 3)
        base = np.stack([127 + 100 * np.sin(xx / (90 + 13 * c) + yy / (140 + 7 * c) + phase[c])
                         for c in range(3)], axis=-1)
        noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noisy).save(buf, format="JPEG", quality=90)
        (out / f"large_{i:05d}.jpg").write_bytes(buf.getvalue())
    return out


def plain_loop(checkpoint: Path, folder: Path, batch_size: int, precision: str = "fp32") -> float:
    """images/s of the single-process loop, end to end (its model load included)."""
    import contextlib

    import torch

    from components.predict.stages import load_model, model_input

    start = time.perf_counter()
    model, meta = load_model(checkpoint, torch.device("cpu"))
    grid = (meta.image_size // meta.patch_size,) * 2
    files = sorted(folder.iterdir())
    cast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
            else contextlib.nullcontext())
    kept = 0
    for i in range(0, len(files), batch_size):
        patches = [model_input(f.read_bytes(), image_size=meta.image_size,
                               patch_size=meta.patch_size, max_pixels=40_000_000)[0]
                   for f in files[i:i + batch_size]]
        with torch.inference_mode(), cast:
            logits = model(torch.from_numpy(np.stack(patches)), grid).float()
        kept += len(logits.softmax(-1).topk(5).indices)
    return kept / (time.perf_counter() - start)


def ray_pipeline(checkpoint: Path, folder: Path, out: Path, overrides: list[str],
                 batch_size: int) -> dict:
    from components.core.config import load_config
    from components.predict.config import PredictConfig
    from components.predict.run import run_predict

    cfg = load_config(PredictConfig, None, [
        f"model={checkpoint}", f"input.path={folder}", f"output={out}",
        f"inference.batch_size={batch_size}", "inference.precision=fp32", *overrides])
    start = time.perf_counter()
    summary = run_predict(cfg)
    wall = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    return {"images_per_s": summary.images / wall, "steady_images_per_s": summary.steady_images_per_s,
            "first_batch_s": summary.first_batch_s + (wall - summary.seconds), "images": summary.images}


def bf16_speedup(checkpoint: Path, batch_size: int, reps: int = 3) -> float:
    """Forward-pass time fp32 / bf16 autocast on this CPU (> 1: bf16 is faster), measured."""
    import torch

    from components.tracking.packaging import model_from_checkpoint

    model, meta = model_from_checkpoint(checkpoint)
    grid = (meta.image_size // meta.patch_size,) * 2
    x = torch.randint(0, 256, (batch_size, grid[0] * grid[1], meta.patch_size ** 2 * 3),
                      dtype=torch.uint8)
    times = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        best = float("inf")
        for _ in range(reps + 1):
            start = time.perf_counter()
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                model(x, grid)
            best = min(best, time.perf_counter() - start)
        times[name] = best
    return times["fp32"] / times["bf16"]


def ceiling(checkpoint: Path, folder: Path, batch_size: int, precision: str,
            sample: int = 64) -> dict:
    """The most any pipeline can gain over the loop on this machine's cores, from measured
    per-image costs: decode ``d`` (one core) and forward ``f1`` with one thread, ``fn`` with
    all of them. The loop spends ``d + fn`` per image; a pipeline that keeps all ``n`` cores
    busy with one-thread work (the best case: no start-up, no copies, no scheduling) spends
    ``(d + f1) / n``, so the ceiling ratio is ``n (d + fn) / (d + f1)``."""
    import contextlib

    import torch

    from components.predict.stages import load_model, model_input

    model, meta = load_model(checkpoint, torch.device("cpu"))
    grid = (meta.image_size // meta.patch_size,) * 2
    files = sorted(folder.iterdir())[:sample]
    start = time.perf_counter()
    patches = [model_input(f.read_bytes(), image_size=meta.image_size, patch_size=meta.patch_size,
                           max_pixels=40_000_000)[0] for f in files]
    decode = (time.perf_counter() - start) / len(files)
    batch = torch.from_numpy(np.stack(patches[:batch_size]))
    cast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
            else contextlib.nullcontext())
    threads, forward = torch.get_num_threads(), {}
    for n in (1, threads):
        torch.set_num_threads(n)
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            with torch.inference_mode(), cast:
                model(batch, grid)
            best = min(best, time.perf_counter() - t)
        forward[n] = best / len(batch)
    torch.set_num_threads(threads)
    cores = os.cpu_count() or 1
    return {"decode_ms_per_image": round(decode * 1e3, 2),
            "forward_ms_per_image_1_thread": round(forward[1] * 1e3, 2),
            f"forward_ms_per_image_{threads}_threads": round(forward[threads] * 1e3, 2),
            "ceiling_ratio": round(cores * (decode + forward[threads]) / (decode + forward[1]), 3)}


def measure(checkpoint: Path, folder: Path, work: Path, configs: list[str], rounds: int,
            batch_size: int, precision: str) -> dict:
    loop, ray_runs = [], {c: [] for c in configs}
    with PeakMemory() as mem:
        for r in range(rounds):
            mem.phase = "dataloader"  # the driver alone: the loop forks nothing
            loop.append(plain_loop(checkpoint, folder, batch_size, precision))
            mem.phase = "ray"
            for c in configs:
                ray_runs[c].append(ray_pipeline(checkpoint, folder, work / f"out{r}",
                                                [f"inference.precision={precision}", *c.split()],
                                                batch_size))
            mem.phase = None
            print(f"  round {r}: loop {loop[-1]:.1f} img/s; "
                  + "; ".join(f"[{c}] {v[-1]['images_per_s']:.1f} "
                              f"(steady {v[-1]['steady_images_per_s']})"
                              for c, v in ray_runs.items()), flush=True)
    base = statistics.median(loop)
    out = {"images": len(list(folder.iterdir())), "precision": precision,
           "goal": f"pipelines.predict end to end >= {GOAL}x the loop's images/s",
           "statistic": f"median of {rounds} alternating rounds",
           "loop_images_per_s": round(base, 2),
           "loop_peak_pss_mib": round(mem.peak["dataloader"], 1),
           "ceiling": ceiling(checkpoint, folder, batch_size, precision), "ray": []}
    for c, runs in ray_runs.items():
        e2e = statistics.median(r["images_per_s"] for r in runs)
        steady = statistics.median(r["steady_images_per_s"] or 0.0 for r in runs)  # 0: one batch
        out["ray"].append({
            "config": c, "images_per_s": round(e2e, 2), "steady_images_per_s": round(steady, 2),
            "first_batch_s": round(statistics.median(r["first_batch_s"] for r in runs), 2),
            "ratio_end_to_end": round(e2e / base, 3), "ratio_steady": round(steady / base, 3),
            "meets_goal": e2e / base >= GOAL})
    out["ray_peak_pss_mib"] = round(mem.peak["ray"], 1)
    out["ray_daemons_peak_pss_mib"] = round(mem.peak["daemons"], 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=364, help="BCCD images (default: all of them)")
    parser.add_argument("--bucket-images", type=int, default=1500, help="images of the generated bucket")
    parser.add_argument("--unique", type=int, default=48, help="distinct images in the bucket")
    parser.add_argument("--large", default="2048x1371", help="size of the generated JPEGs (WxH)")
    parser.add_argument("--bccd", default="/work/shared/data/bccd", help="BCCD root (read only)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ray", nargs="*", default=DEFAULT_RAY,
                        help="Ray configurations, each one quoted string of overrides")
    parser.add_argument("--out", default=None, help="write the JSON here")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]

    import ray
    import torch

    from components.core.device import cpu_has_fast_bf16

    from components.core.config import load_config
    from components.predict.config import PredictConfig
    from components.predict.run import cpus_needed

    need = max(cpus_needed(load_config(PredictConfig, None, [
        "model=x", "input.path=x", "output=x", *c.split()])) for c in args.ray)
    ray.init(num_cpus=max(os.cpu_count() or 1, int(np.ceil(need))), include_dashboard=False,
             configure_logging=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    try:
        checkpoint = make_checkpoint(work / "ckpt")
        w, h = (int(v) for v in args.large.lower().split("x"))
        sets = {"bccd_640x480": bccd_images(Path(args.bccd), args.images, work / "bccd"),
                f"bucket_{w}x{h}": large_images((w, h), args.bucket_images, work / "large", args.unique)}
        # bf16 only where this CPU is measured faster at it (both sides then run bf16)
        speedup = bf16_speedup(checkpoint, args.batch_size)
        precision = "bf16" if cpu_has_fast_bf16() and speedup > 1.05 else "fp32"
        print(f"bf16 forward speed-up {speedup:.2f}x: measuring in {precision}", flush=True)
        results = {}
        for name, folder in sets.items():
            print(f"{name}: {len(list(folder.iterdir()))} images", flush=True)
            results[name] = measure(checkpoint, folder, work, args.ray, args.rounds,
                                    args.batch_size, precision)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        ray.shutdown()
    report = {
        "benchmark": "bench_predict", "model": MODEL, "image_size": 224, "precision": precision,
        "bf16_forward_speedup": round(speedup, 3),
        "batch_size": args.batch_size, "rounds": args.rounds, "goal_ratio": GOAL,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads_loop": torch.get_num_threads(),
                    "cpu_fast_bf16": cpu_has_fast_bf16(),
                    "load_average_1m_at_start": load_at_start,
                    "load_average_1m_at_end": os.getloadavg()[0]},
        "results": results,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
