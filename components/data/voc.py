"""Pascal VOC reader: XML annotations → the COCO reader's accepted records, ground truth and
skip report.

Two layouts, told apart by the folder itself:

- **standard**: ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg`` and split lists
  ``ImageSets/Main/<split>.txt`` (one id per line; a second column, as in VOC's per-class
  lists, is ignored);
- **flat**: one folder holding the XML files and their images side by side (every ``*.xml``
  directly in it; images that no XML names are skipped as ``no annotation file``).

Each XML becomes a COCO image (``<size>``; read from the image header when missing) and its
``<object>`` elements COCO annotations: ``bndbox`` ``xmin, ymin, xmax, ymax`` → xywh in the
same pixel coordinates, ``difficult=1`` → ``iscrowd=1`` (kept in the evaluator's ground
truth, never a training target: pycocotools then neither credits nor penalises detections
of it). The result goes through the COCO reader's own checks
(:func:`components.data.coco.coco_source`), so the two formats skip, clip and count alike.
The image of ``<id>.xml`` is ``<id>`` with an image extension (``.jpg`` first), else the
XML's ``<filename>``.

Class names: ``class_names`` fixes the order (objects of other names are skipped as
``unknown class``); without it, the sorted names found in every XML of the folder (all
splits, so that train and val agree). Category ids are ``1..K`` in class order.

Skip report: a file problem names the XML (or image) ``file``; an object problem has
``id`` ``"<xml file>#<k>"`` (``k``: the object's 0-based position in its file).

XML is parsed with ``defusedxml`` and no DTD is allowed: external entities and entity
expansion ("billion laughs") are refused before anything is expanded, and the file is
skipped as ``XML with a DTD or entities is refused``.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree as SafeET

from components.data.coco import CocoSource, coco_source
from components.data.errors import DataError
from components.data.fs import Location, PathEscapeError, join_uri, read_uri
from components.data.image_io import BadImageError, image_size_of
from components.data.imagefolder import IMAGE_EXTENSIONS
from components.data.report import SkipReport

ANNOTATIONS_DIR = "Annotations"
IMAGES_DIR = "JPEGImages"
COORDINATES = ("xmin", "ymin", "xmax", "ymax")
READ_THREADS = 16  # parallel XML reads (object stores answer each file in ~10 ms)


class VocFormatError(DataError):
    """The VOC folder or image-set list is missing or unusable as a whole."""


class VocXmlError(ValueError):
    """One XML file that cannot be used; ``reason`` is the phrase counted in skip reports."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class VocObject:
    """One usable ``<object>``: ``box`` = (xmin, ymin, xmax, ymax) as written (pixels)."""

    index: int
    name: str
    box: tuple[float, float, float, float]
    difficult: bool


@dataclass
class VocAnnotation:
    """One parsed XML: the image it describes, its usable objects and the unusable ones
    (``problems``: ``(object index, reason)``)."""

    filename: str | None
    width: int | None
    height: int | None
    objects: list[VocObject] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)


def _text(element: Element | None, tag: str) -> str | None:
    child = element.find(tag) if element is not None else None
    if child is None or child.text is None or not child.text.strip():
        return None
    return child.text.strip()


def _positive_int(text: str | None) -> int | None:
    try:
        value = float(text)  # "640" and "640.0" both occur in the wild
    except (TypeError, ValueError):
        return None
    return int(value) if math.isfinite(value) and value == int(value) and value > 0 else None


def _parse_object(index: int, obj: Element) -> VocObject | str:
    """An ``<object>`` → :class:`VocObject`, or the reason it is unusable."""
    name = _text(obj, "name")
    if name is None:
        return "object without a name"
    bndbox = obj.find("bndbox")
    if bndbox is None:
        return "malformed box (no bndbox)"
    values = []
    for tag in COORDINATES:
        text = _text(bndbox, tag)
        if text is None:
            return f"malformed box (no {tag})"
        try:
            values.append(float(text))
        except ValueError:
            return f"non-numeric coordinate ({tag}={text[:20]!r})"
    difficult = _text(obj, "difficult") in ("1", "true", "True")
    return VocObject(index=index, name=name, box=tuple(values), difficult=difficult)


