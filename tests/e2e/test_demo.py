"""The demo path at CI size: every step of `make demo`, so a broken step fails CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.demo import (REPO, TINY_CONFIG, DemoConfig, Services, build_plan, demo_serve_config,
                            synthesize_data)
from components.core.config import load_config


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the subprocess has its own 1500 s limit; measured 684 s under heavy load
def test_tiny_demo_runs_every_step_end_to_end(tmp_path):
    """ray start → mlflow → synth → preflight → ray job submit (pretrain, finetune, detect,
    promote x2) → serve deploy → real requests → services stopped."""
    workdir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "KEEP")}
    proc = subprocess.run([sys.executable, "-m", "pipelines.demo", "--tiny", f"workdir={workdir}"],
                          capture_output=True, text=True, timeout=1500, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    summary = json.loads((workdir / "demo-summary.json").read_text())

    pipeline = summary["pipeline"]
    assert list(pipeline) == ["pretrain", "finetune", "detect", "promote-pretrained", "promote-classification",
                              "promote-detection"]
    pretrained, finetuned = pipeline["pretrain"]["registered_version"], pipeline["finetune"]["registered_version"]
    assert pretrained and finetuned and pipeline["detect"]["registered_version"]
    # A fresh registry: the first promotion of each model sets @champion; the fine-tuned
    # classifier is then measured against the pretrained one and wins or not.
    assert pipeline["promote-pretrained"]["decision"] == "first"
    assert pipeline["promote-pretrained"]["candidate"] == pretrained
    gate = pipeline["promote-classification"]
    assert gate["candidate"] == finetuned and gate["champion"] == pretrained
    assert gate["decision"] in ("promoted", "refused")
    champion = finetuned if gate["decision"] == "promoted" else pretrained
    assert pipeline["promote-detection"]["decision"] == "first"
    assert pipeline["promote-detection"]["candidate"] == pipeline["detect"]["registered_version"]

    answers = summary["answers"]
    served = answers["models"]["models"]
    assert served["classifier"]["version"] == champion
    assert served["detector"]["version"] == pipeline["detect"]["registered_version"]
    class_names = served["classifier"]["class_names"]
    assert len(answers["classify"]) == 2 and len(answers["detect"]) == 2
    for item in answers["classify"]:
        preds = item["answer"]["predictions"]
        assert preds and {p["label"] for p in preds} <= set(class_names)
        assert abs(sum(p["score"] for p in preds) - 1.0) < 0.05 or len(preds) < len(class_names)
    for item in answers["detect"]:
        assert isinstance(item["answer"]["detections"], list)

    # Nothing left running, no state left claiming services.
    assert not (workdir / "services.json").exists()
    assert "[demo] stopped ray" in proc.stdout and "[demo] stopped mlflow" in proc.stdout


def test_demo_plan_hands_the_pretrained_checkpoint_forward(tmp_path):
    cfg = load_config(DemoConfig, TINY_CONFIG)
    plan = build_plan(cfg, data=tmp_path / "synth", storage=tmp_path / "runs", tag="t", out=tmp_path)
    names = [s["name"] for s in plan["steps"]]
    assert names == ["pretrain", "finetune", "detect", "promote-pretrained", "promote-classification",
                     "promote-detection"]
    steps = {s["name"]: s for s in plan["steps"]}
    assert "model.init_from={pretrain.checkpoint}" in steps["finetune"]["overrides"]
    assert "model.init_from={pretrain.checkpoint}" in steps["detect"]["overrides"]
    assert "candidate={pretrain.registered_version}" in steps["promote-pretrained"]["overrides"]
    assert "candidate={finetune.registered_version}" in steps["promote-classification"]["overrides"]
    assert "candidate={detect.registered_version}" in steps["promote-detection"]["overrides"]
    assert f"run.storage_path={tmp_path / 'runs'}" in steps["pretrain"]["overrides"]
    # Every stage's config + overrides validates as the training config it will be.
    from components.training.config import load_train_config

    for name in ("pretrain", "finetune", "detect"):
        overrides = [o.replace("{pretrain.checkpoint}", str(tmp_path / "ckpt")) for o in steps[name]["overrides"]]
        cfg_t = load_train_config(REPO / steps[name]["config"], overrides)
        assert cfg_t.run.name == f"demo-{name}-t" and cfg_t.registry.enabled and cfg_t.mlflow.enabled
    # Data tasks: at most one per core of this machine (the head's logical CPUs oversubscribe it).
    cores = max(1, os.cpu_count() or 1)
    for step in plan["steps"]:
        assert f"data.concurrency={cores}" in step["overrides"], step["name"]
    from components.tracking.promotion import PromoteConfig

    gate = [o.replace("{finetune.registered_version}", "2") for o in steps["promote-classification"]["overrides"]]
    assert load_config(PromoteConfig, REPO / steps["promote-classification"]["config"], gate).data.concurrency == cores
    pinned = build_plan(load_config(DemoConfig, TINY_CONFIG, ["ray.data_concurrency=3"]),
                        data=tmp_path / "synth", storage=tmp_path / "runs", tag="t", out=tmp_path)
    assert all("data.concurrency=3" in step["overrides"] for step in pinned["steps"])


def test_demo_stage_can_start_from_scratch(tmp_path):
    cfg = load_config(DemoConfig, TINY_CONFIG, ["stages.detect.init_from_pretrain=false"])
    plan = build_plan(cfg, data=tmp_path / "synth", storage=tmp_path / "runs", tag="t", out=tmp_path)
    steps = {s["name"]: s for s in plan["steps"]}
    assert not any(o.startswith("model.init_from=") for o in steps["detect"]["overrides"])
    assert "model.init_from={pretrain.checkpoint}" in steps["finetune"]["overrides"]
    # the shipped demo trains YOLOS from scratch (see pipelines/configs/demo.yaml)
    assert not load_config(DemoConfig, REPO / "pipelines" / "configs" / "demo.yaml").stages["detect"].init_from_pretrain


def test_demo_serve_config_binds_loopback_and_stays_valid():
    from ray.serve.schema import ServeDeploySchema

    config = demo_serve_config(REPO / "pipelines" / "configs" / "serve.yaml", port=18123, grpc_port=18124,
                               env_vars={"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"})
    ServeDeploySchema.model_validate(config)
    assert config["http_options"]["host"] == "127.0.0.1" and config["http_options"]["port"] == 18123
    for app in config["applications"]:
        assert app["runtime_env"]["env_vars"]["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:1"
    original = yaml.safe_load((REPO / "pipelines" / "configs" / "serve.yaml").read_text())
    assert [a["import_path"] for a in config["applications"]] == [a["import_path"] for a in original["applications"]]


def test_second_run_reuses_the_mlflow_server_and_the_dataset(tmp_path):
    services = Services(tmp_path)
    try:
        uri = services.mlflow()
        pid = services.state["mlflow"]["pid"]
        again = Services(tmp_path)  # a new demo process reads the recorded state
        assert again.mlflow() == uri and again.state["mlflow"]["pid"] == pid
    finally:
        Services(tmp_path).stop()
    assert not _alive(pid) and not (tmp_path / "services.json").exists()

    cfg = load_config(DemoConfig, TINY_CONFIG, ["synth.num_train=8", "synth.num_val=4"])
    root = synthesize_data(cfg.synth, tmp_path / "synth")
    stamp = (root / "vitpipe-synth.json").stat().st_mtime_ns
    synthesize_data(cfg.synth, tmp_path / "synth")
    assert (root / "vitpipe-synth.json").stat().st_mtime_ns == stamp
    assert len(list((root / "images" / "val").iterdir())) == 4
