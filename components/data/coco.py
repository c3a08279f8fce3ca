"""COCO instances reader with validation: JSON → accepted image records + skip report.

Record-level checks happen here, on the driver, without touching image bytes:

- images: non-integer or duplicate ids, missing/invalid ``width``/``height``, file names
  that escape the image root (absolute, URI, ``..``) → skipped, named by ``file``;
- annotations: unknown image id, unknown category id, malformed / NaN / infinite boxes,
  negative or zero width/height → dropped, named by ``id``; boxes crossing the image border
  are clipped to it (counted as ``boxes_clipped``), and dropped if nothing is left inside;
  ``iscrowd`` annotations stay in the ground truth for evaluation but are not training targets.

Pixel-level checks (missing, empty, corrupt, truncated, oversized files, stored size vs
decoded size) are :func:`check_image`, run once per image by the dataset builder or by
``vitpipe data inspect``.

Boxes stay COCO xywh in original pixels (``components.data.boxes``); categories are mapped
to contiguous class ids in sorted category-id order (``category_ids[class] = coco id``).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

from components.data.errors import DataError
from components.data.fs import Location, PathEscapeError, read_uri
from components.data.image_io import BadImageError, decode_at_size
from components.data.report import SkipReport

# A box thinner than this fraction of its image's side is "degenerate": it has no extent
# left in the normalised float32 coordinates that augmentation and the batch format use.
MIN_BOX_FRACTION = 1e-5


class CocoFormatError(DataError):
    """The annotation file is missing, not JSON, or not a COCO instances file."""


@dataclass
class CocoSource:
    """Accepted records of one COCO split.

    ``records``: one dict per accepted image, ``{"image_id", "file", "width", "height",
    "boxes": flat [4*M] xywh pixels, "classes": [M] contiguous ids}`` (training targets, crowd
    excluded). ``gt``: the accepted COCO dict (images, annotations incl. crowd, categories) in
    original pixel coordinates, for pycocotools evaluation.
    """

    images: Location
    records: list[dict[str, Any]]
    class_names: list[str]
    category_ids: list[int]
    gt: dict[str, Any]
    report: SkipReport = field(default_factory=SkipReport)
    annotations_digest: str = ""

    def drop_images(self, image_ids: set[int]) -> None:
        """Remove images (and their ground truth) that failed a later check."""
        if not image_ids:
            return
        self.records = [r for r in self.records if r["image_id"] not in image_ids]
        self.gt["images"] = [i for i in self.gt["images"] if i["id"] not in image_ids]
        self.gt["annotations"] = [a for a in self.gt["annotations"]
                                  if a["image_id"] not in image_ids]


def load_coco_json(uri: str) -> dict[str, Any]:
    """Read and structurally check an instances file; :class:`CocoFormatError` if unusable."""
    try:
        raw = read_uri(uri)
    except FileNotFoundError:
        raise CocoFormatError(f"annotation file {uri} does not exist") from None
    except OSError as err:
        raise CocoFormatError(f"cannot read annotation file {uri}: {err}") from None
    try:
        data = json.loads(raw)
    except RecursionError:
        raise CocoFormatError(f"annotation file {uri} is nested too deeply to be COCO") from None
    except ValueError as err:  # bad JSON or UTF-8, an integer of over 4,300 digits
        raise CocoFormatError(f"annotation file {uri} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise CocoFormatError(f"annotation file {uri} must hold a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise CocoFormatError(
                f"annotation file {uri} is not a COCO instances file: '{key}' must be a list")
    return data


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_box(bbox: Any) -> tuple[list[float] | None, str | None]:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(
            isinstance(v, Real) and not isinstance(v, bool) for v in bbox):
        return None, "malformed box"
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, "non-finite box"
    if w < 0 or h < 0:
        return None, "negative-size box"
    if w == 0 or h == 0:
        return None, "zero-size box"
    return [x, y, w, h], None


def _clip(box: list[float], width: int, height: int) -> list[float] | None:
    x, y, w, h = box
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(width), x + w), min(float(height), y + h)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None
    return [x0, y0, x1 - x0, y1 - y0]


def read_coco(annotations_uri: str, images_uri: str, *, class_names: list[str] | None = None
              ) -> CocoSource:
    """Read ``annotations_uri`` (COCO instances) for images under ``images_uri``."""
    return coco_source(load_coco_json(annotations_uri), images_uri, class_names=class_names,
                       where=annotations_uri)


def coco_source(data: dict[str, Any], images_uri: str, *, class_names: list[str] | None = None,
                where: str = "annotations") -> CocoSource:
    """Validate a structurally checked COCO instances dict (see :func:`load_coco_json`) for
    images under ``images_uri``; ``where`` names its origin in errors. Other readers (VOC)
    build such a dict and share these checks."""
    annotations_uri = where
    images = Location.from_uri(images_uri)
    report = SkipReport()

    categories: dict[int, dict] = {}
    for cat in data["categories"]:
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(
                cat.get("name"), str):
            raise CocoFormatError(f"{annotations_uri}: malformed category entry {cat!r}")
        if cat["id"] in categories:
            raise CocoFormatError(f"{annotations_uri}: duplicate category id {cat['id']}")
        categories[cat["id"]] = cat
    if not categories:
        raise CocoFormatError(f"{annotations_uri}: no categories")
    category_ids = sorted(categories)
    names = [categories[c]["name"] for c in category_ids]
    if class_names is not None:
        missing = [n for n in names if n not in class_names]
        if missing:
            raise CocoFormatError(f"{annotations_uri}: categories {missing} are not in class_names")
        by_name = {categories[c]["name"]: c for c in category_ids}
        category_ids = [by_name.get(n, -1) for n in class_names]
        names = list(class_names)
    class_of = {cid: k for k, cid in enumerate(category_ids) if cid >= 0}

    report.count("images_total", len(data["images"]))
    accepted: dict[int, dict] = {}
    skipped_ids: set = set()
    for img in data["images"]:
        file = img.get("file_name") if isinstance(img, dict) else None
        label = file if isinstance(file, str) else repr(img)[:80]
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            report.skip_file(label, "image entry without an integer id")
            continue
        if img["id"] in accepted or img["id"] in skipped_ids:
            report.skip_file(label, f"duplicate image id {img['id']}")
            skipped_ids.add(img["id"])
            accepted.pop(img["id"], None)
            continue
        try:
            images.path(file if isinstance(file, str) else "")
        except PathEscapeError as err:
            report.skip_file(label, str(err))
            skipped_ids.add(img["id"])
            continue
        w, h = img.get("width"), img.get("height")
        if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
            report.skip_file(label, "missing or invalid width/height")
            skipped_ids.add(img["id"])
            continue
        accepted[img["id"]] = {"id": img["id"], "file_name": file, "width": w, "height": h}

    report.count("annotations_total", len(data["annotations"]))
    boxes: dict[int, list[float]] = {i: [] for i in accepted}
    classes: dict[int, list[int]] = {i: [] for i in accepted}
    gt_annotations = []
    gt_ids: set[int] = set()
    for ann in data["annotations"]:
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        if not isinstance(ann, dict):
            report.skip_annotation(None, "annotation entry is not an object")
            continue
        image_id = ann.get("image_id")
        if not _is_int(image_id):  # a list or an object here must not end the whole read
            report.skip_annotation(ann_id, "annotation without an integer image_id")
            continue
        if image_id in skipped_ids:
            report.skip_annotation(ann_id, "its image was skipped")
            continue
        if image_id not in accepted:
            report.skip_annotation(ann_id, "unknown image id")
            continue
        if not _is_int(ann.get("category_id")) or ann["category_id"] not in class_of:
            report.skip_annotation(ann_id, "unknown category id")
            continue
        box, reason = _check_box(ann.get("bbox"))
        if box is None:
            report.skip_annotation(ann_id, reason)
            continue
        img = accepted[image_id]
        clipped = _clip(box, img["width"], img["height"])
        if clipped is None:
            report.skip_annotation(ann_id, "box outside the image")
            continue
        if (clipped[2] < MIN_BOX_FRACTION * img["width"]
                or clipped[3] < MIN_BOX_FRACTION * img["height"]):
            report.skip_annotation(ann_id, "degenerate box")  # no extent once in float32
            continue
        if clipped != box:
            report.count("boxes_clipped")
        crowd = int(bool(ann.get("iscrowd", 0)))
        area = ann.get("area")
        if not isinstance(area, Real) or not math.isfinite(area) or area <= 0:
            area = clipped[2] * clipped[3]
        if _is_int(ann_id) and ann_id not in gt_ids:
            gt_ids.add(ann_id)
        else:  # pycocotools indexes ground truth by id: a shared or missing one drops boxes
            ann_id = None
        gt_annotations.append({"id": ann_id, "image_id": image_id,
                               "category_id": ann["category_id"], "bbox": clipped,
                               "area": float(area), "iscrowd": crowd})
        if crowd:
            report.count("crowd_annotations")
            continue
        boxes[image_id].extend(clipped)
        classes[image_id].append(class_of[ann["category_id"]])

    renumbered = [a for a in gt_annotations if a["id"] is None]
    if renumbered:
        report.count("annotation_ids_renumbered", len(renumbered))
        next_id = max(gt_ids, default=0) + 1
        for a in renumbered:
            a["id"], next_id = next_id, next_id + 1
    records = [{"image_id": i, "file": img["file_name"], "width": img["width"],
                "height": img["height"], "boxes": boxes[i], "classes": classes[i]}
               for i, img in sorted(accepted.items())]
    gt = {"images": [accepted[i] for i in sorted(accepted)], "annotations": gt_annotations,
          "categories": [categories[c] for c in sorted(categories)]}
    digest = hashlib.sha256(json.dumps(
        {"records": records, "categories": gt["categories"]}, sort_keys=True).encode()).hexdigest()
    return CocoSource(images=images, records=records, class_names=names,
                      category_ids=category_ids, gt=gt, report=report, annotations_digest=digest)


def check_image(images: Location, record: dict[str, Any], *, max_pixels: int
                ) -> tuple[str | None, str]:
    """Read + decode one image: ``(reason or None, sha256 of its bytes)``.

    Checks that the file exists, decodes (see :func:`decode_image`) and, when the record
    states ``width``/``height`` (> 0), that they match the decoded, EXIF-oriented image.
    A JPEG is decoded at its smallest reduced scale: every byte is still read and
    entropy-decoded, so truncation and corruption are found as in a full decode.
    """
    try:
        data = images.read(record["file"])
    except PathEscapeError as err:
        return str(err), ""
    except (FileNotFoundError, IsADirectoryError):
        return "missing file", ""
    except OSError as err:
        return f"unreadable file ({err})", ""
    digest = hashlib.sha256(data).hexdigest()
    try:
        _, (full_h, full_w) = decode_at_size(data, (1, 1), max_pixels=max_pixels)
    except BadImageError as err:
        return err.reason, digest
    w, h = record.get("width", -1), record.get("height", -1)
    if w > 0 and h > 0 and (full_h, full_w) != (h, w):
        return (f"stored size {w}x{h} does not match decoded size "
                f"{full_w}x{full_h}"), digest
    return None, digest
