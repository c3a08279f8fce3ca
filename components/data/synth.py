"""The embedded synthetic dataset: shapes on textured backgrounds, COCO + ImageFolder.

``synthesize(out_dir, cfg)`` writes, deterministically from ``cfg.seed``::

    images/{train,val}/<split>_<index>.{jpg,png}   real JPEG/PNG files
    annotations/instances_{train,val}.json          COCO instances (bbox xywh pixels)
    imagefolder/{train,val}/<class_name>/<file>     one square crop per object, by shape

Each image holds ``min_objects..max_objects`` shapes (circle, square, triangle, star,
cross) with random colour, size, aspect, rotation, on a textured background (gradient +
stripes + noise). Later shapes may partly cover earlier ones; each COCO box is the
tight box of the object's *visible* pixels and a placement is rejected when less than
``min_visible`` of an object would stay visible, so every annotated object can be seen.

Same seed → byte-identical files: each image draws from its own ``numpy`` generator
seeded by ``(seed, split, index)``, JPEGs are written with fixed encoder settings,
PNGs carry no timestamps, and the JSON is written with sorted keys and no dates.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES = ("circle", "square", "triangle", "star", "cross")
SPLITS = ("train", "val")
_SPLIT_SEED = {"train": 0, "val": 1}


@dataclass(frozen=True)
class SynthConfig:
    """Size and look of the synthetic dataset (defaults: the demo's size)."""

    seed: int = 0
    num_train: int = 320
    num_val: int = 80
    image_size: int = 96
    min_objects: int = 1
    max_objects: int = 4
    min_object_frac: float = 0.18  # object side relative to the image side
    max_object_frac: float = 0.42
    min_visible: float = 0.55  # of an object's own pixels, after later objects are drawn
    png_every: int = 4  # every n-th image is a PNG, the rest JPEG
    jpeg_quality: int = 92
    crop_size: int | None = None  # ImageFolder crops; default: image_size

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError("image_size must be at least 32")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError("need 1 <= min_objects <= max_objects")
        if self.num_train < 0 or self.num_val < 0:
            raise ValueError("num_train and num_val must be >= 0")


# ---------------------------------------------------------------- shape outlines
def _unit_outline(shape: str) -> np.ndarray:
    """Polygon ``[K, 2]`` of a shape in the unit box ``[-1, 1]²`` (before aspect/rotation)."""
    if shape == "circle":
        t = np.linspace(0.0, 2 * math.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    if shape == "triangle":
        return np.array([[0, -1], [1, 0.8], [-1, 0.8]], dtype=np.float64)
    if shape == "star":
        t = -math.pi / 2 + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    if shape == "cross":
        a = 0.33
        return np.array(
            [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a],
             [a, 1], [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]],
            dtype=np.float64,
        )
    raise ValueError(f"unknown shape {shape!r}")


_OUTLINES = {name: _unit_outline(name) for name in CLASS_NAMES}


def _place(outline: np.ndarray, cx: float, cy: float, half: float, aspect: float, angle: float
           ) -> list[tuple[float, float]]:
    pts = outline * np.array([half * aspect, half / aspect])
    c, s = math.cos(angle), math.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]])
    return [(float(x + cx), float(y + cy)) for x, y in pts]


