"""``DataConfig``: where the data is, what the model sees, how it is augmented and scheduled.

Paths are local paths or URIs that ``pyarrow.fs.FileSystem.from_uri`` understands
(``file://``, ``s3://``, ``gs://``). Either give ``root`` (the synthetic dataset's layout)
or explicit per-split paths in ``splits``; an explicit split entry wins over ``root``.

``root`` layout: COCO ``annotations/instances_<split>.json`` + ``images/<split>/``;
ImageFolder ``imagefolder/<split>/<class>/*`` if that folder exists, else
``<split>/<class>/*``; Pascal VOC: ``root`` is the VOC folder (``Annotations/``,
``JPEGImages/``) and the split lists its ids in ``ImageSets/Main/<split>.txt``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.core.config import StrictModel
from components.core.names import ModelTask

BLOCK_TARGET_BYTES = 8 * 1024 * 1024  # uint8 patches per block: 256 rows at 96 px, 55 at 224
MAX_ROWS_PER_BLOCK = 256


Format = Literal["coco", "imagefolder", "voc"]
# What each format gives: the batch contract its rows follow.
FORMAT_TASK: dict[str, ModelTask] = {
    "coco": "detection", "voc": "detection", "imagefolder": "classification"}
# Whether rows of a batch contract carry boxes (detection) or one label per image.
WITH_BOXES: dict[str, bool] = {"detection": True, "classification": False}


def with_boxes(kind: str) -> bool:
    """Whether the batch contract ``kind`` (a model task) carries boxes; ``ValueError`` for
    an unknown one."""
    try:
        return WITH_BOXES[kind]
    except KeyError:
        raise ValueError(f"unknown task {kind!r}") from None


class SplitPaths(StrictModel):
    """One split's files: COCO needs ``annotations`` + ``images``; ImageFolder ``images``;
    VOC ``images`` (the VOC folder, or a flat folder of XML + images) and optionally
    ``image_set`` (the split's id list; none: every XML of the folder)."""

    annotations: str | None = None  # COCO instances JSON
    images: str  # COCO image root, the ImageFolder split folder (class subfolders), VOC folder
    image_set: str | None = None  # VOC: ids of the split, one per line (ImageSets/Main/x.txt)


class AugmentConfig(StrictModel):
    """Training augmentation (albumentations); eval never augments."""

    enabled: bool = True
    hflip: float = Field(0.5, ge=0, le=1)  # probability
    vflip: float = Field(0.0, ge=0, le=1)
    rotate90: float = Field(0.0, ge=0, le=1)  # probability of a random quarter turn (k = 0..3)
    scale: tuple[float, float] = (0.6, 1.0)  # RandomResizedCrop area fraction
    ratio: tuple[float, float] = (0.75, 1.3333)  # RandomResizedCrop aspect range
    brightness: float = Field(0.3, ge=0)
    contrast: float = Field(0.3, ge=0)
    saturation: float = Field(0.3, ge=0)
    hue: float = Field(0.05, ge=0, le=0.5)
    color_p: float = Field(0.8, ge=0, le=1)  # probability of colour jitter
    min_visibility: float = Field(0.3, ge=0, le=1)  # boxes keeping less of their area are dropped
    min_box_pixels: float = Field(2.0, ge=0)  # ... and boxes narrower than this (model pixels)

    def without_flips(self) -> "AugmentConfig":
        """This augmentation less its flips and quarter turns (``data.cache`` applies those
        to batches)."""
        return self.model_copy(update={"hflip": 0.0, "vflip": 0.0, "rotate90": 0.0})

    def batch_unready(self) -> list[str]:
        """What keeps this augmentation from running on batches (``data.cache``): only the
        flips and quarter turns can; random crops and colour jitter need the decoded image."""
        if not self.enabled:
            return []
        wrong = []
        if tuple(self.scale) != (1.0, 1.0):
            wrong.append(f"augment.scale {list(self.scale)} (needs [1, 1])")
        if tuple(self.ratio) != (1.0, 1.0):
            wrong.append(f"augment.ratio {list(self.ratio)} (needs [1, 1])")
        if self.color_p > 0:
            wrong.append(f"augment.color_p {self.color_p} (needs 0)")
        return wrong

    @model_validator(mode="after")
    def _ranges(self) -> "AugmentConfig":
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError("augment.scale must satisfy 0 < min <= max <= 1")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError("augment.ratio must satisfy 0 < min <= max")
        return self


class DataConfig(StrictModel):
    """Everything the data stage needs; validated before any Ray task starts."""

    format: Format = "coco"
    root: str | None = None
    splits: dict[str, SplitPaths] = Field(default_factory=dict)
    class_names: list[str] | None = None  # fix the label order (fine-tuning); default: sorted
    image_size: int = Field(96, ge=16)  # square model input (with letterbox: the canvas side)
    # Detection: keep each image's aspect ratio (longer side to image_size, zero padding at
    # the right and bottom; rows carry valid_hw, see components/data/letterbox.py) instead
    # of stretching the whole image to image_size x image_size.
    letterbox: bool = False
    # Letterboxed training: each batch is re-letterboxed to a target drawn from this list
    # (pixels, any size >= patch_size; canvas ceil(target / patch) * patch). None: off.
    multiscale: list[int] | None = None
    patch_size: int = Field(16, ge=1)
    max_boxes: int = Field(20, ge=1)  # per image after augmentation; extra boxes are dropped
    max_pixels: int = Field(40_000_000, ge=1)  # decompression-bomb guard, checked pre-decode
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    seed: int | None = 0  # None: fresh augmentation every pass (not reproducible)
    augment_per_pass: bool = True  # pass k over a training dataset uses epoch k's augmentation
    shuffle: bool = True  # shuffle the row order of training splits (seeded)
    preserve_order: bool = True  # deliver rows in the (seeded) order: reproducible batches
    validate_images: bool = True  # decode every image once up front (exact skip report)
    # Decode once: both splits' rows are made once, without flips and turns, and kept in
    # Ray's object store (Dataset.materialize); each rank reads its share of the training
    # rows from there (components/data/cached.py), draws a new row order every epoch and
    # flips and turns each batch itself (components/data/batch_augment.py). After the first
    # pass no data task competes with training for the CPUs. Flips and quarter turns only;
    # not with letterbox; the rows must fit the object store (Ray spills the rest to disk).
    cache: bool = False
    # Large JPEGs decode at 1/2, 1/4 or 1/8 scale, never below the size the transforms use.
    reduced_decode: bool = True
    # Rows per Ray Data block / map task. None: as many as fit BLOCK_TARGET_BYTES of patches,
    # at most MAX_ROWS_PER_BLOCK (each task costs a few ms of scheduling whatever its size:
    # 16-row blocks spent ~3x the decode time on it, docs/data.md).
    rows_per_block: int | None = Field(None, ge=1)
    num_cpus_per_task: float = Field(1.0, gt=0)  # Ray CPUs per decode/transform task
    concurrency: int | None = Field(None, ge=1)  # max parallel map tasks (None: Ray decides)
    node_labels: dict[str, str] | None = None  # label selector for the CPU nodes doing data work

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.letterbox and not with_boxes(FORMAT_TASK[self.format]):
            raise ValueError("data.letterbox is for detection formats (coco, voc)")
        if self.multiscale is not None:
            if not self.letterbox:
                raise ValueError("data.multiscale needs data.letterbox: true")
            if not self.multiscale or min(self.multiscale) < self.patch_size:
                raise ValueError(f"data.multiscale must list sizes >= patch_size {self.patch_size}")
        if self.cache:
            if self.letterbox:
                raise ValueError("data.cache does not combine with data.letterbox (the batch "
                                 "augmentation flips square canvases only)")
            wrong = self.augment.batch_unready()
            if wrong:
                raise ValueError("data.cache augments batches in the worker, which can flip and "
                                 "turn but not crop or colour: " + "; ".join(wrong))
        if self.root is None and not self.splits:
            raise ValueError("give data.root or data.splits")
        if self.format == "coco":
            for name, paths in self.splits.items():
                if paths.annotations is None:
                    raise ValueError(f"splits.{name}.annotations is required for format 'coco'")
        for name, paths in self.splits.items():
            if paths.image_set is not None and self.format != "voc":
                raise ValueError(f"splits.{name}.image_set is for format 'voc'")
            if paths.annotations is not None and self.format == "voc":
                raise ValueError(f"splits.{name}.annotations is for format 'coco'; a VOC split "
                                 "is splits.<name>.images (the VOC folder) + image_set")
        return self

    def block_rows(self) -> int:
        """Rows per block: ``rows_per_block``, or sized by the patch bytes of one row."""
        if self.rows_per_block is not None:
            return self.rows_per_block
        row_bytes = self.image_size * self.image_size * 3
        return int(min(MAX_ROWS_PER_BLOCK, max(1, BLOCK_TARGET_BYTES // row_bytes)))

    def split_paths(self, split: str) -> SplitPaths:
        """The annotation/image locations of ``split`` (explicit entry, else from ``root``)."""
        from components.data.fs import join_uri, uri_is_dir

        if split in self.splits:
            return self.splits[split]
        if self.root is None:
            raise ValueError(f"split {split!r} is not in data.splits and data.root is not set")
        if self.format == "coco":
            return SplitPaths(
                annotations=join_uri(self.root, "annotations", f"instances_{split}.json"),
                images=join_uri(self.root, "images", split),
            )
        if self.format == "voc":
            return SplitPaths(images=self.root,
                              image_set=join_uri(self.root, "ImageSets", "Main", f"{split}.txt"))
        nested = join_uri(self.root, "imagefolder", split)
        return SplitPaths(images=nested if uri_is_dir(nested) else join_uri(self.root, split))
