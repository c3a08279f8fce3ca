"""``vitpipe data ...``: synthesize, inspect and show datasets.

- ``synth --out DIR``: the embedded synthetic dataset (COCO + ImageFolder).
- ``inspect --coco ANN.json --images DIR [--json]`` (or ``--voc ROOT [--split NAME]``):
  validate every record and image; report accepted ``images``/``annotations``,
  ``categories``, ``per_category`` counts and ``skipped`` (``[{"file"|"id", "reason"}]``).
  ``--json`` prints exactly one JSON object.
- ``show --coco ANN.json --images DIR --out DIR [--augment]`` (or ``--voc``): draw boxes and
  labels on a sample, optionally after the training transforms.
- ``convert --voc ROOT [--split NAME] --out FILE.json``: a Pascal VOC split (validated like
  ``inspect``) as a COCO instances file for the images under ``ROOT/JPEGImages``.

Exit 0 whenever the dataset could be read (skips included); a missing or malformed
annotation file or image root is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
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
    synth.add_argument("--workers", type=int, default=None,
                       help="processes that render images (default: one per CPU; same files either way)")
    synth.set_defaults(handler=_synth)

    inspect = sub.add_parser("inspect", help="validate a COCO or VOC dataset and report what was accepted")
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

    convert = sub.add_parser("convert", help="write a Pascal VOC split as a COCO instances file")
    convert.add_argument("--voc", required=True, help="VOC folder (path or URI)")
    convert.add_argument("--split", default=None,
                         help="ImageSets/Main/<split>.txt (default: every XML)")
    convert.add_argument("--out", required=True, help="COCO JSON file to write")
    convert.add_argument("--max-pixels", type=int, default=None, help="skip images above this size")
    convert.set_defaults(handler=_convert, coco=None, images=None)


def _add_source_args(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--coco", help="COCO instances JSON (path or URI); needs --images")
    source.add_argument("--voc", help="Pascal VOC folder, or a flat folder of XML + images")
    p.add_argument("--images", help="COCO: image root (path or URI)")
    p.add_argument("--split", default=None,
                   help="VOC: the split in ImageSets/Main/<split>.txt (default: every XML)")
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
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    out = synthesize(args.out, cfg, progress=True, workers=workers)
    print(f"wrote {cfg.num_train} train + {cfg.num_val} val images to {out}")
    return 0


def _read_records(args: argparse.Namespace):
    """The COCO or VOC source named on the command line (records only) or UserError."""
    from components.cli.main import UserError
    from components.data.coco import read_coco
    from components.data.config import DataConfig
    from components.data.errors import DataError
    from components.data.voc import read_voc

    if args.coco is not None and args.images is None:
        raise UserError("--coco needs --images (the image root)")
    if args.voc is not None and args.images is not None:
        raise UserError("--images is for --coco; a VOC folder's images are found from it")
    if args.coco is not None and args.split is not None:
        raise UserError("--split is for --voc; a COCO split is its own annotation file")
    where = args.images if args.coco is not None else args.voc
    try:
        if args.coco is not None:
            return read_coco(args.coco, args.images)
        image_set = None if args.split is None else DataConfig(
            format="voc", root=args.voc).split_paths(args.split).image_set
        return read_voc(args.voc, image_set=image_set)
    except DataError as err:
        raise UserError(str(err)) from None
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {where}: {err}") from None


def _read(args: argparse.Namespace, *, check_pixels: bool):
    """Read + validate the COCO/VOC source (pixels too, when asked) or raise UserError."""
    from tqdm import tqdm

    from components.cli.main import UserError
    from components.data.coco import check_image
    from components.data.image_io import DEFAULT_MAX_PIXELS

    source = _read_records(args)
    if not source.images.is_dir():
        raise UserError(f"image root {args.images or args.voc} does not exist or is not a folder")
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


def _convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from components.cli.main import UserError

    source = _read(args, check_pixels=True)
    out = Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(source.gt, sort_keys=True))
    except OSError as err:
        raise UserError(f"cannot write {out}: {err}") from None
    images_uri = source.images.root
    print(f"wrote {len(source.gt['images'])} images, {len(source.gt['annotations'])} "
          f"annotations ({len(source.report.skipped)} records skipped) to {out}; "
          f"images: {images_uri}")
    return 0