def _colour(rng: np.random.Generator, bright: bool) -> tuple[int, int, int]:
    """A saturated colour for shapes (``bright``) or a muted one for backgrounds."""
    hue = rng.uniform(0, 6)
    sat = rng.uniform(0.6, 1.0) if bright else rng.uniform(0.05, 0.35)
    val = rng.uniform(0.7, 1.0) if bright else rng.uniform(0.25, 0.6)
    i, f = int(hue) % 6, hue - int(hue)
    p, q, t = val * (1 - sat), val * (1 - sat * f), val * (1 - sat * (1 - f))
    rgb = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)][i]
    return tuple(int(round(255 * ch)) for ch in rgb)  # type: ignore[return-value]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured background ``[size, size, 3]`` uint8: gradient + stripes + noise."""
    a = np.array(_colour(rng, bright=False), dtype=np.float32)
    b = np.array(_colour(rng, bright=False), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    theta = rng.uniform(0, math.pi)
    ramp = (np.cos(theta) * xx + np.sin(theta) * yy)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    img = a * (1 - ramp[..., None]) + b * ramp[..., None]
    phi = rng.uniform(0, math.pi)
    freq = rng.uniform(3, 10)
    stripes = np.sin(2 * math.pi * freq * (np.cos(phi) * xx + np.sin(phi) * yy))
    img += rng.uniform(6, 22) * stripes[..., None]
    img += rng.normal(0, rng.uniform(3, 10), size=(size, size, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- one image
@dataclass
class _Object:
    category: int  # index into CLASS_NAMES
    mask: np.ndarray  # [H, W] bool, the object's own pixels
    colour: tuple[int, int, int]
    full_area: int  # pixels before later objects covered some of them


def _sample_object(rng: np.random.Generator, cfg: SynthConfig) -> tuple[int, list, tuple]:
    s = cfg.image_size
    category = int(rng.integers(len(CLASS_NAMES)))
    half = 0.5 * s * rng.uniform(cfg.min_object_frac, cfg.max_object_frac)
    aspect = math.sqrt(rng.uniform(0.75, 1.33)) if CLASS_NAMES[category] != "circle" else \
        math.sqrt(rng.uniform(0.8, 1.25))
    angle = rng.uniform(0, 2 * math.pi)
    cx, cy = rng.uniform(half * 0.6, s - half * 0.6, size=2)
    poly = _place(_OUTLINES[CLASS_NAMES[category]], cx, cy, half, aspect, angle)
    return category, poly, _colour(rng, bright=True)


def _render_mask(poly: list, size: int) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon(poly, fill=255)
    return np.asarray(canvas) > 0


def render_image(rng: np.random.Generator, cfg: SynthConfig) -> tuple[np.ndarray, list[dict]]:
    """One image ``[S, S, 3]`` uint8 and its objects ``[{category, bbox xywh, area}]``."""
    s = cfg.image_size
    n_objects = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    placed: list[_Object] = []
    for _ in range(n_objects):
        for _attempt in range(20):
            category, poly, colour = _sample_object(rng, cfg)
            mask = _render_mask(poly, s)
            own = int(mask.sum())
            if own < 16:
                continue
            # The new object covers earlier ones: every object must stay visible enough.
            ok = all((o.mask & ~mask).sum() >= cfg.min_visible * o.full_area for o in placed)
            if ok:
                # Later objects only shrink earlier objects' visible pixels.
                for o in placed:
                    o.mask = o.mask & ~mask
                placed.append(_Object(category, mask, colour, own))
                break
    image = _background(rng, s)
    for o in placed:
        shade = np.array(o.colour, dtype=np.int16) + rng.integers(-12, 13, size=(s, s, 3))
        image[o.mask] = np.clip(shade[o.mask], 0, 255).astype(np.uint8)
    objects = []
    for o in placed:
        ys, xs = np.nonzero(o.mask)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        objects.append({
            "category": o.category,
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "area": float(o.mask.sum()),
        })
    return image, objects


# ---------------------------------------------------------------- writing
def _save(image: np.ndarray, path: Path, quality: int) -> None:
    pil = Image.fromarray(image, mode="RGB")
    if path.suffix == ".png":
        pil.save(path, format="PNG", optimize=False, compress_level=6)
    else:
        pil.save(path, format="JPEG", quality=quality, optimize=False, progressive=False,
                 subsampling=0)


def _crop(image: np.ndarray, bbox: list[float], size: int) -> np.ndarray:
    """Square crop around a box with some context, resized to ``size × size``."""
    x, y, w, h = bbox
    side = max(w, h) * 1.3 + 4
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    x1, y1 = x0 + int(round(side)), y0 + int(round(side))
    hh, ww = image.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(ww, x1), min(hh, y1)
    crop = Image.fromarray(image[y0:y1, x0:x1], mode="RGB")
    return np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))


def _num(cfg: SynthConfig, split: str) -> int:
    return cfg.num_train if split == "train" else cfg.num_val


def _write_image(out: Path, cfg: SynthConfig, split: str, index: int, crop_size: int
                 ) -> tuple[dict, list[dict]]:
    """Render and write image ``index`` of ``split`` and its crops; its COCO image record and
    its objects (``category``, ``bbox``, ``area``) in drawing order."""
    rng = np.random.default_rng([cfg.seed, _SPLIT_SEED[split], index])
    image, objects = render_image(rng, cfg)
    ext = ".png" if cfg.png_every and index % cfg.png_every == cfg.png_every - 1 else ".jpg"
    file_name = f"{split}_{index:06d}{ext}"
    _save(image, out / "images" / split / file_name, cfg.jpeg_quality)
    for k, obj in enumerate(objects):
        crop = _crop(image, obj["bbox"], crop_size)
        _save(crop, out / "imagefolder" / split / CLASS_NAMES[obj["category"]]
              / f"{split}_{index:06d}_{k}.jpg", cfg.jpeg_quality)
    record = {"id": index + 1, "file_name": file_name, "width": cfg.image_size, "height": cfg.image_size}
    return record, [{k: obj[k] for k in ("category", "bbox", "area")} for obj in objects]


def _write_range(out: Path, cfg: SynthConfig, split: str, start: int, stop: int, crop_size: int
                 ) -> list[tuple[dict, list[dict]]]:
    return [_write_image(out, cfg, split, i, crop_size) for i in range(start, stop)]


def synthesize(out_dir: str | Path, cfg: SynthConfig = SynthConfig(), *, progress: bool = False,
               workers: int = 1) -> Path:
    """Write the dataset under ``out_dir`` (created); returns ``out_dir`` as a Path.

    ``workers`` > 1 renders in that many processes (each image draws from its own generator,
    so the files are the same bytes as with one); ``progress`` shows a bar per split.
    """
    out = Path(out_dir)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    crop_size = cfg.crop_size or cfg.image_size
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"}
                  for i, n in enumerate(CLASS_NAMES)]
    chunk = 250  # images per task
    pool = None
    if min(workers, max(-(-_num(cfg, split) // chunk) for split in SPLITS)) > 1:
        import concurrent.futures
        import multiprocessing

        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        for split in SPLITS:
            (out / "images" / split).mkdir(parents=True, exist_ok=True)
            for name in CLASS_NAMES:
                (out / "imagefolder" / split / name).mkdir(parents=True, exist_ok=True)
            count = _num(cfg, split)
            ranges = [(start, min(start + chunk, count)) for start in range(0, count, chunk)]
            if pool is None:
                results = (_write_range(out, cfg, split, a, b, crop_size) for a, b in ranges)
            else:
                results = pool.map(_write_range, *zip(*[(out, cfg, split, a, b, crop_size) for a, b in ranges]))
            if progress:
                from tqdm import tqdm

                results = tqdm(results, desc=f"synth {split}", unit="chunk", total=len(ranges))
            images, annotations = [], []
            for part in results:
                for record, objects in part:
                    images.append(record)
                    for obj in objects:
                        annotations.append({
                            "id": len(annotations) + 1, "image_id": record["id"],
                            "category_id": obj["category"] + 1, "bbox": obj["bbox"],
                            "area": obj["area"], "iscrowd": 0,
                        })
            coco = {
                "info": {"description": "vitpipe synthetic shapes", "version": "1",
                         "synth_config": asdict(cfg)},
                "licenses": [],
                "images": images,
                "annotations": annotations,
                "categories": categories,
            }
            (out / "annotations" / f"instances_{split}.json").write_text(
                json.dumps(coco, sort_keys=True, indent=1) + "\n")
    finally:
        if pool is not None:
            pool.shutdown()
    return out
