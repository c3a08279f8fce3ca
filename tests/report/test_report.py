"""The production-readiness report: measured numbers, rendered documents, MLflow artifact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from components.report.build import build_report
from components.report.config import (CostModel, Family, ReportConfig, default_cost_models, default_families,
                                      detection_families)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_report(ray_cluster, synth_dataset, mlflow_server, tmp_path_factory):
    # Classification target 0.0 is met after the first epoch, the detection target (mAP50
    # 0.5 after one short epoch) is not: both outcomes of "time to target" are exercised.
    cfg = ReportConfig.quick(cost_models=[CostModel(name="vit_demo", batch_large=4),
                                          CostModel(name="yolos_demo", batch_large=2)],
                             families=[Family(tiny="vit_demo", task="classification"), detection_families()[1]],
                             data_root=str(synth_dataset), target_top1=0.0, target_map50=0.5)
    out = tmp_path_factory.mktemp("report")
    files = build_report(cfg, out, tracking_uri=mlflow_server.uri, mode="quick")
    return files, json.loads(files.results.read_text())


# Published parameter counts (M) of the real models the report measures (papers / timm).
KNOWN_PARAMS_M = {
    "vit_base_patch16_224": 86.6, "resnet50": 25.6, "deit_small_patch16_224": 22.1, "tnt_s_patch16_224": 23.8,
    "detr_resnet50": 41.3, "yolos_s": 30.7, "lwdetr_tiny": 12.1, "lwdetr_small": 14.6,
}


@pytest.mark.parametrize("name", sorted(KNOWN_PARAMS_M))
def test_cost_models_are_the_real_models(name):
    """Each default cost row builds the real-size model: its parameter count is the published one."""
    from components.models import build_model

    entry = next(m for m in default_cost_models() if m.name == name)
    model = build_model(name, img_size=entry.img_size)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert params == pytest.approx(KNOWN_PARAMS_M[name], rel=0.02)


def test_rows_are_named_by_what_they_are():
    from components.models.registry import get_spec

    cost = {m.name: m for m in default_cost_models()}
    expected = {"vit_base_patch16_224", "deit_small_patch16_224", "tnt_s_patch16_224", "resnet50",
                "vit_base_r50_s16_224", "detr_resnet50", "yolos_s", "rtdetr_v2_r18", "rtdetr_v2_r50", "dfine_s",
                "lwdetr_small", "lwdetr_tiny"}
    assert set(cost) == expected
    assert cost["vit_base_patch16_224"].title == "ViT-B/16" and cost["deit_small_patch16_224"].title == "DeiT-S"
    assert cost["detr_resnet50"].img_size == 800 and cost["detr_resnet50"].title.startswith("DETR-R50")
    assert cost["rtdetr_v2_r18"].title.startswith("RT-DETRv2-S")
    assert all("demo" not in name for name in cost)
    # trained rows are small variants, labelled with the registry's description of that variant
    for family in default_families() + detection_families():
        assert family.title.startswith(get_spec(family.tiny).description)
        assert family.title.startswith("tiny "), family.title
    assert Family(tiny="vit_demo", task="classification", overrides={"stem": "conv"}).title.endswith("stem=conv")


def test_cost_numbers_are_measured_from_the_models(quick_report):
    from components.core.device import BF16_MIN_SPEEDUP, cpu_has_fast_bf16
    from components.models import build_model

    _, results = quick_report
    by_name = {r["measured"]["model"]: r for r in results["cost"]}
    assert set(by_name) == {"vit_demo", "yolos_demo"}
    precisions = {"fp32", "bf16"} if cpu_has_fast_bf16() else {"fp32"}
    for name, row in by_name.items():
        m = row["measured"]
        model = build_model(name)
        assert row["label"].startswith("tiny ")
        assert m["params"] == sum(p.numel() for p in model.parameters())
        assert m["task"] == model.task and m["threads"] == 1
        assert m["gmacs"] > 0 and set(m["by_precision"]) == precisions
        for p in m["by_precision"].values():
            assert p["latency_ms_b1"] > 0 and p["latency_ms_b1_min"] <= p["latency_ms_b1"]
            assert p["latency_runs_b1"] == 3 and p["batches_large"] == 1 and p["throughput"] > 0
            # a fresh process per model: the peak holds at least the model's fp32 weights
            assert p["peak_rss_mib_b1"] >= m["params"] * 4 / 2**20
            assert p["peak_rss_mib_large"] > 0
        if "bf16" in precisions:
            ratio = m["by_precision"]["fp32"]["latency_ms_b1"] / m["by_precision"]["bf16"]["latency_ms_b1"]
            assert m["bf16_speedup_b1"] == pytest.approx(ratio, rel=1e-2)
            assert m["auto_pick"] == ("bf16" if m["bf16_speedup_b1"] >= BF16_MIN_SPEEDUP else "fp32")
        else:
            assert m["auto_pick"] == "fp32" and m["bf16_speedup_b1"] is None
    assert by_name["yolos_demo"]["measured"]["batch_large"] == 2


def test_time_to_target_reached_and_not_reached(quick_report):
    _, results = quick_report
    rows = {r["result"]["model"]: r for r in results["training"]}
    vit, yolos = rows["vit_demo"]["result"], rows["yolos_demo"]["result"]
    assert rows["vit_demo"]["chance"] == pytest.approx(1 / 5) and rows["vit_demo"]["conv_bias"] == "none"
    assert vit["metric_name"] == "top1" and yolos["metric_name"] == "map50"
    assert vit["reached"] and vit["epochs_to_target"] == 1
    assert vit["time_to_target_s"] == vit["curve"][0]["train_s"] > 0
    assert not yolos["reached"] and yolos["time_to_target_s"] is None
    for r in (vit, yolos):
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
        for p in m["by_precision"].values():
            assert f"| {p['latency_ms_b1']:,.1f} |" in md
    assert "test-sized run: tiny models, not the real ones" in md
    assert "![inference cost](cost.png)" in md and "![training curves](training.png)" in md
    assert page.count("data:image/png;base64,") == 2
    for name in ("cost", "training"):
        data = files.plots[name].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    fastest = min((r for r in results["cost"] if r["measured"]["task"] == "classification"),
                  key=lambda r: r["measured"]["by_precision"][r["measured"]["auto_pick"]]["latency_ms_b1"])
    assert f"Faster per image (classification, batch 1, 1 thread, each at the precision `auto` picks): " \
           f"{fastest['label']}" in md
    vit = next(r for r in results["training"] if r["result"]["model"] == "vit_demo")
    assert vit["num_train"] > 0 and vit["num_val"] > 0
    assert "1 of 1 reached the target 0.0" in md
    assert f"{vit['num_train']} given training images ({vit['num_val']} val) at 64 px" in md
    assert "load average (1/5/15 min)" in md


def test_findings_answer_the_inductive_bias_question():
    """The verdict follows the measured gap between models with and without convolutions."""
    from components.report.render import findings

    def results(conv: float, plain: float) -> dict:
        rows = [{"label": label, "conv_bias": bias, "chance": 0.2,
                 "result": {"task": "classification", "best_metric": value, "reached": False, "target": 0.9}}
                for label, bias, value in (("cnn", "convolutions", conv), ("vit", "none", plain))]
        config = {"synth_num_train": 10, "synth_num_val": 2, "classification_image_size": 64, "batch_size": 8,
                  "augment_passes": 1, "max_epochs": 1, "time_budget_s": 1.0}
        return {"cost": [], "training": rows, "config": config, "machine": {"threads": 2}}

    assert any("need more data" in line for line in findings(results(0.9, 0.4)))
    assert any("no clear advantage" in line for line in findings(results(0.5, 0.48)))
    assert any("attention-only models are ahead" in line for line in findings(results(0.3, 0.6)))


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
    assert run.data.metrics["vit_demo.fp32.latency_ms_b1"] == pytest.approx(vit["by_precision"]["fp32"]["latency_ms_b1"])


def test_mac_counter_matches_the_published_vit_b16_count():
    """ViT-B/16 at 224: 17.58 GMACs (timm's figure, attention included)."""
    import torch

    from components.data.patchify import patchify
    from components.models import build_model
    from components.report.inference import count_macs

    model = build_model("vit_base_patch16_224").eval()
    patches, grid = patchify(torch.zeros(1, 224, 224, 3, dtype=torch.uint8), 16)
    assert count_macs(model, patches.float(), grid) == pytest.approx(17.58, rel=0.01)


def test_subprocess_measurement_with_build_overrides():
    from components.models import build_model
    from components.report.inference import measure_in_subprocess

    result = measure_in_subprocess("vit_demo", overrides={"stem": "conv"}, precision="fp32", warmup_runs=1,
                                   latency_runs=2, batch_large=2, threads=1, timeout_s=300)
    assert result.params == sum(p.numel() for p in build_model("vit_demo", stem="conv").parameters())
    assert set(result.by_precision) == {"fp32"} and result.auto_pick == "fp32"
    assert result.by_precision["fp32"].peak_rss_mib_large > 0
    with pytest.raises(TypeError, match="budget_s"):
        measure_in_subprocess("vit_demo", budget_s=1.0)


def _cli(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from components.cli.main import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, "report", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_cost_only_and_usage_errors(tmp_path):
    ok = _cli("--quick", "--no-train", "--families", "vit_demo", "--set", "cost_precision=fp32",
              "--out", str(tmp_path / "r"))
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


def test_benchmark_writes_results_that_the_benchmarks_page_renders(tmp_path):
    out = tmp_path / "readiness.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_readiness.py"), "--quick", "--no-train",
                           "--threads", "1", "--out", str(out)], capture_output=True, text=True, timeout=400,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    d = json.loads(out.read_text())
    m = d["machine"]
    assert m["cpu"] and m["cores"] >= 1 and len(m["loadavg_at_start"]) == 3 and len(m["loadavg_at_end"]) == 3
    assert d["gemm_peak_tflops"]["fp32"] > 0 and m["gemm_peak_tflops"] == d["gemm_peak_tflops"]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import table
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    text = "\n".join(table.readiness_table(d))
    for row in d["cost"]:
        assert row["label"] in text
    assert "Faster per image (classification" in text and m["cpu"] in text
    busy = {**d, "machine": {**m, "loadavg_at_start": [5.0 * m["cores"], 0, 0]}}
    assert "load average" in table.overloaded(busy)
