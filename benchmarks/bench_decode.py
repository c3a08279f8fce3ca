"""Reduced-size JPEG decoding: images/s of decode + resize to the training size, full decode
(before) vs libjpeg's 1/2, 1/4, 1/8 scale decode (after, ``image_io.decode_at_size``).

Two image sets: generated 2048×1371 photographs (smooth colour fields, texture, sharp-edged
blobs; JPEG quality 90, written to a temp dir) and BCCD's 640×480 microscope photographs.
Two paths, as the data layer runs them (one thread, as in a Ray Data map task):

- ``eval``: decode → whole-image resize to ``S × S`` (``ImageTransform`` for eval);
- ``train``: decode → the training transform (pre-shrink to a longer side of ``4 × S``,
  RandomResizedCrop, flips, colour jitter), seeded.

Every round times each (set, size, path) with full and with reduced decode back to back,
in alternating order, after one warm-up round; the median over rounds is reported, with
the ratio reduced / full from the same run, and the mean absolute pixel difference of the
eval outputs (0–255 scale) as the price paid.

Run: ``python benchmarks/bench_decode.py [--sizes 96,224] [--rounds 5] [--out benchmarks/results/decode.json]``
(no ``--out``: print only).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BCCD_IMAGES = Path(os.environ.get("VITPIPE_BCCD", "/work/shared/data/bccd")) / "BCCD" / "JPEGImages"


def photo_jpeg(width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    """A photograph-like JPEG: smooth colour gradients, fine noise and a few sharp-edged
    bright ellipses (edges and texture are what a reduced decode could blur or shift)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(2, 9), rng.uniform(2, 9), rng.uniform(0, 6.3)
        channels.append(128 + 70 * np.sin(fx * x / width * 6.3 + phase) * np.cos(fy * y / height * 6.3))
    image = np.stack(channels, axis=-1) + rng.normal(0, 6, (height, width, 3))
    for _ in range(8):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.02, 0.12) * width, rng.uniform(0.02, 0.12) * height
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
        image[inside] = rng.uniform(0, 255, 3)
    buf = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _pass(images: list[bytes], transform, reduced: bool) -> list[np.ndarray]:
    from components.data.image_io import decode_at_size
    from components.data.transforms import row_seed

    out = []
    for k, data in enumerate(images):
        rgb, _ = decode_at_size(data, transform.min_decode_size if reduced else None)
        image, _, _ = transform(rgb, seed=row_seed(0, 0, k))
        out.append(image)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-large", type=int, default=24, help="generated 2048x1371 JPEGs")
    parser.add_argument("--num-bccd", type=int, default=48, help="BCCD photographs (first N)")
    parser.add_argument("--sizes", default="96,224", help="training sizes S (comma-separated)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after 1 warm-up)")
    parser.add_argument("--out", default=None, help="write the JSON result here (default: print only)")
    args = parser.parse_args()

    import cv2

    from benchmarks._machine import cpu_name
    from components.data.config import AugmentConfig
    from components.data.transforms import ImageTransform

    cv2.setNumThreads(1)  # one CPU per Ray Data map task
    began = time.perf_counter()
    sets: dict[str, list[bytes]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        for k in range(args.num_large):  # written and read back, as a dataset would be
            path = Path(tmp) / f"photo_{k:03d}.jpg"
            path.write_bytes(photo_jpeg(2048, 1371, seed=k))
            sets.setdefault("generated_2048x1371", []).append(path.read_bytes())
    bccd = sorted(BCCD_IMAGES.glob("*.jpg"))[:args.num_bccd]
    if bccd:
        sets["bccd_640x480"] = [p.read_bytes() for p in bccd]
    sizes = [int(s) for s in args.sizes.split(",")]
    transforms = {(path, s): ImageTransform(task="classification", training=path == "train",
                                            image_size=s, augment=AugmentConfig())
                  for path in ("eval", "train") for s in sizes}
    cases = [(name, path, s) for name in sets for (path, s) in transforms]
    times: dict[tuple, dict[str, list[float]]] = {c: {"full": [], "reduced": []} for c in cases}
    for round_ in range(args.rounds + 1):  # round 0 warms caches up and is not counted
        for name, path, s in cases:
            order = ("full", "reduced") if round_ % 2 == 0 else ("reduced", "full")
            for variant in order:
                t = time.perf_counter()
                _pass(sets[name], transforms[(path, s)], variant == "reduced")
                if round_:
                    times[(name, path, s)][variant].append(time.perf_counter() - t)

    results = []
    for name, path, s in cases:
        n = len(sets[name])
        full = statistics.median(times[(name, path, s)]["full"])
        reduced = statistics.median(times[(name, path, s)]["reduced"])
        row = {"images": name, "path": path, "image_size": s, "n": n,
               "full_images_per_s": round(n / full, 1),
               "reduced_images_per_s": round(n / reduced, 1),
               "speedup_reduced_vs_full": round(full / reduced, 2)}
        if path == "eval":
            a = _pass(sets[name], transforms[(path, s)], False)
            b = _pass(sets[name], transforms[(path, s)], True)
            row["eval_mean_abs_pixel_diff"] = round(float(np.mean(
                [np.abs(x.astype(np.int16) - y).mean() for x, y in zip(a, b)])), 3)
        results.append(row)
        print(f"{name:<20} {path:<5} S={s:<4} full {row['full_images_per_s']:>7} img/s  "
              f"reduced {row['reduced_images_per_s']:>7} img/s  x{row['speedup_reduced_vs_full']}"
              + (f"  mean |diff| {row['eval_mean_abs_pixel_diff']}" if path == "eval" else ""))
    result = {
        "benchmark": "decode",
        "what": "decode + resize to the training size, one thread: full vs reduced-size JPEG decode",
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_name(),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "results": results,
        "wall_s": round(time.perf_counter() - began, 1),
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
