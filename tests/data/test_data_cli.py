"""``vitpipe data``: exit codes, the JSON report's keys, drawn files, progress off stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from components.cli.main import main


def test_inspect_json_reports_skips_and_exits_zero(bad_coco, capsys):
    rc = main(["data", "inspect", "--coco", str(bad_coco["annotations"]),
               "--images", str(bad_coco["images"]), "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    report = json.loads(out)  # exactly one JSON object on stdout
    assert {"images", "annotations", "categories", "per_category", "skipped"} <= set(report)
    accepted = [n for n, r in bad_coco["expected_files"].items() if r is None]
    assert report["images"] == len(accepted)
    assert report["annotations"] == len(bad_coco["accepted_annotations"])
    assert report["per_category"] == {"lamp": 2, "sign": 1}
    files = {s["file"] for s in report["skipped"] if "file" in s}
    ids = {s["id"] for s in report["skipped"] if "id" in s}
    assert files == {n for n, r in bad_coco["expected_files"].items() if r}
    assert ids == set(bad_coco["expected_annotations"])
    assert all(s["reason"] for s in report["skipped"])


def test_inspect_text(bad_coco, capsys):
    rc = main(["data", "inspect", "--coco", str(bad_coco["annotations"]),
               "--images", str(bad_coco["images"])])
    out = capsys.readouterr().out
    assert rc == 0 and "images accepted:" in out and "missing.jpg: missing file" in out


@pytest.mark.parametrize("content", [None, "{broken", '{"images": []}'])
def test_unusable_annotation_file_exits_2_with_one_line(tmp_path, capsys, content):
    ann = tmp_path / "ann.json"
    if content is not None:
        ann.write_text(content)
    rc = main(["data", "inspect", "--coco", str(ann), "--images", str(tmp_path), "--json"])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vitpipe: error:")


def test_missing_image_root_exits_2(bad_coco, tmp_path, capsys):
    rc = main(["data", "inspect", "--coco", str(bad_coco["annotations"]),
               "--images", str(tmp_path / "nope")])
    assert rc == 2 and "image root" in capsys.readouterr().err


def test_show_draws_samples_with_and_without_augment(synth_dataset, tmp_path, capsys):
    common = ["--coco", str(synth_dataset / "annotations" / "instances_val.json"),
              "--images", str(synth_dataset / "images" / "val"), "--num", "3"]
    assert main(["data", "show", *common, "--out", str(tmp_path / "plain")]) == 0
    assert main(["data", "show", *common, "--out", str(tmp_path / "aug"), "--augment",
                 "--image-size", "64"]) == 0
    plain = sorted(p.name for p in (tmp_path / "plain").glob("*.png"))
    aug = sorted(p.name for p in (tmp_path / "aug").glob("*_aug.png"))
    assert len(plain) == 3 and len(aug) == 3


def test_synth_cli_is_deterministic(tmp_path, capsys):
    for name in ("a", "b"):
        assert main(["data", "synth", "--out", str(tmp_path / name), "--seed", "2",
                     "--num-train", "3", "--num-val", "1", "--image-size", "48"]) == 0
    a = sorted((p.relative_to(tmp_path / "a"), p.read_bytes())
               for p in (tmp_path / "a").rglob("*") if p.is_file())
    b = sorted((p.relative_to(tmp_path / "b"), p.read_bytes())
               for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert a == b and len(a) >= 6
    capsys.readouterr()
    assert main(["data", "synth", "--out", str(tmp_path / "c"), "--image-size", "8"]) == 2
    assert "image_size" in capsys.readouterr().err


def test_console_script_prints_one_json_object(bad_coco):
    exe = str(Path(sys.executable).parent / "vitpipe")  # the installed console script
    done = subprocess.run([exe, "data", "inspect", "--coco", str(bad_coco["annotations"]),
                           "--images", str(bad_coco["images"]), "--json"],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["images"] == 6
    missing = subprocess.run([exe, "data", "inspect", "--coco", "/nonexistent/ann.json",
                              "--images", str(bad_coco["images"])],
                             capture_output=True, text=True, timeout=180)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().count("\n") == 0
