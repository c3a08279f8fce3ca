"""The production-readiness report: measured numbers, rendered documents, MLflow artifact."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from components.report.build import build_report
from components.report.config import ReportConfig, default_families


def _families(*tiny: str):
    """The default families of these tiny models, as registered (no build overrides)."""
    return [f for f in default_families() if f.tiny in tiny and not f.overrides]


@pytest.fixture(scope="module")
def quick_report(ray_cluster, synth_dataset, mlflow_server, tmp_path_factory):
    # Classification target 0.0 is met after the first epoch, the detection target (mAP50
    # 0.5 after one short epoch) is not: both outcomes of "time to target" are exercised.
    cfg = ReportConfig.quick(families=_families("vit_demo", "yolos_demo"), data_root=str(synth_dataset),
                             target_top1=0.0, target_map50=0.5)
    out = tmp_path_factory.mktemp("report")
    files = build_report(cfg, out, tracking_uri=mlflow_server.uri, mode="quick")
    return files, json.loads(files.results.read_text())


def test_cost_numbers_are_measured_from_the_models(quick_report):
    from components.models import build_model

    _, results = quick_report
    by_name = {r["measured"]["model"]: r["measured"] for r in results["cost"]}
    assert set(by_name) == {"vit_demo", "yolos_demo"}
    for name, m in by_name.items():
        model = build_model(name)
        assert m["params"] == sum(p.numel() for p in model.parameters())
        assert m["task"] == model.task
        assert m["gmacs"] > 0 and m["latency_ms_b1"] > 0 and m["throughput_b32"] > 0
        assert m["latency_runs_b1"] >= 3 and m["batches_b32"] >= 1
        assert m["peak_rss_mib_b32"] >= 0 and m["threads"] == 1


def test_a_family_with_build_overrides_measures_and_trains_that_model(synth_dataset, tmp_path):
    from components.models import build_model
    from components.report.inference import measure_model

    conv = [f for f in default_families() if f.overrides.get("stem") == "conv"]
    assert {f.task for f in conv} == {"classification", "detection"}
    yolos = next(f for f in conv if f.task == "detection")
    assert yolos.match_repeats == 3 and yolos.overrides["nms_iou"] == 0.5
    keys = [f.key for f in default_families()]  # MLflow metric prefixes: one per family
    assert len(set(keys)) == len(keys) and "vit_demo" in keys and "vit_demo_stemconv" in keys
    measured = measure_model("vit_demo", overrides={"stem": "conv"}, budget_s=0.1, batch_large=2, threads=1)
    assert measured.params == sum(p.numel() for p in build_model("vit_demo", stem="conv").parameters())
    assert measured.params > sum(p.numel() for p in build_model("vit_demo").parameters())


def test_time_to_target_reached_and_not_reached(quick_report):
    _, results = quick_report
    rows = {r["result"]["model"]: r["result"] for r in results["training"]}
    vit, yolos = rows["vit_demo"], rows["yolos_demo"]
    assert vit["metric_name"] == "top1" and yolos["metric_name"] == "map50"
    assert vit["reached"] and vit["epochs_to_target"] == 1
    assert vit["time_to_target_s"] == vit["curve"][0]["train_s"] > 0
    assert not yolos["reached"] and yolos["time_to_target_s"] is None
    for r in rows.values():
        assert len(r["curve"]) == r["epochs"] == 1
        assert 0.0 <= r["best_metric"] <= 1.0 and r["train_images_per_s"] > 0
        assert r["best_metric"] == max(p["metric"] for p in r["curve"])


def test_markdown_and_html_show_the_measured_numbers(quick_report):
    files, results = quick_report
    md = files.markdown.read_text()
    page = files.html.read_text()
    for row in results["cost"]:
        m = row["measured"]
        assert row["label"] in md and row["label"] in page
        assert f"{m['latency_ms_b1']:,.1f}" in md and f"{m['gmacs']:,.2f}" in md
    assert "![inference cost](cost.png)" in md and "![training curves](training.png)" in md
    assert page.count("data:image/png;base64,") == 2
    for name in ("cost", "training"):
        data = files.plots[name].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    assert "Lowest batch-1 latency" in md and "1 of 1 reached the target 0.0" in md


def test_report_is_logged_to_mlflow(quick_report, mlflow_server):
    from mlflow.tracking import MlflowClient

    files, results = quick_report
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(files.mlflow_run_id)
    assert run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/results.json", "report/cost.png"} <= artifacts
    vit = next(r["measured"] for r in results["cost"] if r["measured"]["model"] == "vit_demo")
    assert run.data.metrics["vit_demo.params"] == vit["params"]
    assert run.data.metrics["vit_demo.latency_ms_b1"] == pytest.approx(vit["latency_ms_b1"])


def test_mac_counter_matches_the_published_vit_b16_count():
    """ViT-B/16 at 224: 17.58 GMACs (timm's figure, attention included)."""
    import torch

    from components.data.patchify import patchify
    from components.models import build_model
    from components.report.inference import count_macs

    model = build_model("vit_base_patch16_224").eval()
    patches, grid = patchify(torch.zeros(1, 224, 224, 3, dtype=torch.uint8), 16)
    assert count_macs(model, patches.float(), grid) == pytest.approx(17.58, rel=0.01)


def test_subprocess_measurement_isolates_memory():
    from components.report.inference import measure_in_subprocess

    result = measure_in_subprocess("resnet_demo", budget_s=0.2, threads=1, timeout_s=300)
    assert result.model == "resnet_demo" and result.params > 0
    assert result.peak_rss_mib_b32 > 0 and result.peak_rss_mib_b32 >= result.peak_rss_mib_b1 * 0.5


def _cli(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from components.cli.main import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, "report", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_cost_only_and_usage_errors(tmp_path):
    ok = _cli("--quick", "--no-train", "--families", "vit_demo", "--out", str(tmp_path / "r"))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "r" / "report.md").exists() and (tmp_path / "r" / "report.html").exists()
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert [r["measured"]["model"] for r in results["cost"]] == ["vit_demo"] and results["training"] == []
    bad = _cli("--quick", "--families", "no_such_model", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "unknown --families" in bad.stderr
    bad = _cli("--quick", "--set", "max_epochs=zero", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "max_epochs" in bad.stderr
    bad = _cli("--quick", "--no-train", "--no-cost", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "nothing to report" in bad.stderr
