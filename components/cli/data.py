"""``vitpipe data ...``: synthesize, inspect and show datasets.

- ``synth --out DIR``: the embedded synthetic dataset (COCO + ImageFolder).
- ``inspect --coco ANN.json --images DIR [--json]``: validate every record and image;
  report accepted ``images``/``annotations``, ``categories``, ``per_category`` counts and
  ``skipped`` (``[{"file"|"id", "reason"}]``). ``--json`` prints exactly one JSON object.
- ``show --coco ANN.json --images DIR --out DIR [--augment]``: draw boxes and labels on a
  sample, optionally after the training transforms.

Exit 0 whenever the dataset could be read (skips included); a missing or malformed
annotation file or image root is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="datasets: synthesize, inspect, show")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    synth = sub.add_parser("synth", help="write the embedded synthetic dataset (COCO + ImageFolder)")
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--num-train", type=int, default=None)
    synth.add_argument("--num-val", type=int, default=None)
    synth.add_argument("--image-size", type=int, default=None)
    synth.set_defaults(handler=_synth)

    inspect = sub.add_parser("inspect", help="validate a COCO dataset and report what was accepted")
    _add_source_args(inspect)
    inspect.add_argument("--json", action="store_true", help="print exactly one JSON object")
    inspect.set_defaults(handler=_inspect)

    show = sub.add_parser("show", help="draw boxes and labels on a sample of images")
    _add_source_args(show)
    show.add_argument("--out", required=True, help="folder for the drawn PNGs")
    show.add_argument("--num", type=int, default=8, help="how many images")
    show.add_argument("--seed", type=int, default=0, help="sample and augmentation seed")
    show.add_argument("--augment", action="store_true", help="apply the training transforms first")
    show.add_argument("--image-size", type=int, default=192, help="model input size (--augment)")
    show.set_defaults(handler=_show)


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coco", required=True, help="COCO instances JSON (path or URI)")
    p.add_argument("--images", required=True, help="image root (path or URI)")
    p.add_argument("--max-pixels", type=int, default=None, help="skip images above this size")


def _synth(args: argparse.Namespace) -> int:
    from components.cli.main import UserError
    from components.data.synth import SynthConfig, synthesize

    given = {"seed": args.seed, "num_train": args.num_train, "num_val": args.num_val,
             "image_size": args.image_size}
    try:
        cfg = SynthConfig(**{k: v for k, v in given.items() if v is not None})
    except ValueError as err:
        raise UserError(str(err)) from None
    out = synthesize(args.out, cfg, progress=True)
    print(f"wrote {cfg.num_train} train + {cfg.num_val} val images to {out}")
    return 0


def _read(args: argparse.Namespace, *, check_pixels: bool):
    """Read + validate the COCO source (pixels too, when asked) or raise UserError."""
    from tqdm import tqdm

    from components.cli.main import UserError
    from components.data.coco import CocoFormatError, check_image, read_coco
    from components.data.image_io import DEFAULT_MAX_PIXELS

    try:
        source = read_coco(args.coco, args.images)
    except CocoFormatError as err:
        raise UserError(str(err)) from None
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {args.images}: {err}") from None
    if not source.images.is_dir():
        raise UserError(f"image root {args.images} does not exist or is not a folder")
    if check_pixels:
        bad = set()
        limit = args.max_pixels or DEFAULT_MAX_PIXELS
        for record in tqdm(source.records, desc="checking images", unit="img", file=sys.stderr,
                           disable=None):
            reason, _ = check_image(source.images, record, max_pixels=limit)
            if reason:
                bad.add(record["image_id"])
                source.report.skip_file(record["file"], reason)
        source.drop_images(bad)
    return source


def inspect_summary(source) -> dict[str, Any]:
    """The ``inspect`` answer for a validated :class:`~components.data.coco.CocoSource`."""
    name_of = {c["id"]: c["name"] for c in source.gt["categories"]}
    per_category = {name: 0 for name in name_of.values()}
    for ann in source.gt["annotations"]:
        per_category[name_of[ann["category_id"]]] += 1
    counts = dict(source.report.counts)
    counts["images_accepted"] = len(source.gt["images"])
    counts["annotations_accepted"] = len(source.gt["annotations"])
    return {
        "images": len(source.gt["images"]),
        "annotations": len(source.gt["annotations"]),
        "categories": [{"id": c["id"], "name": c["name"]} for c in source.gt["categories"]],
        "per_category": per_category,
        "skipped": source.report.skipped,
        "counts": dict(sorted(counts.items())),
    }


def _inspect(args: argparse.Namespace) -> int:
    summary = inspect_summary(_read(args, check_pixels=True))
    if args.json:
        print(json.dumps(summary, sort_keys=True))
        return 0
    print(f"images accepted:      {summary['images']}")
    print(f"annotations accepted: {summary['annotations']}")
    print("per category:")
    for name, n in summary["per_category"].items():
        print(f"  {name:<20} {n}")
    print(f"skipped: {len(summary['skipped'])}")
    for s in summary["skipped"]:
        what = f"file {s['file']}" if "file" in s else f"annotation {s['id']}"
        print(f"  {what}: {s['reason']}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import torch
    from tqdm import tqdm

    from components.cli.main import UserError
    from components.data.boxes import cxcywh_to_xyxy
    from components.data.config import AugmentConfig
    from components.data.draw import draw_boxes
    from components.data.image_io import DEFAULT_MAX_PIXELS, BadImageError, decode_image
    from components.data.transforms import ImageTransform, row_seed

    if args.num < 1 or args.image_size < 16:
        raise UserError("--num must be >= 1 and --image-size >= 16")
    source = _read(args, check_pixels=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    records = source.records
    picks = sorted(rng.choice(len(records), size=min(args.num, len(records)), replace=False)) \
        if records else []
    transform = ImageTransform(task="detection", training=True, image_size=args.image_size,
                               augment=AugmentConfig()) if args.augment else None
    written = 0
    for k in tqdm(picks, desc="drawing", unit="img", file=sys.stderr, disable=None):
        record = records[k]
        try:
            rgb = decode_image(source.images.read(record["file"]),
                               max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
        except (BadImageError, OSError) as err:
            print(f"skipping {record['file']}: {err}", file=sys.stderr)
            continue
        boxes = np.asarray(record["boxes"], np.float32).reshape(-1, 4)
        classes = np.asarray(record["classes"], np.int64)
        if transform is not None:
            image, norm, classes = transform(rgb, boxes, classes,
                                             seed=row_seed(args.seed, 0, record["image_id"]))
            xyxy = cxcywh_to_xyxy(torch.from_numpy(norm)).numpy() * args.image_size
        else:
            image = rgb
            xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
        labels = [source.class_names[c] for c in classes]
        name = Path(record["file"]).stem + ("_aug" if transform is not None else "") + ".png"
        draw_boxes(image, xyxy, labels).save(out / name)
        written += 1
    print(f"wrote {written} images to {out}")
    return 0
