"""Pascal VOC: the reader on generated folders holding every kind of broken XML, on the real
BCCD photographs (read-only), through the CLI, object storage, the evaluator and a training run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from components.cli.main import main
from components.data.coco import read_coco
from components.data.voc import VocFormatError, parse_voc_xml, read_voc
from tests.data.conftest import BCCD_VOC, encode, painted

JPEG = encode(Image.fromarray(painted()[0]), "JPEG", quality=95)  # 64 x 48


def xml_object(name: str | None = "lamp", box=(10, 8, 30, 22), difficult: int | None = 0,
               raw_box: str | None = None) -> str:
    parts = [] if name is None else [f"<name>{name}</name>"]
    if difficult is not None:
        parts.append(f"<difficult>{difficult}</difficult>")
    if raw_box is not None:
        parts.append(raw_box)
    elif box is not None:
        parts.append("<bndbox>" + "".join(
            f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box)) + "</bndbox>")
    return "<object>" + "".join(parts) + "</object>"


def voc_xml(filename: str, objects: list[str], size: tuple[int, int] | None = (64, 48)) -> str:
    size_xml = "" if size is None else (
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    return (f"<annotation><folder>JPEGImages</folder><filename>{filename}</filename>{size_xml}"
            + "".join(objects) + "</annotation>")


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<annotation><filename>&lol3;</filename></annotation>"""
EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<annotation><filename>a.jpg</filename><object><name>&secret;</name></object></annotation>"""

# XML file → the reason it is skipped (None: read)
BAD_FILES = {
    "laughs.xml": "XML with a DTD or entities is refused",
    "external.xml": "XML with a DTD or entities is refused",
    "broken.xml": "malformed XML",
    "html.xml": "not a VOC annotation",
    "gone.xml": "missing annotation file",
}
# object id → reason (the good.xml file holds them, in this order)
BAD_OBJECTS = {
    "good.xml#1": "zero-size box",
    "good.xml#2": "negative-size box",
    "good.xml#3": "non-numeric coordinate",
    "good.xml#4": "malformed box",  # no ymax
    "good.xml#5": "malformed box",  # no bndbox
    "good.xml#6": "object without a name",
    "good.xml#7": "box outside the image",
    "good.xml#8": "non-finite box",
}


@pytest.fixture(scope="module")
def bad_voc(tmp_path_factory) -> Path:
    """A standard-layout VOC folder with every kind of bad XML, object and image."""
    root = tmp_path_factory.mktemp("badvoc") / "VOC"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    good = [xml_object("lamp"),                                  # 0 accepted
            xml_object("lamp", box=(10, 8, 10, 22)),             # 1 zero extent
            xml_object("sign", box=(30, 8, 10, 22)),             # 2 xmax < xmin
            xml_object("lamp", box=("ten", 8, 30, 22)),          # 3 non-numeric
            xml_object("lamp", raw_box="<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax></bndbox>"),
            xml_object("lamp", box=None),                        # 5 no bndbox
            xml_object(None),                                    # 6 no name
            xml_object("sign", box=(100, 100, 120, 120)),        # 7 outside the image
            xml_object("sign", box=(1, 2, "nan", 9)),            # 8 NaN
            xml_object("sign", box=(50, 30, 80, 60)),            # 9 crosses the border: clipped
            xml_object("sign", box=(2, 2, 20, 20), difficult=1),  # 10 difficult
            xml_object("cat", box=(5, 5, 25, 25))]               # 11 a third class
    files = {
        "good.xml": voc_xml("good.jpg", good),
        "nosize.xml": voc_xml("nosize.jpg", [xml_object("lamp")], size=None),
        "empty.xml": voc_xml("empty.jpg", []),  # an image without objects is kept
        "noimage.xml": voc_xml("noimage.jpg", [xml_object("lamp")]),
        "laughs.xml": BILLION_LAUGHS,
        "external.xml": EXTERNAL_ENTITY,
        "broken.xml": "<annotation><object><name>lamp</name>",
        "html.xml": "<html><body>not VOC</body></html>",
    }
    for name, text in files.items():
        (root / "Annotations" / name).write_text(text)
    for stem in ("good", "nosize", "empty", "laughs", "external", "broken", "html"):
        (root / "JPEGImages" / f"{stem}.jpg").write_bytes(JPEG)
    ids = ["good", "nosize", "empty", "noimage", "laughs", "external", "broken", "html", "gone"]
    (root / "ImageSets" / "Main" / "all.txt").write_text("\n".join(ids) + "\n")
    (root / "ImageSets" / "Main" / "one.txt").write_text("good  1\n")  # per-class list format
    return root


def _inspect(capsys, *args: str) -> dict:
    assert main(["data", "inspect", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_bad_file_and_object_is_skipped_with_its_reason(bad_voc):
    source = read_voc(str(bad_voc), image_set=str(bad_voc / "ImageSets/Main/all.txt"))
    files = {s["file"]: s["reason"] for s in source.report.skipped if "file" in s}
    objects = {s["id"]: s["reason"] for s in source.report.skipped if "id" in s}
    assert set(files) == set(BAD_FILES)
    for name, reason in BAD_FILES.items():
        assert files[name].startswith(reason), (name, files[name])
    assert set(objects) == set(BAD_OBJECTS)
    for key, reason in BAD_OBJECTS.items():
        assert objects[key].startswith(reason), (key, objects[key])
    assert source.class_names == ["cat", "lamp", "sign"] and source.category_ids == [1, 2, 3]
    counts = source.report.counts
    assert counts["images_skipped"] == len(BAD_FILES)
    assert counts["annotations_skipped"] == len(BAD_OBJECTS)
    assert counts["boxes_clipped"] == 1 and counts["difficult_annotations"] == 1
    assert counts["sizes_read_from_image"] == 1
    # good, nosize (size from the JPEG header), empty, noimage (fails the pixel check later)
    assert [r["file"] for r in source.records] == ["good.jpg", "nosize.jpg", "empty.jpg",
                                                   "noimage.jpg"]
    good = source.records[0]
    assert np.asarray(good["boxes"]).reshape(-1, 4).tolist() == [
        [10, 8, 20, 14], [50, 30, 14, 18], [5, 5, 20, 20]]  # the difficult box is no target
    assert good["classes"] == [1, 2, 0]
    gt_good = [a for a in source.gt["annotations"] if a["image_id"] == good["image_id"]]
    assert sorted((a["bbox"], a["iscrowd"]) for a in gt_good) == sorted([
        ([10.0, 8.0, 20.0, 14.0], 0), ([50.0, 30.0, 14.0, 18.0], 0), ([2.0, 2.0, 18.0, 18.0], 1),
        ([5.0, 5.0, 20.0, 20.0], 0)])
    assert source.records[1]["width"] == 64 and source.records[1]["height"] == 48


def test_fixed_class_names_order_classes_and_skip_unknown_ones(bad_voc):
    source = read_voc(str(bad_voc), image_set=str(bad_voc / "ImageSets/Main/one.txt"),
                      class_names=["sign", "lamp"])
    assert source.class_names == ["sign", "lamp"] and source.category_ids == [1, 2]
    assert source.gt["categories"] == [{"id": 1, "name": "sign"}, {"id": 2, "name": "lamp"}]
    assert source.records[0]["classes"] == [1, 0]
    reasons = {s["id"]: s["reason"] for s in source.report.skipped}
    assert reasons["good.xml#11"] == "unknown class 'cat'"
    with pytest.raises(VocFormatError, match="duplicates"):
        read_voc(str(bad_voc), class_names=["a", "a"])


def test_entities_are_refused_never_expanded():
    for text in (BILLION_LAUGHS, EXTERNAL_ENTITY):
        with pytest.raises(ValueError, match="DTD or entities"):
            parse_voc_xml(text.encode())


def test_flat_folder_of_xml_and_images(tmp_path):
    (tmp_path / "a.xml").write_text(voc_xml("a.jpg", [xml_object("lamp")]))
    (tmp_path / "b.xml").write_text(voc_xml("b_photo.png", [xml_object("sign")]))
    (tmp_path / "a.jpg").write_bytes(JPEG)
    (tmp_path / "b_photo.png").write_bytes(encode(Image.fromarray(painted()[0]), "PNG"))
    (tmp_path / "stray.jpg").write_bytes(JPEG)
    source = read_voc(str(tmp_path))
    assert [r["file"] for r in source.records] == ["a.jpg", "b_photo.png"]
    assert source.class_names == ["lamp", "sign"]
    assert source.report.skipped == [{"file": "stray.jpg", "reason": "no annotation file"}]


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "nope", "does not exist"),
    (lambda p: p, "neither an Annotations/ folder nor .xml files"),
])
def test_unusable_folders_raise_one_clear_error(tmp_path, make, message):
    with pytest.raises(VocFormatError, match=message):
        read_voc(str(make(tmp_path)))


def test_cli_errors_exit_2_with_one_line(bad_voc, tmp_path, capsys):
    cases = [["--voc", str(bad_voc), "--split", "nope"],
             ["--voc", str(tmp_path / "none")],
             ["--voc", str(bad_voc), "--images", str(bad_voc)],
             ["--coco", str(tmp_path / "x.json")]]
    for args in cases:
        assert main(["data", "inspect", *args, "--json"]) == 2, args
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err


# Each field of an <object>: a good value, or one of the broken ones seen in the wild.
_coord = st.one_of(st.integers(0, 80).map(str), st.sampled_from(["", "abc", "nan", "inf", "-3",
                                                                 "1e400", "12.5", " 7 "]))
_name = st.sampled_from(["lamp", "sign", "", "unknown", "  lamp  "])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(objects=st.lists(st.tuples(_name, st.lists(_coord, min_size=0, max_size=4), st.booleans()),
                        max_size=8))
def test_malformed_objects_are_skipped_and_counted_never_fatal(tmp_path_factory, objects):
    folder = tmp_path_factory.mktemp("hypo")
    parts = []
    for name, coords, difficult in objects:
        box = "<bndbox>" + "".join(f"<{t}>{v}</{t}>" for t, v in zip(
            ("xmin", "ymin", "xmax", "ymax"), coords)) + "</bndbox>"
        parts.append(f"<object><name>{name}</name><difficult>{int(difficult)}</difficult>"
                     f"{box}</object>")
    (folder / "x.xml").write_text(voc_xml("x.jpg", parts))
    (folder / "x.jpg").write_bytes(JPEG)
    source = read_voc(str(folder), class_names=["lamp", "sign"])
    skipped = [s for s in source.report.skipped if "id" in s]
    assert len(source.gt["annotations"]) + len(skipped) == len(objects)
    assert source.report.counts["annotations_total"] == len(objects)
    for ann in source.gt["annotations"]:
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 64 and y + h <= 48


def test_difficult_boxes_neither_help_nor_hurt_map(bad_voc):
    from components.evaluation import coco_metrics

    source = read_voc(str(bad_voc), image_set=str(bad_voc / "ImageSets/Main/one.txt"))
    gt = source.gt
    normal = [a for a in gt["annotations"] if not a["iscrowd"]]
    difficult = [a for a in gt["annotations"] if a["iscrowd"]]
    assert len(difficult) == 1
    hits = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 0.9} for a in normal]
    on_difficult = {"image_id": difficult[0]["image_id"], "category_id": difficult[0]["category_id"],
                    "bbox": difficult[0]["bbox"], "score": 0.95}
    alone = coco_metrics(hits, gt)
    assert alone["map50"] == pytest.approx(1.0)  # missing the difficult box costs nothing
    assert coco_metrics(hits + [on_difficult], gt)["map50"] == pytest.approx(1.0)  # finding it gains nothing
    spurious = dict(on_difficult, bbox=[40.0, 2.0, 10.0, 10.0])  # far from any box: a false positive
    assert coco_metrics(hits + [spurious], gt)["map50"] < 1.0


# ---------------------------------------------------------------- the real BCCD photographs
BCCD_SPLITS = {"train": (205, 2804, "BloodImage_00343.xml#3"),
               "val": (87, 1137, "BloodImage_00338.xml#12"),
               "test": (72, 945, None)}


@pytest.mark.parametrize("split", list(BCCD_SPLITS))
def test_bccd_inspect_counts(split, capsys):
    images, boxes, no_extent = BCCD_SPLITS[split]
    report = _inspect(capsys, "--voc", str(BCCD_VOC), "--split", split)
    assert report["images"] == images and report["annotations"] == boxes
    assert [c["name"] for c in report["categories"]] == ["Platelets", "RBC", "WBC"]
    assert sum(report["per_category"].values()) == boxes
    expected = [] if no_extent is None else [{"id": no_extent, "reason": "zero-size box"}]
    assert report["skipped"] == expected


def test_bccd_convert_reads_back_through_the_coco_reader(tmp_path, capsys):
    out = tmp_path / "val.json"
    assert main(["data", "convert", "--voc", str(BCCD_VOC), "--split", "val", "--out", str(out)]) == 0
    assert "wrote 87 images, 1137 annotations" in capsys.readouterr().out
    voc = _inspect(capsys, "--voc", str(BCCD_VOC), "--split", "val")
    coco = _inspect(capsys, "--coco", str(out), "--images", str(BCCD_VOC / "JPEGImages"))
    for key in ("images", "annotations", "categories", "per_category"):
        assert coco[key] == voc[key], key
    assert coco["skipped"] == []  # the converted file holds only what was accepted
    again = read_coco(str(out), str(BCCD_VOC / "JPEGImages"))
    source = read_voc(str(BCCD_VOC), image_set=str(BCCD_VOC / "ImageSets/Main/val.txt"))
    assert again.records == source.records  # same boxes, classes and files


def test_bccd_on_object_storage_matches_local(s3_server, bccd_small):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="vitpipe-voc")
    for path in sorted(bccd_small.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), "vitpipe-voc", f"bccd/{path.relative_to(bccd_small)}")
    uri = "s3://vitpipe-voc/bccd"
    local = read_voc(str(bccd_small), image_set=str(bccd_small / "ImageSets/Main/train.txt"))
    remote = read_voc(uri, image_set=f"{uri}/ImageSets/Main/train.txt")
    assert remote.records == local.records and len(remote.records) == 6
    assert remote.annotations_digest == local.annotations_digest
    assert remote.images.read(remote.records[0]["file"]) == local.images.read(local.records[0]["file"])


def test_voc_is_a_detection_format_everywhere(tmp_path):
    from components.data.config import DataConfig
    from components.data.dataset import task_of
    from components.tasks import get_task

    cfg = DataConfig(format="voc", root=str(tmp_path))
    assert task_of(cfg) == "detection"
    assert cfg.split_paths("val").image_set == str(tmp_path / "ImageSets" / "Main" / "val.txt")
    assert get_task("mae").loader_kind("voc") == "detection"  # MAE on VOC images
    assert get_task("mae").loader_kind("imagefolder") == "classification"
    with pytest.raises(ValueError, match="annotations is for format 'coco'"):
        DataConfig(format="voc", splits={"train": {"annotations": "a.json", "images": "x"}})
    with pytest.raises(ValueError, match="image_set is for format 'voc'"):
        DataConfig(format="imagefolder", splits={"train": {"images": "x", "image_set": "t.txt"}})


def test_voc_dataset_rows_map_back_to_the_ground_truth(ray_cluster, bccd_small):
    from components.data.boxes import batch_to_pixels_xyxy
    from components.data.config import DataConfig
    from components.data.dataset import build_dataset
    from components.data.loader import iter_batches

    cfg = DataConfig(format="voc", root=str(bccd_small), image_size=96, max_boxes=64)
    bundle = build_dataset(cfg, "val", training=False)
    assert bundle.task == "detection" and bundle.num_rows == 3
    assert bundle.class_names == ["Platelets", "RBC", "WBC"] and bundle.category_ids == [1, 2, 3]
    by_image = {}
    for a in bundle.coco_gt["annotations"]:
        x, y, w, h = a["bbox"]
        by_image.setdefault(a["image_id"], []).append([x, y, x + w, y + h, a["category_id"] - 1])
    for batch in iter_batches(bundle.dataset, batch_size=3, task="detection"):
        assert batch["orig_size"].tolist() == [[480, 640]] * 3
        pixels = batch_to_pixels_xyxy(batch["boxes"], batch["orig_size"])
        for i, image_id in enumerate(batch["image_id"].tolist()):
            mask = batch["box_mask"][i]
            got = sorted(p + [c] for p, c in zip(pixels[i][mask].tolist(),
                                                 batch["classes"][i][mask].tolist()))
            assert np.allclose(got, sorted(by_image[image_id]), atol=0.5)


@pytest.mark.slow
def test_detector_trains_on_voc_end_to_end(ray_cluster, bccd_small, tmp_path):
    from components.core.checkpoint import read_meta
    from components.training.config import load_train_config
    from components.training.trainer import run_training

    configs = Path(__file__).resolve().parents[2] / "pipelines" / "configs"
    cfg = load_train_config(configs / "detect_ci.yaml", [
        "data.format=voc", f"data.root={bccd_small}", "data.image_size=64", "data.max_boxes=40",
        f"run.storage_path={tmp_path}", "run.name=detect-voc", "batch_size=3", "epochs=2",
        "scaling.torch_threads=1"])
    summary = run_training(cfg)
    assert summary["steps"] == 4  # 6 images, batches of 3, 2 epochs
    meta = read_meta(Path(summary["checkpoint"]))
    assert meta.class_names == ["Platelets", "RBC", "WBC"]
    metrics = summary["metrics"]
    assert 0.0 <= metrics["map"] <= metrics["map50"] <= 1.0  # the COCO evaluator ran on VOC gt
