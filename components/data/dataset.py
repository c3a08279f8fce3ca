"""``build_dataset``: a split → a streaming Ray Dataset of patch-ready rows (batch contract).

Pipeline (one Ray Data map stage, CPU-only tasks)::

    records (driver, metadata only) → read bytes (pyarrow fs) → decode_at_size → check size
      → ImageTransform (train: albumentations, bbox-aware; eval: whole-image resize)
      → patchify → uint8 patches (+ padded boxes / classes / mask for detection)

Sources: COCO and Pascal VOC (detection), ImageFolder (classification); ``data.format``
picks the reader (``READERS``). Large JPEGs are decoded at the reduced size the transform
asks for (``ImageTransform.min_decode_size``, ``data.reduced_decode``), boxes scaled with
them; ``orig_size`` stays the full image's size.

Only metadata lives on the driver; image bytes are read inside the map tasks and leave
them as ``image_size²`` uint8 patches, so the dataset streams and never sits in memory
(unless ``data.cache`` keeps the rows, made once without flips and turns, in the object
store for the training workers to reorder, flip and turn batch by batch each epoch).
The tasks ask for ``num_cpus_per_task`` CPUs and no GPU (plus an optional node label
selector), so Ray can place them on CPU-only nodes while GPU nodes train. This module
imports albumentations (and with it torch, ~2.5 s) only when a task first transforms an
image, so the workers of the validation pass start in a fraction of a second.

Rows (numpy, one per image):
  ``patches`` uint8 ``[N, P*P*3]``, ``grid`` int64 ``[2]``;
  classification: ``label`` int64;
  detection: ``boxes`` float32 ``[max_boxes, 4]`` normalised cxcywh, ``classes`` int64
  ``[max_boxes]``, ``box_mask`` bool ``[max_boxes]`` (True = real box), ``image_id`` int64,
  ``orig_size`` int64 ``[2]`` (h, w); with ``data.letterbox`` also ``valid_hw`` int64 ``[2]``
  (the image's region of the padded canvas, ``components.data.letterbox``; boxes are then
  normalised to it).
``components.data.loader.iter_batches`` turns them into torch batches.

With ``validate_images`` (default) every image is decoded once up front in a parallel Ray
pass, so the skip report is exact before training starts and the fingerprint covers the
bytes; images that still fail while streaming are dropped and logged, never fatal.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.core.names import ModelTask
from components.data.coco import CocoSource, check_image, read_coco
from components.data.config import FORMAT_TASK, AugmentConfig, DataConfig, SplitPaths, with_boxes
from components.data.errors import DataError
from components.data.fs import Location
from components.data.image_io import BadImageError, decode_at_size
from components.data.imagefolder import ImageFolderSource, read_imagefolder
from components.data.patchify import patchify
from components.data.report import SkipReport
from components.data.voc import read_voc

log = logging.getLogger(__name__)
Task = ModelTask


def pad_boxes(boxes: np.ndarray, classes: np.ndarray, max_boxes: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[K, 4]`` boxes + ``[K]`` classes → fixed-shape ``[M, 4]``, ``[M]``, mask ``[M]`` (M = max_boxes)."""
    k = min(len(boxes), max_boxes)
    padded = np.zeros((max_boxes, 4), np.float32)
    padded[:k] = boxes[:k]
    labels = np.zeros((max_boxes,), np.int64)
    labels[:k] = classes[:k]
    mask = np.zeros((max_boxes,), bool)
    mask[:k] = True
    return padded, labels, mask


def task_of(cfg: DataConfig) -> Task:
    return FORMAT_TASK[cfg.format]


# ----------------------------------------------------------------- map-task side
@dataclass(frozen=True)
class RowSpec:
    """Everything a map task needs (picklable, small): where files are and what to make."""

    images: Location
    task: Task
    training: bool
    image_size: int
    patch_size: int
    max_boxes: int
    max_pixels: int
    augment: AugmentConfig
    seed: int | None
    epoch: int
    passes: Any = None  # PassCounter actor handle: training datasets vary per pass
    reduced_decode: bool = True  # JPEGs decode at transform.min_decode_size
    letterbox: bool = False  # detection: aspect kept, padded canvas, rows carry valid_hw


@functools.lru_cache(maxsize=8)
def _transform(task: Task, training: bool, image_size: int, augment_json: str,
               letterbox: bool = False, patch_size: int = 16):
    from components.data.transforms import ImageTransform  # albumentations (and torch): ~2.5 s

    augment = AugmentConfig.model_validate_json(augment_json)
    return ImageTransform(task=task, training=training, image_size=image_size, augment=augment,
                          letterbox=letterbox, patch_size=patch_size)


