"""The images to predict: a plain folder / object-store prefix, or a labelled split.

A :class:`Source` is what the pipeline needs on the driver: where the files are (a
picklable :class:`~components.data.fs.Location`), one record per image (``image_id``,
``file`` relative to the root), a fingerprint naming the data, the listing's skip report,
and for a labelled split the data layer's :class:`~components.data.dataset.DataBundle`
(labels, COCO ground truth). Image bytes are never read here: decoding happens in the
pipeline's map tasks, where an unreadable image is skipped and counted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from components.core.checkpoint import CheckpointMeta
from components.core.config import ConfigError
from components.data.config import DataConfig
from components.data.errors import DataError
from components.data.fs import Location, join_uri
from components.data.imagefolder import IMAGE_EXTENSIONS
from components.data.report import SkipReport


@dataclass
class Source:
    """Records ``{"image_id": int, "file": str}`` under ``images``; ``root_uri`` as given."""

    images: Location
    root_uri: str
    records: list[dict[str, Any]]
    fingerprint: str
    report: SkipReport
    bundle: Any = None  # DataBundle of a labelled split, else None

    def uri_of(self, file: str) -> str:
        return join_uri(self.root_uri, file)


def folder_source(uri: str) -> Source:
    """Every image file under ``uri`` (recursive); other files are skipped with their reason.

    Fingerprint: sha256 over the sorted ``(relative path, size)`` of the accepted files.
    """
    import pyarrow.fs as pafs

    try:
        images = Location.from_uri(uri)
        if not images.is_dir():
            raise DataError(f"input folder {uri} does not exist")
        infos = images.fs.get_file_info(pafs.FileSelector(images.root, recursive=True))
    except (FileNotFoundError, OSError) as err:
        raise DataError(f"cannot list input folder {uri}: {err}") from None
    prefix = images.root.rstrip("/") + "/"
    files = sorted((i.path[len(prefix):], i.size) for i in infos
                   if i.type == pafs.FileType.File and i.path.startswith(prefix))
    report = SkipReport()
    report.count("images_total", len(files))
    digest = hashlib.sha256()
    records = []
    for name, size in files:
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            report.skip_file(name, "not an image file extension")
            continue
        records.append({"image_id": len(records), "file": name})
        digest.update(f"{name}:{size}\n".encode())
    if not records:
        raise DataError(f"input folder {uri} holds no image files"
                        + (f" ({len(files)} other files)" if files else ""))
    return Source(images=images, root_uri=uri, records=records,
                  fingerprint=digest.hexdigest()[:16], report=report)


def split_source(data: DataConfig, split: str, meta: CheckpointMeta) -> Source:
    """A labelled split read by the data layer, in the model's input size and class order.

    The data layer dispatches on ``data.format``; images are not validated up front here
    (the pipeline decodes each image once and skips the bad ones), so the fingerprint is
    the data layer's over the annotations and the file list.
    """
    from components.data.dataset import build_dataset, task_of

    if task_of(data) != meta.task:
        raise ConfigError(f"the model is a {meta.task} model but input.data.format "
                          f"{data.format!r} holds {task_of(data)} data")
    cfg = data.model_copy(update={
        "image_size": meta.image_size, "patch_size": meta.patch_size,
        "class_names": list(meta.class_names), "validate_images": False})
    bundle = build_dataset(cfg, split, training=False)
    if list(bundle.class_names) != list(meta.class_names):
        raise DataError(f"the {split} split's classes {bundle.class_names} differ from the "
                        f"model's {meta.class_names}")
    records = [{"image_id": int(r["image_id"]), "file": str(r["file"])} for r in bundle.records]
    images = bundle.spec.images
    return Source(images=images, root_uri=data.split_paths(split).images, records=records,
                  fingerprint=bundle.fingerprint, report=bundle.report, bundle=bundle)
