"""ImageFolder reader: ``<root>/<class_name>/<file>`` → labelled records + skip report.

Class ids follow ``class_names`` when given (fine-tuning keeps the pretrained order),
else the sorted folder names. Files outside a class folder, in an unknown class folder or
without an image extension are skipped with their reason; pixel-level problems are found
by :func:`components.data.coco.check_image`, which works on these records too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from components.data.errors import DataError
from components.data.fs import Location
from components.data.report import SkipReport

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


class ImageFolderError(DataError):
    """The root is missing or holds no class folders."""


@dataclass
class ImageFolderSource:
    """``records``: ``{"image_id", "file", "label", "width": -1, "height": -1}`` per image."""

    images: Location
    records: list[dict[str, Any]]
    class_names: list[str]
    report: SkipReport = field(default_factory=SkipReport)
    annotations_digest: str = ""

    def drop_images(self, image_ids: set[int]) -> None:
        self.records = [r for r in self.records if r["image_id"] not in image_ids]


def read_imagefolder(images_uri: str, *, class_names: list[str] | None = None
                     ) -> ImageFolderSource:
    images = Location.from_uri(images_uri)
    try:
        if not images.is_dir():
            raise ImageFolderError(f"image folder {images_uri} does not exist")
        files = images.list_files()
    except (FileNotFoundError, OSError) as err:
        raise ImageFolderError(f"cannot list image folder {images_uri}: {err}") from None
    folders = sorted({f.split("/", 1)[0] for f in files if "/" in f})
    names = list(class_names) if class_names is not None else folders
    if not names:
        raise ImageFolderError(f"image folder {images_uri} holds no class folders")
    label_of = {n: k for k, n in enumerate(names)}
    report = SkipReport()
    report.count("images_total", len(files))
    records = []
    for file in files:
        parts = file.split("/")
        if len(parts) < 2:
            report.skip_file(file, "not in a class folder")
        elif parts[0] not in label_of:
            report.skip_file(file, "unknown class folder")
        elif not file.lower().endswith(IMAGE_EXTENSIONS):
            report.skip_file(file, "not an image file extension")
        else:
            records.append({"image_id": len(records), "file": file, "label": label_of[parts[0]],
                            "width": -1, "height": -1})
    digest = hashlib.sha256(json.dumps(
        {"records": records, "class_names": names}, sort_keys=True).encode()).hexdigest()
    return ImageFolderSource(images=images, records=records, class_names=names, report=report,
                             annotations_digest=digest)