def _empty_rows(spec: RowSpec) -> dict[str, np.ndarray]:
    from components.data.letterbox import canvas_side

    n = (canvas_side(spec.image_size, spec.patch_size) // spec.patch_size) ** 2
    out = {"patches": np.zeros((0, n, spec.patch_size ** 2 * 3), np.uint8),
           "grid": np.zeros((0, 2), np.int64)}
    if not with_boxes(spec.task):
        out["label"] = np.zeros((0,), np.int64)
    else:
        m = spec.max_boxes
        out |= {"boxes": np.zeros((0, m, 4), np.float32), "classes": np.zeros((0, m), np.int64),
                "box_mask": np.zeros((0, m), bool), "image_id": np.zeros((0,), np.int64),
                "orig_size": np.zeros((0, 2), np.int64)}
        if spec.letterbox:
            out["valid_hw"] = np.zeros((0, 2), np.int64)
    return out


def make_rows(batch: dict[str, np.ndarray], spec: RowSpec) -> dict[str, np.ndarray]:
    """Map-task body: a batch of records → a batch of model-ready rows (bad images dropped)."""
    import cv2

    from components.data.transforms import row_seed, scale_boxes

    cv2.setNumThreads(1)  # one CPU per task: OpenCV's own threads would only contend
    transform = _transform(spec.task, spec.training, spec.image_size,
                           spec.augment.model_dump_json(), spec.letterbox, spec.patch_size)
    rows: dict[str, list] = {k: [] for k in _empty_rows(spec)}
    epoch = spec.epoch
    if spec.passes is not None and len(batch["image_id"]):
        import ray

        epoch += ray.get(spec.passes.next.remote(int(batch["image_id"][0])))
    for i in range(len(batch["image_id"])):
        image_id, file = int(batch["image_id"][i]), str(batch["file"][i])
        try:
            rgb, (h, w) = decode_at_size(
                spec.images.read(file), transform.min_decode_size if spec.reduced_decode else None,
                max_pixels=spec.max_pixels)
        except (BadImageError, OSError, ValueError) as err:
            log.warning("skipping %s while streaming: %s", file, err)
            continue
        seed = row_seed(spec.seed, epoch, image_id)
        if not with_boxes(spec.task):
            image, _, _ = transform(rgb, seed=seed)
            rows["label"].append(int(batch["label"][i]))
        else:
            boxes_in = scale_boxes(batch["boxes"][i], (h, w), rgb.shape[:2])
            classes_in = np.asarray(batch["classes"][i], np.int64).reshape(-1)
            if spec.letterbox:
                image, boxes, classes, valid = transform.letterboxed(
                    rgb, boxes_in, classes_in, seed=seed)
                rows["valid_hw"].append(valid)
            else:
                image, boxes, classes = transform(rgb, boxes_in, classes_in, seed=seed)
            m = spec.max_boxes
            if len(boxes) > m:
                log.warning("%s: %d boxes, keeping the first %d (max_boxes)", file, len(boxes), m)
            padded, labels, mask = pad_boxes(boxes, classes, m)
            rows["boxes"].append(padded)
            rows["classes"].append(labels)
            rows["box_mask"].append(mask)
            rows["image_id"].append(image_id)
            rows["orig_size"].append((h, w))
        patches, grid = patchify(image, spec.patch_size)
        rows["patches"].append(patches)
        rows["grid"].append(grid)
    if not rows["patches"]:
        return _empty_rows(spec)
    empty = _empty_rows(spec)
    return {k: np.asarray(v, dtype=empty[k].dtype) for k, v in rows.items()}


def check_rows(batch: dict[str, np.ndarray], images: Location, max_pixels: int
               ) -> dict[str, np.ndarray]:
    """Validation-pass body: ``{"image_id", "reason" ("" = ok), "digest"}`` per record."""
    reasons, digests = [], []
    for i in range(len(batch["image_id"])):
        record = {"file": str(batch["file"][i]), "width": int(batch["width"][i]),
                  "height": int(batch["height"][i])}
        reason, digest = check_image(images, record, max_pixels=max_pixels)
        reasons.append(reason or "")
        digests.append(digest)
    return {"image_id": np.asarray(batch["image_id"], np.int64),
            "reason": np.asarray(reasons, dtype=object), "digest": np.asarray(digests, dtype=object)}


# ----------------------------------------------------------------- driver side
@dataclass
class DataBundle:
    """A split, ready for training or evaluation.

    ``dataset`` streams rows in the batch contract; ``class_names[k]`` names label/class
    ``k``; ``fingerprint`` identifies the accepted data (annotations + image bytes, not the
    location); ``report`` lists every skipped/repaired record. Detection bundles also carry
    ``category_ids[k]`` (the COCO id of class ``k``) and ``coco_gt`` (accepted ground truth,
    original pixels) / :meth:`write_coco_gt` / :attr:`coco_gt_path` for pycocotools.
    """

    dataset: Any  # ray.data.Dataset
    class_names: list[str]
    fingerprint: str
    report: SkipReport
    num_rows: int
    task: Task
    split: str
    records: list[dict[str, Any]] = field(repr=False, default_factory=list)
    spec: RowSpec | None = field(repr=False, default=None)
    config: DataConfig | None = field(repr=False, default=None)
    category_ids: list[int] | None = None
    coco_gt: dict[str, Any] | None = field(repr=False, default=None)
    _gt_path: Path | None = field(repr=False, default=None)

    def write_coco_gt(self, path: str | Path) -> Path:
        if self.coco_gt is None:
            raise ValueError("only detection (COCO) bundles have ground truth")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.coco_gt, sort_keys=True))
        return path

    @property
    def coco_gt_path(self) -> Path:
        """The accepted ground truth as a COCO JSON file (written once, to a temp dir)."""
        if self._gt_path is None:
            tmp = Path(tempfile.mkdtemp(prefix="vitpipe-gt-"))
            weakref.finalize(self, shutil.rmtree, tmp, True)  # removed with the bundle
            self._gt_path = self.write_coco_gt(tmp / f"instances_{self.split}.json")
        return self._gt_path

    def for_epoch(self, epoch: int):
        """The same split with epoch ``epoch``'s row order and augmentation (no re-validation).

        Iterating ``dataset`` again already gives new augmentation per pass (see
        ``components.data.passes``); ``for_epoch`` also reshuffles the row order. Cached
        rows (``data.cache``) are the same rows every epoch: the training loop reorders and
        augments their batches."""
        if self.config is not None and self.config.cache:
            return self.dataset
        return _make_dataset(self.records, self.config, self.spec.training, epoch, self.spec)