def parse_voc_xml(data: bytes) -> VocAnnotation:
    """One VOC annotation file → :class:`VocAnnotation` (objects checked one by one).

    Raises:
        VocXmlError: not XML, a DTD or entity declaration (refused, never expanded), or a
        root element other than ``<annotation>``.
    """
    try:
        root = SafeET.fromstring(data, forbid_dtd=True, forbid_entities=True,
                                 forbid_external=True)
    except defusedxml.DefusedXmlException:
        raise VocXmlError("XML with a DTD or entities is refused") from None
    except ParseError as err:
        raise VocXmlError(f"malformed XML ({err})") from None
    except (ValueError, RecursionError) as err:  # bad encoding declarations, deep nesting
        raise VocXmlError(f"malformed XML ({err.__class__.__name__})") from None
    if root.tag != "annotation":
        raise VocXmlError(f"not a VOC annotation (root element <{root.tag[:40]}>)")
    size = root.find("size")
    out = VocAnnotation(filename=_text(root, "filename"),
                        width=_positive_int(_text(size, "width")),
                        height=_positive_int(_text(size, "height")))
    for index, obj in enumerate(root.iter("object")):
        parsed = _parse_object(index, obj)
        if isinstance(parsed, str):
            out.problems.append((index, parsed))
        else:
            out.objects.append(parsed)
    return out


# ----------------------------------------------------------------------- the folder
@dataclass
class _Layout:
    xml: Location  # where the XML files are
    images: Location  # where the images are
    image_files: list[str]  # every file under ``images`` (relative)
    xml_files: list[str]  # every XML file (relative to ``xml``)
    flat: bool


def _layout(root_uri: str) -> _Layout:
    root = Location.from_uri(root_uri)
    try:
        if not root.is_dir():
            raise VocFormatError(f"VOC folder {root_uri} does not exist")
        annotations = Location(root.fs, root.path(ANNOTATIONS_DIR))
        if annotations.is_dir():
            images = Location(root.fs, root.path(IMAGES_DIR))
            if not images.is_dir():
                raise VocFormatError(f"VOC folder {root_uri} has {ANNOTATIONS_DIR}/ but no "
                                     f"{IMAGES_DIR}/")
            xml_files = [f for f in annotations.list_files() if f.lower().endswith(".xml")]
            return _Layout(annotations, images, images.list_files(), xml_files, flat=False)
        files = [f for f in root.list_files() if "/" not in f]
    except (FileNotFoundError, OSError) as err:
        raise VocFormatError(f"cannot list VOC folder {root_uri}: {err}") from None
    xml_files = [f for f in files if f.lower().endswith(".xml")]
    if not xml_files:
        raise VocFormatError(f"{root_uri} holds neither an {ANNOTATIONS_DIR}/ folder nor "
                             ".xml files")
    return _Layout(root, root, files, xml_files, flat=True)


