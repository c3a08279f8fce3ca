"""COCO and ImageFolder readers on generated data holding every kind of bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from components.data.coco import CocoFormatError, check_image, read_coco
from components.data.image_io import DEFAULT_MAX_PIXELS
from components.data.imagefolder import ImageFolderError, read_imagefolder
from tests.data.conftest import encode, painted


def _validated(bad_coco):
    source = read_coco(str(bad_coco["annotations"]), str(bad_coco["images"]))
    bad = set()
    for record in source.records:
        reason, _ = check_image(source.images, record, max_pixels=DEFAULT_MAX_PIXELS)
        if reason:
            bad.add(record["image_id"])
            source.report.skip_file(record["file"], reason)
    source.drop_images(bad)
    return source


def test_every_bad_file_is_skipped_with_its_reason(bad_coco):
    source = _validated(bad_coco)
    by_file = {s["file"]: s["reason"] for s in source.report.skipped if "file" in s}
    for name, reason in bad_coco["expected_files"].items():
        if reason is None:
            assert name not in by_file, f"{name} should be accepted, got {by_file.get(name)}"
        else:
            assert name in by_file, f"{name} should be skipped ({reason})"
            assert by_file[name].startswith(reason), (name, by_file[name])
    accepted = {r["file"] for r in source.records}
    assert accepted == {n for n, r in bad_coco["expected_files"].items() if r is None}
    assert source.report.counts["images_skipped"] == sum(
        1 for r in bad_coco["expected_files"].values() if r)


def test_every_bad_annotation_is_dropped_with_its_reason(bad_coco):
    source = _validated(bad_coco)
    by_id = {s["id"]: s["reason"] for s in source.report.skipped if "id" in s}
    assert by_id == bad_coco["expected_annotations"]
    assert {a["id"] for a in source.gt["annotations"]} == bad_coco["accepted_annotations"]
    assert source.report.counts["annotations_skipped"] == len(bad_coco["expected_annotations"])


def test_border_box_is_clipped_and_counted(bad_coco):
    source = _validated(bad_coco)
    clipped = next(a for a in source.gt["annotations"] if a["id"] == 102)
    assert clipped["bbox"] == [50.0, 30.0, 14.0, 18.0]  # image is 64 x 48
    assert source.report.counts["boxes_clipped"] == 1
    good = next(r for r in source.records if r["file"] == "good.jpg")
    boxes = np.asarray(good["boxes"]).reshape(-1, 4)
    assert boxes.tolist() == [bad_coco["good_box"], [50.0, 30.0, 14.0, 18.0]]


def test_categories_map_to_contiguous_ids_in_sorted_id_order(bad_coco):
    source = read_coco(str(bad_coco["annotations"]), str(bad_coco["images"]))
    assert source.category_ids == [3, 7] and source.class_names == ["lamp", "sign"]
    good = next(r for r in source.records if r["file"] == "good.jpg")
    assert good["classes"] == [1, 0]  # category 7 ("sign") then 3 ("lamp")


def test_converted_formats_decode_to_the_same_picture(bad_coco):
    source = read_coco(str(bad_coco["annotations"]), str(bad_coco["images"]))
    from components.data.image_io import decode_image

    reference = painted()[0].astype(int)
    for name in ("rgba.png", "palette.png"):
        out = decode_image(source.images.read(name)).astype(int)
        assert np.abs(out - reference).mean() < 8, name


@pytest.mark.parametrize("content,message", [
    (None, "does not exist"),
    ("{not json", "not valid JSON"),
    ('{"images": [{"id": ' + "9" * 5000 + "}]}", "not valid JSON"),  # Python's int-digit limit
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("[1, 2]", "must hold a JSON object"),
    (json.dumps({"images": [], "annotations": []}), "'categories' must be a list"),
])
def test_unusable_annotation_files_raise_one_clear_error(tmp_path, content, message):
    path = tmp_path / "ann.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CocoFormatError, match=message):
        read_coco(str(path), str(tmp_path))


def test_nan_written_by_exporters_is_read(bad_coco):
    raw = json.loads(bad_coco["annotations"].read_text())
    assert any(isinstance(v, float) and math.isnan(v) for a in raw["annotations"] for v in a["bbox"])


def test_imagefolder_reader_skips_strays(tmp_path):
    image = encode(__import__("PIL.Image", fromlist=["Image"]).fromarray(painted()[0]), "PNG")
    for cls in ("b_cat", "a_dog"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "x.png").write_bytes(image)
    (tmp_path / "a_dog" / "README.txt").write_text("hello")
    (tmp_path / "stray.png").write_bytes(image)
    source = read_imagefolder(str(tmp_path))
    assert source.class_names == ["a_dog", "b_cat"]
    assert sorted((r["file"], r["label"]) for r in source.records) == [
        ("a_dog/x.png", 0), ("b_cat/x.png", 1)]
    reasons = {s["file"]: s["reason"] for s in source.report.skipped}
    assert reasons == {"a_dog/README.txt": "not an image file extension",
                       "stray.png": "not in a class folder"}
    fixed = read_imagefolder(str(tmp_path), class_names=["b_cat", "a_dog", "c_none"])
    assert sorted((r["file"], r["label"]) for r in fixed.records) == [
        ("a_dog/x.png", 1), ("b_cat/x.png", 0)]
    with pytest.raises(ImageFolderError):
        read_imagefolder(str(tmp_path / "nope"))