READERS = {  # data.format → reader of one split's paths
    "coco": lambda p, names: read_coco(p.annotations, p.images, class_names=names),
    "voc": lambda p, names: read_voc(p.images, image_set=p.image_set, class_names=names),
    "imagefolder": lambda p, names: read_imagefolder(p.images, class_names=names),
}


def _read_source(cfg: DataConfig, split: str) -> CocoSource | ImageFolderSource:
    paths: SplitPaths = cfg.split_paths(split)
    return READERS[cfg.format](paths, cfg.class_names)


def _num_blocks(n: int, cfg: DataConfig) -> int:
    return max(1, math.ceil(n / cfg.block_rows()))


def _remote_args(cfg: DataConfig) -> dict[str, Any]:
    args: dict[str, Any] = {"num_cpus": cfg.num_cpus_per_task, "num_gpus": 0}
    if cfg.concurrency is not None:
        args["concurrency"] = cfg.concurrency
    if cfg.node_labels:
        args["label_selector"] = dict(cfg.node_labels)
    return args


def _validate(source, cfg: DataConfig) -> dict[int, str]:
    """Decode every image once (parallel Ray pass); returns ``{image_id: digest}`` of the good.

    Failing images are dropped from ``source`` and added to its report.
    """
    import ray

    records = [{k: r[k] for k in ("image_id", "file", "width", "height")} for r in source.records]
    if not records:
        return {}
    ds = ray.data.from_items(records, override_num_blocks=_num_blocks(len(records), cfg))
    results = ds.map_batches(check_rows, batch_size=cfg.block_rows(),
                             fn_kwargs={"images": source.images, "max_pixels": cfg.max_pixels},
                             **_remote_args(cfg)).take_all()
    file_of = {r["image_id"]: r["file"] for r in records}
    bad, digests = set(), {}
    for row in sorted(results, key=lambda r: int(r["image_id"])):
        image_id = int(row["image_id"])
        if row["reason"]:
            bad.add(image_id)
            source.report.skip_file(file_of[image_id], str(row["reason"]))
        else:
            digests[image_id] = str(row["digest"])
    source.drop_images(bad)
    return digests


def _fingerprint(cfg: DataConfig, source, digests: dict[int, str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": cfg.format, "annotations": source.annotations_digest,
                         "validated": bool(digests)}).encode())
    for r in source.records:
        h.update(f"{r['file']}:{digests.get(r['image_id'], '')}\n".encode())
    return h.hexdigest()[:16]


