"""COCO and ImageFolder readers on generated data holding every kind of bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def _coco_file(tmp_path, images, annotations, categories=({"id": 1, "name": "a"}, {"id": 2, "name": "b"})):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": list(categories)}))
    return str(path)


def test_annotations_with_unhashable_ids_are_skipped_and_shared_ids_renumbered(tmp_path):
    from pycocotools.coco import COCO

    image = {"id": 1, "file_name": "a.jpg", "width": 50, "height": 40}
    box = [5, 5, 10, 10]
    annotations = [
        {"id": 1, "image_id": [1], "category_id": 1, "bbox": box},  # once ended the whole read
        {"id": 2, "image_id": 1, "category_id": {"id": 1}, "bbox": box},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": box},
        {"id": 3, "image_id": 1, "category_id": 2, "bbox": [20, 20, 5, 5]},  # shared id
        {"image_id": 1, "category_id": 2, "bbox": [1, 1, 4, 4]},  # no id
        {"id": "x", "image_id": 1, "category_id": 1, "bbox": [30, 1, 4, 4]},
    ]
    source = read_coco(_coco_file(tmp_path, [image], annotations), str(tmp_path))
    assert [s["reason"] for s in source.report.skipped] == [
        "annotation without an integer image_id", "unknown category id"]
    assert source.report.counts["annotation_ids_renumbered"] == 3
    ids = [a["id"] for a in source.gt["annotations"]]
    assert ids[0] == 3 and len(set(ids)) == 4 and all(isinstance(i, int) for i in ids)
    assert source.records[0]["classes"] == [0, 1, 1, 0]
    coco = COCO()  # pycocotools indexes ground truth by id: every box must survive it
    coco.dataset = source.gt
    coco.createIndex()
    assert len(coco.getAnnIds(imgIds=[1])) == 4 and len(coco.anns) == 4


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.floats(allow_nan=True),
                      st.text(max_size=4))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=10)
image_entry = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.integers(-1, 4), json_value), "width": st.one_of(st.integers(0, 60), json_value),
    "height": st.one_of(st.integers(0, 60), json_value),
    "file_name": st.one_of(st.sampled_from(["a.jpg", "b/c.png", "../up.jpg", "/abs.jpg", ""]), json_value)})
annotation_entry = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.integers(0, 4), json_value), "image_id": st.one_of(st.integers(0, 4), json_value),
    "category_id": st.one_of(st.integers(0, 3), json_value), "iscrowd": json_value, "area": json_value,
    "bbox": st.one_of(json_value, st.lists(st.one_of(st.floats(allow_nan=True), st.integers(-5, 70)),
                                           min_size=4, max_size=4))})
category_entry = st.one_of(json_value, st.fixed_dictionaries(
    {"id": st.integers(0, 3), "name": st.sampled_from(["a", "b", "c"])}))


@settings(max_examples=500, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.one_of(image_entry, json_value), max_size=5),
       st.lists(st.one_of(annotation_entry, json_value), max_size=6),
       st.lists(category_entry, max_size=3), st.sampled_from([None, ["a", "b", "c"]]))
def test_generated_annotation_files_read_or_fail_clearly(tmp_path, images, annotations, categories,
                                                         class_names):
    """Whatever the entries hold: a source whose ground truth pycocotools indexes in full,
    or one CocoFormatError. Every annotation is kept or counted as skipped."""
    from pycocotools.coco import COCO

    try:
        source = read_coco(_coco_file(tmp_path, images, annotations, categories), str(tmp_path),
                           class_names=class_names)
    except CocoFormatError:
        return
    gt = source.gt["annotations"]
    assert len(gt) + source.report.counts["annotations_skipped"] == len(annotations)
    assert len({a["id"] for a in gt}) == len(gt)
    coco = COCO()
    coco.dataset = json.loads(json.dumps(source.gt))
    coco.createIndex()
    assert len(coco.anns) == len(gt)


def test_boxes_with_no_extent_in_float32_are_skipped_as_degenerate(tmp_path):
    image = {"id": 1, "file_name": "a.jpg", "width": 2000, "height": 40}
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1000, 5, 1e-6, 20]},
                   {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 39.999999, 20, 1e-9]},
                   {"id": 3, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0.5, 0.5]}]
    source = read_coco(_coco_file(tmp_path, [image], annotations), str(tmp_path))
    assert [(s["id"], s["reason"]) for s in source.report.skipped] == [(1, "degenerate box"), (2, "degenerate box")]
    assert [a["id"] for a in source.gt["annotations"]] == [3]  # half a pixel is small, not degenerate
