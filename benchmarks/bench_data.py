"""Data pipeline throughput: Ray Data (``build_dataset`` + ``iter_batches``) vs torch DataLoader.

Both do exactly the same work per image on the synthetic set: read the file, decode
(``decode_image``), training transforms (``ImageTransform``: RandomResizedCrop, flips, colour
jitter, bbox-aware), patchify, pad boxes, collate to torch batches. The DataLoader uses
``num_workers=2``; Ray runs on a local cluster of 2 CPUs (one decode task per CPU). Each
side runs a warm-up epoch, then ``--epochs`` timed epochs, alternating Ray and DataLoader
epochs so that load from other processes on the machine hits both alike; images/s is over
the timed epochs.

Peak memory is the peak of the summed PSS (proportional set size, so shared libraries are
not counted twice) of the driver and its pipeline workers (DataLoader worker processes /
``ray::`` worker processes), sampled every 0.1 s. Ray's own daemons (GCS, raylet,
dashboard) are reported apart. DataLoader workers are forks of the driver (Linux default)
and share its pages; Ray workers are fresh processes that import torch + albumentations
themselves, which is most of Ray's larger footprint.

Run: ``python benchmarks/bench_data.py`` → ``benchmarks/results/data.json`` (< 3 min).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.core.device import cpu_name  # noqa: E402

GOAL_RATIO = 0.9  # Ray Data images/s over the DataLoader's, same work, same cores
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.pop("RAY_ADDRESS", None)


# ---------------------------------------------------------------- memory sampling (/proc)
def _processes() -> dict[int, tuple[int, str]]:
    """``{pid: (ppid, cmdline)}`` for every process we can read."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            out[int(entry)] = (ppid, cmd)
        except (OSError, IndexError, ValueError):
            continue
    return out


def _pss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakMemory:
    """Peak summed PSS per phase: the driver plus the processes of the pipeline being run.

    ``phase = "ray"`` counts ``ray::`` worker processes, ``phase = "dataloader"`` the
    DataLoader's worker processes (forks of this process: same command line); everything
    else under this process (Ray's daemons) is tracked as ``daemons``.
    """

    def __init__(self) -> None:
        self.phase: str | None = None
        self.peak: dict[str, float] = {"ray": 0.0, "dataloader": 0.0, "daemons": 0.0}
        self.processes: dict[str, int] = {"ray": 0, "dataloader": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        phase = self.phase
        procs = _processes()
        me = os.getpid()
        descendants, frontier = set(), {me}
        while frontier:
            frontier = {p for p, (pp, _) in procs.items() if pp in frontier} - descendants
            descendants |= frontier
        mine = procs.get(me, (0, ""))[1]
        ray_workers = [p for p in descendants if procs[p][1].startswith("ray::")]
        loader_workers = [p for p in descendants if procs[p][1] == mine]
        daemons = descendants - set(ray_workers) - set(loader_workers)
        self.peak["daemons"] = max(self.peak["daemons"], sum(_pss_mib(p) for p in daemons))
        if phase is None:
            return
        workers = ray_workers if phase == "ray" else loader_workers
        total = _pss_mib(me) + sum(_pss_mib(p) for p in workers)
        self.peak[phase] = max(self.peak[phase], total)
        self.processes[phase] = max(self.processes[phase], 1 + len(workers))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.1)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- the DataLoader side
class TorchDetectionSet:
    """The same per-image work as ``components.data.dataset.make_rows``, as a torch Dataset."""

    def __init__(self, records, spec):
        self.records, self.spec = records, spec

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        import cv2

        from components.data.dataset import _transform, pad_boxes
        from components.data.image_io import decode_image
        from components.data.patchify import patchify
        from components.data.transforms import row_seed

        cv2.setNumThreads(1)
        spec, r = self.spec, self.records[i]
        transform = _transform(spec.task, spec.training, spec.image_size,
                               spec.augment.model_dump_json())
        rgb = decode_image(spec.images.read(r["file"]), max_pixels=spec.max_pixels)
        image, boxes, classes = transform(
            rgb, np.asarray(r["boxes"], np.float32).reshape(-1, 4),
            np.asarray(r["classes"], np.int64), seed=row_seed(spec.seed, 0, r["image_id"]))
        padded, labels, mask = pad_boxes(boxes, classes, spec.max_boxes)
        patches, grid = patchify(image, spec.patch_size)
        return {"patches": patches, "grid": np.asarray(grid, np.int64), "boxes": padded,
                "classes": labels, "box_mask": mask, "image_id": r["image_id"],
                "orig_size": np.asarray(rgb.shape[:2], np.int64)}


def collate_rows(rows: list[dict]) -> dict:
    """The DataLoader's collate: stack rows, then the same collate as ``iter_batches``."""
    from components.data.loader import collate_numpy

    return collate_numpy({k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]},
                         "detection")


