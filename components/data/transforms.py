"""Per-image transforms: albumentations for training (bbox-aware), whole-image resize for eval.

Both produce the model input ``[S, S, 3]`` uint8 (``S = image_size``) and, for detection,
boxes in the batch format (normalised cxcywh, ``components.data.boxes``):

- **train**: RandomResizedCrop (scale/aspect) → flips → colour jitter, with
  ``BboxParams(format="coco", min_visibility, min_width/min_height, clip=True)``: boxes follow
  the pixels, boxes cut below ``min_visibility`` of their area are dropped with their labels.
- **eval**: the whole image resized to ``S × S`` (``image_io.resize_whole``, the same
  function serving uses), boxes scaled by the original size: no crop, no pad.
- **letterbox** (``letterbox=True``, detection): ``LongestMaxSize(S)`` keeps the aspect
  ratio (training then flips and colour-jitters, no crop), ``PadIfNeeded`` pads right and
  bottom to the canvas ``C × C`` (``components.data.letterbox``), both bbox-aware; the call
  also returns the valid region ``(h, w)`` and boxes are normalised to it.

Very large images are first shrunk (area filter) so the longer side is at most
``4 × S``: the crop then works on few pixels, and boxes are scaled with them.
:meth:`ImageTransform.min_decode_size` tells the decoder how small a JPEG may be decoded
for this (``image_io.decode_at_size``): ``S × S`` for eval, a longer side of ``4 × S`` for
training; :func:`scale_boxes` moves original-pixel boxes onto such a reduced image.

Randomness: each image gets its own seed ``(seed, epoch, image_id)`` → same seed, same
augmentation wherever the row is processed; ``seed=None`` → fresh randomness every pass.
"""

from __future__ import annotations

import functools
import math

import albumentations as A
import cv2
import numpy as np

from components.core.names import ModelTask
from components.data.boxes import coco_to_batch
from components.data.coco import MIN_BOX_FRACTION
from components.data.config import AugmentConfig, with_boxes
from components.data.image_io import resize_whole
from components.data.letterbox import canvas_side

Task = ModelTask
PRESHRINK_FACTOR = 4


def row_seed(seed: int | None, epoch: int, image_id: int) -> int | None:
    """The augmentation seed of one image in one epoch (``None`` → not reproducible)."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, epoch, image_id]).generate_state(1)[0])


def scale_boxes(boxes_xywh: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]
                ) -> np.ndarray:
    """COCO xywh ``[M, 4]`` in pixels of a ``from_hw`` image → pixels of the same picture
    at ``to_hw`` (h, w); unchanged when the sizes are equal."""
    boxes = np.asarray(boxes_xywh, np.float32).reshape(-1, 4)
    if tuple(from_hw) == tuple(to_hw):
        return boxes
    sx, sy = to_hw[1] / from_hw[1], to_hw[0] / from_hw[0]
    return boxes * np.array([sx, sy, sx, sy], dtype=np.float32)


def preshrink(image: np.ndarray, boxes_xywh: np.ndarray, limit: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Shrink so that the longer side is <= ``limit`` (boxes scaled alike); else unchanged."""
    h, w = image.shape[:2]
    if max(h, w) <= limit:
        return image, boxes_xywh
    scale = limit / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    factors = np.array([nw / w, nh / h, nw / w, nh / h], dtype=np.float32)
    return small, boxes_xywh * factors