def _ordered(records: list[dict], cfg: DataConfig, training: bool, epoch: int) -> list[dict]:
    if not (training and cfg.shuffle):
        return records
    rng = np.random.default_rng(None if cfg.seed is None else [cfg.seed, epoch])
    return [records[i] for i in rng.permutation(len(records))]


def _make_dataset(records: list[dict], cfg: DataConfig, training: bool, epoch: int,
                  spec: RowSpec):
    import ray

    from dataclasses import replace

    passes = None
    if (spec.training and cfg.augment.enabled and cfg.augment_per_pass and cfg.seed is not None
            and not cfg.cache):
        from components.data.passes import PassCounter

        passes = PassCounter.remote()
    spec = replace(spec, epoch=epoch, passes=passes)
    ordered = _ordered(records, cfg, training, epoch)
    # Detection rows carry their targets; ragged lists travel as flat lists (boxes: 4*M).
    ds = ray.data.from_items(ordered, override_num_blocks=_num_blocks(len(ordered), cfg))
    ds = ds.map_batches(make_rows, batch_size=cfg.block_rows(), fn_kwargs={"spec": spec},
                        **_remote_args(cfg))
    # Blocks finish out of order; a seeded run must also see the same row order.
    ds.context.execution_options.preserve_order = cfg.preserve_order
    # Ray Data reserves half the cluster's CPUs for the outputs of later operators; this plan
    # has one map stage and its consumer is the trainer, so the reservation only idles CPUs
    # (on 2 CPUs it ran one task at a time). The per-dataset context travels with the dataset
    # into Ray Train's split coordinator.
    ds.context.op_resource_reservation_enabled = False
    return ds


def _materialize(dataset, what: str):
    """Run ``dataset`` once and keep its rows in the object store (``data.cache``)."""
    import time

    started = time.perf_counter()
    dataset = dataset.materialize()
    log.info("%s: %d rows cached in the object store (%.0f MB) in %.1f s", what,
             dataset.count(), dataset.size_bytes() / 1e6, time.perf_counter() - started)
    return dataset


def build_dataset(cfg: DataConfig, split: str, *, training: bool, epoch: int = 0) -> DataBundle:
    """Read, validate and wire ``split`` into a streaming Ray Dataset (see module docs).

    ``training`` turns on augmentation and (seeded) shuffling of the row order; ``epoch``
    selects the epoch's order and augmentation (also :meth:`DataBundle.for_epoch`).
    Raises :class:`DataError` (``CocoFormatError`` / ``VocFormatError`` /
    ``ImageFolderError``) for unusable inputs, a split with no usable image among them.
    """
    source = _read_source(cfg, split)
    digests = _validate(source, cfg) if cfg.validate_images else {}
    report = source.report
    if not source.records:
        reasons = dict(report.reasons())
        raise DataError(f"the {split} split has no usable image" + (
            f": all {len(report.skipped)} records were skipped ({reasons})" if reasons else ""))
    report.counts["images_accepted"] = len(source.records)
    task = task_of(cfg)
    if with_boxes(task):
        report.counts["annotations_accepted"] = sum(len(r["classes"]) for r in source.records)
    # Cached training rows (data.cache) go through the training transform without its flips
    # and turns (what is left of it is deterministic); the worker flips and turns batches.
    augment = cfg.augment.without_flips() if training and cfg.cache else cfg.augment
    spec = RowSpec(images=source.images, task=task, training=training,
                   image_size=cfg.image_size, patch_size=cfg.patch_size,
                   max_boxes=cfg.max_boxes, max_pixels=cfg.max_pixels,
                   augment=augment, seed=cfg.seed, epoch=epoch,
                   reduced_decode=cfg.reduced_decode,
                   letterbox=cfg.letterbox and with_boxes(task))
    dataset = _make_dataset(source.records, cfg, training, epoch, spec)
    if cfg.cache:
        dataset = _materialize(dataset, f"{cfg.format}/{split}")
    if report.skipped:
        log.warning("%s/%s: skipped %d records (%s)", cfg.format, split, len(report.skipped),
                    dict(report.reasons()))
    return DataBundle(
        dataset=dataset, class_names=list(source.class_names),
        fingerprint=_fingerprint(cfg, source, digests), report=report,
        num_rows=len(source.records), task=task, split=split, records=source.records,
        spec=spec, config=cfg,
        category_ids=getattr(source, "category_ids", None),
        coco_gt=getattr(source, "gt", None),
    )