def read_image_set(uri: str) -> list[str]:
    """A VOC split list → its ids, in file order, duplicates dropped."""
    try:
        text = read_uri(uri).decode("utf-8")
    except FileNotFoundError:
        raise VocFormatError(f"image set {uri} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise VocFormatError(f"cannot read image set {uri}: {err}") from None
    ids = [line.split()[0] for line in text.splitlines() if line.strip()]
    return list(dict.fromkeys(ids))


def _image_file(stem: str, filename: str | None, available: set[str]) -> str:
    """The image of ``<stem>.xml``: ``stem`` + an image extension (``.jpg`` first), else
    ``<filename>``; if none exists, the name the pixel check will report as missing."""
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        if stem + ext in available:
            return stem + ext
    if filename and filename in available:
        return filename
    return filename or stem + ".jpg"


def _read_xmls(xml: Location, names: list[str]) -> dict[str, VocAnnotation | str]:
    """Read and parse ``names`` in parallel: ``{name: VocAnnotation or skip reason}``."""

    def one(name: str) -> VocAnnotation | str:
        try:
            return parse_voc_xml(xml.read(name))
        except PathEscapeError as err:
            return str(err)
        except (FileNotFoundError, IsADirectoryError):
            return "missing annotation file"
        except OSError as err:
            return f"unreadable annotation file ({err})"
        except VocXmlError as err:
            return err.reason

    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        return dict(zip(names, pool.map(one, names)))


def read_voc(root_uri: str, *, image_set: str | None = None,
             class_names: list[str] | None = None) -> CocoSource:
    """Read a VOC folder (see module docs): every XML, or the ids listed in ``image_set``.

    Returns the COCO reader's :class:`~components.data.coco.CocoSource` (images under
    ``JPEGImages/``, or the flat folder); raises :class:`VocFormatError` for a missing
    folder or image set, or a folder without annotations.
    """
    if class_names is not None and len(set(class_names)) != len(class_names):
        raise VocFormatError(f"class_names has duplicates: {class_names}")
    layout = _layout(root_uri)
    report = SkipReport()
    if image_set is not None:
        stems = read_image_set(image_set)
        if not stems:
            raise VocFormatError(f"image set {image_set} lists no ids")
        split_xmls = [f"{s}.xml" for s in stems]
    else:
        split_xmls = sorted(layout.xml_files)
    wanted = split_xmls if class_names is not None else sorted(
        set(split_xmls) | set(layout.xml_files))
    parsed = _read_xmls(layout.xml, wanted)
    if class_names is None:
        class_names = sorted({o.name for a in parsed.values() if isinstance(a, VocAnnotation)
                              for o in a.objects})
        if not class_names:
            raise VocFormatError(f"no object in the annotations of {root_uri} has a name")
    category_of = {name: k + 1 for k, name in enumerate(class_names)}

    available = set(layout.image_files)
    images, annotations, labels = [], [], {}
    claimed: set[str] = set()
    for xml_name in split_xmls:
        ann = parsed[xml_name]
        if isinstance(ann, str):
            report.skip_file(xml_name, ann)
            continue
        stem = xml_name[:-len(".xml")]
        file = _image_file(stem, ann.filename, available)
        claimed.add(file)
        width, height = ann.width, ann.height
        if (width is None or height is None) and file in available:
            try:
                width, height = image_size_of(layout.images.read(file))
                report.count("sizes_read_from_image")
            except (BadImageError, OSError, PathEscapeError):
                pass  # left invalid: skipped below with the COCO reader's reason
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": file, "width": width or -1,
                       "height": height or -1})
        for index, reason in ann.problems:
            report.skip_annotation(f"{xml_name}#{index}", reason)
        for obj in ann.objects:
            if obj.name not in category_of:
                report.skip_annotation(f"{xml_name}#{obj.index}", f"unknown class {obj.name!r}")
                continue
            x0, y0, x1, y1 = obj.box
            ann_id = len(annotations) + 1
            labels[ann_id] = f"{xml_name}#{obj.index}"
            annotations.append({"id": ann_id, "image_id": image_id,
                                "category_id": category_of[obj.name],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": int(obj.difficult)})
    if layout.flat and image_set is None:
        for file in sorted(available - claimed):
            if file.lower().endswith(IMAGE_EXTENSIONS):
                report.skip_file(file, "no annotation file")

    data = {"images": images, "annotations": annotations,
            "categories": [{"id": k, "name": n} for n, k in category_of.items()]}
    source = coco_source(data, _location_uri(root_uri, layout), where=root_uri)
    _merge_reports(source.report, report, labels)
    return source


def _location_uri(root_uri: str, layout: _Layout) -> str:
    return root_uri if layout.flat else join_uri(root_uri, IMAGES_DIR)


def _merge_reports(shared: SkipReport, voc: SkipReport, labels: dict[int, str]) -> None:
    """VOC-level skips first; the COCO checks' annotation ids named as ``file#k``; ``iscrowd``
    counted as what it is here, ``difficult``."""
    renamed = [{"id": labels.get(s["id"], s["id"]), "reason": s["reason"]} if "id" in s else s
               for s in shared.skipped]
    shared.skipped = voc.skipped + renamed
    images_skipped = voc.counts.get("images_skipped", 0)
    annotations_skipped = voc.counts.get("annotations_skipped", 0)
    shared.counts.update(voc.counts)
    shared.counts["images_total"] += images_skipped
    shared.counts["annotations_total"] += annotations_skipped
    if "crowd_annotations" in shared.counts:
        shared.counts["difficult_annotations"] = shared.counts.pop("crowd_annotations")
