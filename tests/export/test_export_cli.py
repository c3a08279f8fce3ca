"""``vitpipe export`` against the real MLflow server and Ray cluster: both formats, both tasks,
parity measured on real splits of the synthetic dataset (ground truth) or synthetic images,
artifacts on the version's run, and bad input as exit code 2 with one line."""

from __future__ import annotations

import json

import pytest

from components.export.parity import judge

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("vitpipe: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _published(mlflow_uri: str, name: str, version: str, fmt: str) -> tuple[set[str], dict, str]:
    """File names under the version's export folder on its run, its parity.json, its tag."""
    import mlflow.artifacts
    from mlflow import MlflowClient

    mlf = MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    mv = mlf.get_model_version(name, version)
    where = mv.tags[f"export.{fmt}"]
    names = {a.path.rsplit("/", 1)[-1] for a in mlf.list_artifacts(mv.run_id, where)}
    parity = json.loads(mlflow.artifacts.load_text(f"runs:/{mv.run_id}/{where}/parity.json"))
    return names, parity, where


@pytest.mark.slow
def test_classifier_to_onnx_parity_on_an_imagefolder_split(export_models, synth_dataset,
                                                           mlflow_uri, run_export, tmp_path):
    import onnx

    model = export_models["classifier"]
    rc, report, err = run_export(model["uri"], "onnx", tmp_path / "out",
                                 "--split", str(synth_dataset / "imagefolder" / "val"))
    assert rc == 0, err
    assert report["passed"] and not report["failures"]
    assert report["exporter"] in ("dynamo", "torchscript") and report["opset"] == 20
    assert report["data"]["reference"] == "ground truth" and report["data"]["images"] == 24
    assert 0.0 <= report["max_abs_diff"]["logits"] <= 1e-3
    metric = report["metric"]
    assert metric["name"] == "top1" and abs(metric["pytorch"] - metric["exported"]) <= 1e-3
    assert metric["top1_agreement"] == 1.0
    assert report["signature"]["outputs"]["logits"]["shape"] == [-1, 5]
    for side in ("pytorch_eager", "exported"):
        assert report["latency"][side]["b1_p50_ms"] > 0 and report["latency"][side]["b32_img_per_s"] > 0
    # what a runtime sees: uint8 patches with a symbolic batch axis
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    (inp,) = graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert inp.type.tensor_type.shape.dim[0].dim_param
    assert [o.name for o in graph.output] == ["logits"]
    # on the version's MLflow run, and findable from the version
    names, parity, where = _published(mlflow_uri, model["name"], model["version"], "onnx")
    assert names == {"model.onnx", "parity.json"} and where == report["published"]
    assert parity["file"]["sha256"] == report["file"]["sha256"] and parity["passed"]


@pytest.mark.slow
def test_detector_to_onnx_parity_on_a_coco_split(export_models, synth_dataset, mlflow_uri,
                                                 run_export, tmp_path):
    model = export_models["detector"]
    rc, report, err = run_export(
        model["uri"], "onnx", tmp_path / "out", "--split", str(synth_dataset / "images" / "val"),
        "--annotations", str(synth_dataset / "annotations" / "instances_val.json"))
    assert rc == 0, err
    assert report["passed"] and report["data"]["reference"] == "ground truth"
    assert report["data"]["images"] == 16  # the whole val split (fewer than --max-images)
    assert set(report["max_abs_diff"]) == {"pred_logits", "pred_boxes"}
    assert max(report["max_abs_diff"].values()) <= 1e-3
    metric = report["metric"]
    assert metric["name"] == "map50" and abs(metric["pytorch"] - metric["exported"]) <= 1e-3
    assert report["signature"]["outputs"]["pred_boxes"]["shape"] == [-1, 20, 4]
    names, _, _ = _published(mlflow_uri, model["name"], model["version"], "onnx")
    assert names == {"model.onnx", "parity.json"}


@pytest.mark.slow
@pytest.mark.parametrize("key", ["classifier", "detector"])
def test_checkpoint_to_torch_export_on_synthetic_images(export_models, run_export, tmp_path, key):
    from components.export.runners import ProgramModule

    model = export_models[key]
    rc, report, err = run_export(str(model["dir"]), "torch-export", tmp_path / "out")
    assert rc == 0, err
    assert report["passed"] and report["exporter"] == "torch.export" and report["opset"] is None
    assert report["runtime"] == "torch.export" and report["published"] is None
    assert report["data"]["split"].startswith("synthetic") and report["data"]["images"] > 0
    assert max(report["max_abs_diff"].values()) <= 1e-3
    assert abs(report["metric"]["pytorch"] - report["metric"]["exported"]) <= 1e-3
    program = ProgramModule(tmp_path / "out" / "model.pt2")  # checked pickle-free, then loaded
    assert program.meta.model_name == ("vit_demo" if key == "classifier" else "yolos_demo")


def test_an_archive_with_pickled_parts_is_refused(tmp_path):
    import torch

    from components.export.graph import ExportError
    from components.export.runners import check_program_archive

    program = torch.export.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),))
    torch.export.save(program, str(tmp_path / "plain.pt2"))  # keeps pickled sample inputs
    with pytest.raises(ExportError, match="sample inputs"):
        check_program_archive(tmp_path / "plain.pt2")
    (tmp_path / "not.pt2").write_bytes(b"not a zip")
    with pytest.raises(ExportError, match="not a zip"):
        check_program_archive(tmp_path / "not.pt2")


@pytest.mark.parametrize("uri_kind, flags, message", [
    ("missing-model", [], "does not exist"),
    ("missing-version", [], "has no version 99"),
    ("missing-dir", [], "neither a registry URI"),
    ("not-a-checkpoint", [], "not a vitpipe checkpoint"),
    ("classifier", ["--opset", "12"], "--opset"),
    ("classifier", ["--annotations", "x.json"], "need split"),
    ("classifier", ["--split", "COCO"], "give an ImageFolder split"),
])
def test_bad_input_is_exit_2_with_one_line(export_models, synth_dataset, mlflow_uri, run_export,
                                           tmp_path, uri_kind, flags, message):
    uri = {
        "missing-model": "models:/export-test-nobody@champion",
        "missing-version": f"models:/{export_models['classifier']['name']}/99",
        "missing-dir": str(tmp_path / "nope"),
        "not-a-checkpoint": str(tmp_path),
        "classifier": export_models["classifier"]["uri"],
    }[uri_kind]
    flags = [str(synth_dataset / "images" / "val") if f == "COCO" else f for f in flags]
    if "--split" in flags:
        flags += ["--annotations", str(synth_dataset / "annotations" / "instances_val.json")]
    rc, _, err = run_export(uri, "onnx", tmp_path / "out", *flags)
    assert rc == 2
    assert message in _one_error_line(err)


def test_judge_names_every_failure():
    compared = {"max_abs_diff": {"pred_logits": 2e-3, "pred_boxes": 1e-5},
                "metric": {"name": "map50", "pytorch": 0.5, "exported": 0.498, "abs_diff": 0.002}}
    failures = judge(compared, atol=1e-3, metric_tol=1e-3)
    assert len(failures) == 2
    assert "pred_logits" in failures[0] and "map50" in failures[1]
    assert judge(compared, atol=1e-2, metric_tol=1e-2) == []
    nan = {**compared, "max_abs_diff": {"pred_logits": float("nan")}}
    assert judge(nan, atol=1.0, metric_tol=1.0)  # NaN never passes