def make_dataloader(records, spec, *, batch_size: int):
    from torch.utils.data import DataLoader

    # Forked (Linux default) before Ray starts, persistent across epochs.
    return DataLoader(TorchDetectionSet(records, spec), batch_size=batch_size, num_workers=2,
                      shuffle=False, persistent_workers=True, prefetch_factor=2,
                      collate_fn=collate_rows)


def timed_epoch(batches) -> tuple[int, float]:
    start = time.perf_counter()
    n = sum(len(b["patches"]) for b in batches)
    return n, time.perf_counter() - start


def summary(images: int, seconds: float, warm_s: float, mem: PeakMemory, name: str) -> dict:
    return {"images": images, "seconds": round(seconds, 3),
            "images_per_s": round(images / seconds, 1), "warmup_epoch_s": round(warm_s, 3),
            "peak_pss_mib": round(mem.peak[name], 1), "peak_processes": mem.processes[name]}


def run_both(cfg, *, batch_size: int, epochs: int) -> dict:
    """Warm both pipelines up, then alternate timed epochs (Ray, DataLoader, Ray, ...) so
    that load from other processes on the machine hits both alike."""
    import ray
    import torch

    from components.data.dataset import RowSpec, _read_source, build_dataset
    from components.data.loader import iter_batches

    torch.set_num_threads(1)
    source = _read_source(cfg, "train")
    spec = RowSpec(images=source.images, task="detection", training=True,
                   image_size=cfg.image_size, patch_size=cfg.patch_size, max_boxes=cfg.max_boxes,
                   max_pixels=cfg.max_pixels, augment=cfg.augment, seed=cfg.seed, epoch=0)
    loader = make_dataloader(source.records, spec, batch_size=batch_size)
    with PeakMemory() as mem:
        mem.phase = "dataloader"
        _, dl_warm = timed_epoch(loader)
        mem.phase = None
        # Auth off: a throwaway loopback cluster owned by this process.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
                 log_to_driver=False, object_store_memory=500_000_000)
        try:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            ctx.print_on_execution_start = False
            bundle = build_dataset(cfg, "train", training=True)
            mem.phase = "ray"
            _, ray_warm = timed_epoch(iter_batches(bundle.dataset, batch_size=batch_size,
                                                   task="detection"))
            totals = {"ray": [0, 0.0], "dataloader": [0, 0.0]}
            for _ in range(epochs):
                mem.phase = "ray"
                n, t = timed_epoch(iter_batches(bundle.dataset, batch_size=batch_size,
                                                task="detection"))
                totals["ray"][0] += n
                totals["ray"][1] += t
                mem.phase = "dataloader"
                n, t = timed_epoch(loader)
                totals["dataloader"][0] += n
                totals["dataloader"][1] += t
            mem.phase = None
        finally:
            ray.shutdown()
    return {
        "ray_data": summary(*totals["ray"], ray_warm, mem, "ray")
        | {"ray_daemons_peak_pss_mib": round(mem.peak["daemons"], 1)},
        "torch_dataloader": summary(*totals["dataloader"], dl_warm, mem, "dataloader"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=384)
    parser.add_argument("--source-size", type=int, default=320, help="synthetic image side")
    parser.add_argument("--image-size", type=int, default=224, help="model input side")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rows-per-block", type=int, default=None,
                        help="rows per Ray Data block (default: the data layer's, DataConfig.block_rows)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data.json"))
    args = parser.parse_args()

    from components.data.config import DataConfig
    from components.data.synth import SynthConfig, synthesize

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        synthesize(tmp, SynthConfig(seed=0, num_train=args.num_images, num_val=0,
                                    image_size=args.source_size))
        cfg = DataConfig(root=tmp, image_size=args.image_size, patch_size=16,
                         rows_per_block=args.rows_per_block, seed=0,
                         validate_images=False)  # a one-off pass, not the measured stream
        both = run_both(cfg, batch_size=args.batch_size, epochs=args.epochs)
    ray_result, torch_result = both["ray_data"], both["torch_dataloader"]
    ratio = ray_result["images_per_s"] / torch_result["images_per_s"]
    result = {
        "benchmark": "data",
        "what": "decode + train transforms (bbox-aware) + patchify + collate, images/s",
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_name(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "settings": vars(args) | {"dataloader_workers": 2, "ray_cpus": 2},
        "ray_data": ray_result,
        "torch_dataloader": torch_result,
        "speedup_ray_vs_dataloader": round(ratio, 3),
        "goal": GOAL_RATIO,
        "goal_met": ratio >= GOAL_RATIO,
        "wall_s": round(time.perf_counter() - began, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