def with_extent(boxes_xywh: np.ndarray, classes: np.ndarray, height: int, width: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``[M, 4]`` clipped to the image, those thinner than ``MIN_BOX_FRACTION`` of a
    side dropped with their classes ``[M]``: albumentations refuses a box with no extent in
    normalised float32 coordinates, and that would fail the whole map task."""
    x0 = np.clip(boxes_xywh[:, 0], 0, width)
    y0 = np.clip(boxes_xywh[:, 1], 0, height)
    x1 = np.clip(boxes_xywh[:, 0] + boxes_xywh[:, 2], 0, width)
    y1 = np.clip(boxes_xywh[:, 1] + boxes_xywh[:, 3], 0, height)
    keep = (x1 - x0 >= MIN_BOX_FRACTION * width) & (y1 - y0 >= MIN_BOX_FRACTION * height)
    clipped = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1).astype(np.float32)
    return clipped[keep], classes[keep]


def build_train_augment(aug: AugmentConfig, image_size: int, *, with_boxes: bool) -> A.Compose:
    """The albumentations pipeline for training (output ``image_size²``)."""
    steps = [
        A.RandomResizedCrop(size=(image_size, image_size), scale=tuple(aug.scale),
                            ratio=tuple(aug.ratio), p=1.0),
        A.HorizontalFlip(p=aug.hflip),
        A.VerticalFlip(p=aug.vflip),
        A.RandomRotate90(p=aug.rotate90),
        A.ColorJitter(brightness=aug.brightness, contrast=aug.contrast,
                      saturation=aug.saturation, hue=aug.hue, p=aug.color_p),
    ]
    bbox_params = None
    if with_boxes:
        bbox_params = A.BboxParams(
            format="coco", label_fields=["classes"], min_visibility=aug.min_visibility,
            min_width=aug.min_box_pixels, min_height=aug.min_box_pixels, clip=True)
    return A.Compose(steps, bbox_params=bbox_params, seed=0)


def _bbox_params(aug: AugmentConfig | None) -> A.BboxParams:
    """Boxes as COCO xywh pixels, clipped; ``aug`` sets the drop thresholds (None: keep all)."""
    visibility, pixels = (0.0, 0.0) if aug is None else (aug.min_visibility, aug.min_box_pixels)
    return A.BboxParams(format="coco", label_fields=["classes"], min_visibility=visibility,
                        min_width=pixels, min_height=pixels, clip=True)


def build_letterbox(aug: AugmentConfig | None, target: int, patch_size: int, *, training: bool
                    ) -> tuple[A.Compose, A.Compose]:
    """The letterbox pipelines ``(content, pad)``: ``content`` resizes the longer side to
    ``target`` (area filter down, linear up) and, when ``training``, flips / quarter-turns /
    colour-jitters; ``pad`` pads right and bottom with zeros to the ``C × C`` canvas. Both
    carry COCO xywh boxes (``BboxParams``, clipped)."""
    steps = [A.LongestMaxSize(max_size=target, interpolation=cv2.INTER_LINEAR,
                              area_for_downscale="image", p=1.0)]
    if training and aug is not None:
        steps += [A.HorizontalFlip(p=aug.hflip), A.VerticalFlip(p=aug.vflip),
                  A.RandomRotate90(p=aug.rotate90),
                  A.ColorJitter(brightness=aug.brightness, contrast=aug.contrast,
                                saturation=aug.saturation, hue=aug.hue, p=aug.color_p)]
    side = canvas_side(target, patch_size)
    pad = A.PadIfNeeded(min_height=side, min_width=side, position="top_left",
                        border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0)
    params = _bbox_params(aug if training else None)
    return (A.Compose(steps, bbox_params=params, seed=0),
            A.Compose([pad], bbox_params=_bbox_params(None), seed=0))


class ImageTransform:
    """One image (+ boxes) → model input; build once per task, call per row.

    ``letterbox=True`` (detection): aspect-preserving resize into the ``C × C`` canvas
    (``C = ceil(image_size / patch_size) · patch_size``); see :meth:`letterboxed`."""

    def __init__(self, *, task: Task, training: bool, image_size: int,
                 augment: AugmentConfig | None = None, letterbox: bool = False,
                 patch_size: int = 16):
        self.task = task
        self.image_size = image_size
        self.letterbox = letterbox
        self.augmenting = bool(training and augment is not None and augment.enabled)
        if letterbox:
            if not with_boxes(task):
                raise ValueError("letterbox is for detection")
            self.content, self.pad = build_letterbox(augment if self.augmenting else None,
                                                     image_size, patch_size,
                                                     training=self.augmenting)
            self.augment = None
            return
        self.augment = (build_train_augment(augment, image_size, with_boxes=with_boxes(task))
                        if self.augmenting else None)

    def letterboxed(self, image: np.ndarray, boxes_xywh: np.ndarray | None = None,
                    classes: np.ndarray | None = None, *, seed: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
        """``image`` RGB uint8 ``[H, W, 3]``, boxes ``[M, 4]`` xywh pixels, classes ``[M]`` →
        ``(canvas [C, C, 3] uint8, boxes [M', 4] cxcywh normalised to the valid region,
        classes [M'] int64, (valid_h, valid_w))``."""
        boxes = np.zeros((0, 4), np.float32) if boxes_xywh is None else \
            np.asarray(boxes_xywh, np.float32).reshape(-1, 4)
        labels = np.zeros((0,), np.int64) if classes is None else np.asarray(classes, np.int64)
        boxes, labels = with_extent(boxes, labels, *image.shape[:2])
        if seed is None:
            seed = int(np.random.default_rng().integers(2**32))
        self.content.set_random_seed(seed)
        out = self.content(image=image, bboxes=boxes, classes=labels)
        valid_h, valid_w = out["image"].shape[:2]
        out = self.pad(image=out["image"], bboxes=out["bboxes"], classes=out["classes"])
        boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        labels = np.asarray(out["classes"], np.int64).reshape(-1)
        return (np.ascontiguousarray(out["image"]), coco_to_batch(boxes, valid_w, valid_h),
                labels, (valid_h, valid_w))

    def min_decode_size(self, width: int, height: int) -> tuple[int, int]:
        """The smallest ``(width, height)`` a ``width × height`` image may be decoded at
        without changing what this transform makes of it (to within resampling): eval
        resizes the whole image to ``S × S``; training first shrinks the longer side to
        ``4 × S`` (:func:`preshrink`)."""
        s = self.image_size
        if self.letterbox:  # the longer side must stay >= S; the aspect ratio is kept
            factor = s / max(width, height)
            return (width, height) if factor >= 1 else \
                (math.ceil(width * factor), math.ceil(height * factor))
        if not self.augmenting:
            return s, s
        factor = PRESHRINK_FACTOR * s / max(width, height)
        if factor >= 1:
            return width, height
        return math.ceil(width * factor), math.ceil(height * factor)

    def __call__(self, image: np.ndarray, boxes_xywh: np.ndarray | None = None,
                 classes: np.ndarray | None = None, *, seed: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``image`` RGB uint8 ``[H, W, 3]``, ``boxes_xywh`` ``[M, 4]`` original pixels,
        ``classes`` ``[M]`` → ``(image [S, S, 3] uint8, boxes [M', 4] normalised cxcywh
        float32, classes [M'] int64)`` (``M' <= M`` after augmentation drops boxes)."""
        s = self.image_size
        if self.letterbox:
            return self.letterboxed(image, boxes_xywh, classes, seed=seed)[:3]
        boxes = np.zeros((0, 4), np.float32) if boxes_xywh is None else \
            np.asarray(boxes_xywh, np.float32).reshape(-1, 4)
        labels = np.zeros((0,), np.int64) if classes is None else np.asarray(classes, np.int64)
        if not self.augmenting:
            h, w = image.shape[:2]
            return resize_whole(image, s), coco_to_batch(boxes, w, h), labels
        image, boxes = preshrink(image, boxes, PRESHRINK_FACTOR * s)
        boxes, labels = with_extent(boxes, labels, *image.shape[:2])
        if seed is None:
            seed = int(np.random.default_rng().integers(2**32))
        self.augment.set_random_seed(seed)
        if with_boxes(self.task):
            out = self.augment(image=image, bboxes=boxes, classes=labels)
            boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
            labels = np.asarray(out["classes"], np.int64).reshape(-1)
        else:
            out = self.augment(image=image)
        return np.ascontiguousarray(out["image"]), coco_to_batch(boxes, s, s), labels


@functools.lru_cache(maxsize=8)
def _eval_letterbox(image_size: int, patch_size: int) -> ImageTransform:
    return ImageTransform(task="detection", training=False, image_size=image_size,
                          letterbox=True, patch_size=patch_size)


def letterbox_preprocess(image_rgb: np.ndarray, *, image_size: int, patch_size: int
                         ) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """The letterboxed eval transform (the val dataset's, for serving and prediction): RGB
    uint8 ``[H, W, 3]`` → ``(patches [N, P*P*3] uint8, (gh, gw), (valid_h, valid_w))`` with
    ``N = (C/P)²``, ``C = canvas_side(image_size, P)``. Predicted boxes, normalised to the
    valid region, map back to the ``H × W`` image by a plain scale."""
    from components.data.patchify import patchify

    canvas, _, _, valid = _eval_letterbox(image_size, patch_size).letterboxed(image_rgb)
    patches, grid = patchify(canvas, patch_size)
    return patches, grid, valid
