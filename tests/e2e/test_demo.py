"""The demo path at CI size: every step of `make demo`, so a broken step fails CI."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from components.core.config import ConfigError, load_config
from components.tracking.promotion import PromoteConfig
from pipelines._common import TrainResult
from pipelines.chain import (BccdResult, ChainConfig, ChainResult, bccd_gate_config, bccd_missing, gate_overrides,
                             load_stage, validate)
from pipelines.demo import (BCCD_ROOT_ENV, REPO, TINY_CONFIG, DemoConfig, JobConsole, bccd_test_photo, chain_command,
                            demo_serve_config, synthesize_data)
from pipelines.dev_services import Services
from tests.data.conftest import copy_bccd


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the subprocess has its own 1500 s limit; measured 684 s under heavy load
def test_tiny_demo_runs_every_step_end_to_end(tmp_path):
    """ray start → mlflow → synth → preflight → ray job submit of the chain (pretrain, finetune,
    detect, promote x3, bccd: train, promote, test) → serve deploy → real requests (a real
    BCCD photograph among them) → services stopped."""
    workdir = tmp_path / "demo"
    # A few real photographs of each BCCD list: the stage, its gate and Serve on real data.
    bccd_root = copy_bccd(tmp_path / "bccd", {"train": 8, "val": 4, "test": 3})
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "KEEP", BCCD_ROOT_ENV)}
    proc = subprocess.run([sys.executable, "-m", "pipelines.demo", "--tiny", f"workdir={workdir}",
                           f"bccd_root={bccd_root}"],
                          capture_output=True, text=True, timeout=1500, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    summary = json.loads((workdir / "demo-summary.json").read_text())

    pipeline = summary["pipeline"]
    assert list(pipeline) == ["pretrain", "finetune", "detect", "promote-pretrained", "promote-classification",
                              "promote-detection", "bccd", "promote-bccd"]
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
    # BCCD: its own registered name, so its first version takes @champion; scored on the test list.
    bccd, bccd_gate = pipeline["bccd"], pipeline["promote-bccd"]
    assert bccd["registered_version"] == "1" and bccd["test_split"] == "test"
    assert bccd["test_metrics"]["num_images"] == 3 and 0.0 <= bccd["test_metrics"]["map50"] <= 1.0
    assert bccd_gate["model"] == "bccd-detector" and bccd_gate["decision"] == "first"
    assert bccd_gate["candidate"] == bccd["registered_version"]
    assert re.search(r"^\[demo\] BCCD test mAP50: [01]\.\d{4} \(3 test photos\)$", proc.stdout, re.M)

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
    # The BCCD detector answers on a real 640x480 test photograph, in that photograph's pixels.
    photo = answers["bccd"]
    assert photo["image"] == str(bccd_test_photo(bccd_root))
    body = photo["answer"]
    assert body["model"]["name"] == "bccd-detector" and body["model"]["version"] == "1"
    assert body["image"] == {"height": 480, "width": 640}
    dets = body["detections"]
    assert dets, "the BCCD detector returned no boxes"
    for det in dets:
        x0, y0, x1, y1 = det["box"]
        assert 0 <= x0 <= x1 <= 640 and 0 <= y0 <= y1 <= 480, det
        assert det["label"] in ("RBC", "WBC", "Platelets") and 0.0 <= det["score"] <= 1.0
    assert sum(photo["counts"].values()) == len(dets)
    assert re.search(r"^\[demo\] POST /bccd/v1/detect \S+\.jpg \(640x480\) -> bccd-detector v1: \d+ box",
                     proc.stdout, re.M)

    # The terminal: each stage's progress and result; Ray's and the stages' logging went to the log.
    for stage, steps in (("pretrain", 3), ("finetune", 2), ("detect", 2), ("bccd", 2)):
        assert re.search(rf"^    \[demo-{stage}-\S+\] step {steps}/{steps} \(100%\)", proc.stdout, re.M), stage
        assert re.search(rf"^    \[chain\] {stage}: .* registered v\d+", proc.stdout, re.M), stage
    assert "[chain] promote-classification: " in proc.stdout
    assert re.search(r"^    \[chain\] bccd: bccd-detector v1 test mAP50 [01]\.\d{4}", proc.stdout, re.M)
    job_out, after = proc.stdout.split("[demo] ray job submit:", 1)[1].split("\n[demo] ", 1)
    assert after.startswith("BCCD test mAP50: ")  # the demo's next line: the bccd stage's headline
    shown = job_out.splitlines()[1:]
    assert shown and all(re.match(r"    (\[chain\] |\[demo-\w+-\S+\] step )", line) for line in shown), shown
    job_log = (workdir / "demo.log").read_text()
    assert " INFO " in job_log and "[chain] promote-detection: " in job_log

    # Nothing left running, no state left claiming services.
    assert not (workdir / "services.json").exists()
    assert "[demo] stopped ray" in proc.stdout and "[demo] stopped mlflow" in proc.stdout


def _chain_cfg(tmp_path, *overrides: str):
    cfg = load_config(DemoConfig, TINY_CONFIG)
    return load_config(ChainConfig, REPO / cfg.chain, [f"data_root={tmp_path / 'synth'}",
                                                      f"storage_path={tmp_path / 'runs'}", *overrides])


def test_chain_hands_the_pretrained_checkpoint_forward(tmp_path):
    cfg = _chain_cfg(tmp_path)
    validate(cfg, "t")  # every stage's config as it will run, before anything trains
    pretrain = TrainResult(stage="pretrain", run_name="demo-pretrain-t", task="classification",
                           model="vit_demo", run_id="r1", checkpoint=str(tmp_path / "ckpt"),
                           registered_version="1", metrics={"top1": 0.5})
    with pytest.raises(dataclasses.FrozenInstanceError):
        pretrain.checkpoint = "elsewhere"  # a result is what the stage made, not a slot to refill
    for name in ("finetune", "detect"):
        stage_cfg = load_stage(cfg, name, "t", init_from=pretrain.checkpoint)
        assert stage_cfg.model.init_from == str(tmp_path / "ckpt")
        assert stage_cfg.run.name == f"demo-{name}-t" and stage_cfg.registry.enabled and stage_cfg.mlflow.enabled
        assert stage_cfg.run.storage_path == str(tmp_path / "runs")
    assert load_stage(cfg, "pretrain", "t", init_from=None).model.init_from is None
    # Data tasks: at most one per core of this machine (the head's logical CPUs oversubscribe it).
    cores = max(1, os.cpu_count() or 1)
    assert load_stage(cfg, "detect", "t", pretrain.checkpoint).data.concurrency == cores
    gate = load_config(PromoteConfig, REPO / cfg.promote.config,
                       gate_overrides(cfg, "classification", "imagefolder", pretrain.registered_version))
    assert str(gate.candidate) == "1" and gate.data.concurrency == cores
    assert load_stage(_chain_cfg(tmp_path, "data_concurrency=3"), "pretrain", "t", None).data.concurrency == 3
    # The results JSON keeps the keys of each stage's own summary line.
    assert pretrain.to_dict() == {"run_name": "demo-pretrain-t", "task": "classification", "model": "vit_demo",
                                  "mlflow_run_id": "r1", "checkpoint": str(tmp_path / "ckpt"),
                                  "metrics": {"top1": 0.5}, "registered_version": "1", "steps": 0, "seconds": 0.0}
    assert TrainResult.from_summary("pretrain", pretrain.to_dict()) == pretrain


def test_chain_stage_can_start_from_scratch(tmp_path):
    cfg = _chain_cfg(tmp_path, "stages.detect.init_from_pretrain=false")
    assert load_stage(cfg, "detect", "t", init_from=str(tmp_path / "ckpt")).model.init_from is None
    assert load_stage(cfg, "finetune", "t", init_from=str(tmp_path / "ckpt")).model.init_from == str(tmp_path / "ckpt")
    # the shipped demo trains YOLOS from scratch (see pipelines/configs/chain_demo.yaml)
    demo = load_config(DemoConfig, REPO / "pipelines" / "configs" / "demo.yaml")
    shipped = load_config(ChainConfig, REPO / demo.chain)
    assert not shipped.stages["detect"].init_from_pretrain and shipped.stages["finetune"].init_from_pretrain
    validate(shipped, "t")
    # A bad stage config is found before anything trains: finetune with nothing to start from.
    bad = _chain_cfg(tmp_path, "stages.finetune.init_from_pretrain=false")
    with pytest.raises(ConfigError, match="finetune needs model.init_from"):
        validate(bad, "t")


def test_demo_submits_the_chain_with_its_data_and_storage(tmp_path):
    cfg = load_config(DemoConfig, TINY_CONFIG, ["ray.data_concurrency=3"])
    command = chain_command(cfg, data=tmp_path / "synth", storage=tmp_path / "runs", tag="t", out=tmp_path)
    assert command[:5] == ["python", "-m", "pipelines.chain", "--config", "pipelines/configs/chain_tiny.yaml"]
    chain = load_config(ChainConfig, REPO / cfg.chain, [a for a in command[7:]])
    assert (chain.data_root, chain.storage_path, chain.tag) == (str(tmp_path / "synth"), str(tmp_path / "runs"), "t")
    assert chain.concurrency() == 3 and chain.cache_dir == str(tmp_path / "model-cache")


def test_job_console_shows_results_and_progress_and_leaves_the_rest_to_the_log():
    out = io.StringIO()
    console = JobConsole(out)
    assert console.progress_mode == "plain"  # not a terminal: the job's periodic lines pass through
    for line in ["2026-01-01 INFO components.data: reading\n", "(TrainController pid=7) something\n",
                 "[demo-pretrain-t] step 1/3 (33%)  epoch 0\n", "[demo-pretrain-t] step 3/3 (100%)  epoch 0\n",
                 "[chain] pretrain: vit_demo (classification) top1 0.5000\n"]:
        console(line)
    assert out.getvalue().splitlines() == ["    [demo-pretrain-t] step 1/3 (33%)  epoch 0",
                                           "    [demo-pretrain-t] step 3/3 (100%)  epoch 0",
                                           "    [chain] pretrain: vit_demo (classification) top1 0.5000"]
    console.tty = True  # a terminal: the stage's line is redrawn in place
    out.seek(0), out.truncate()
    console("[demo-detect-t] step 1/2 (50%)\n")
    console("[demo-detect-t] step 2/2 (100%)\n")
    console("[chain] detect: done\n")
    assert out.getvalue() == ("\r    [demo-detect-t] step 1/2 (50%)\x1b[K\r    [demo-detect-t] step 2/2 (100%)\x1b[K"
                              "\n    [chain] detect: done\n")


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


def test_chain_bccd_stage_reads_its_own_data_and_is_gated_under_its_own_name(tmp_path):
    missing = _chain_cfg(tmp_path, f"bccd_root={tmp_path / 'nowhere'}")
    reason = bccd_missing(missing)
    assert reason is not None and str(tmp_path / "nowhere") in reason and "bccd_root=" in reason
    validate(missing, "t")  # a missing BCCD folder skips that stage; the others still validate
    root = tmp_path / "BCCD"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    cfg = _chain_cfg(tmp_path, f"bccd_root={root}")
    assert bccd_missing(cfg) is None
    validate(cfg, "t")
    stage = load_stage(cfg, "bccd", "t", init_from=str(tmp_path / "ckpt"))
    assert stage.data.root == str(root) and stage.data.format == "voc" and stage.task == "detection"
    assert stage.model.init_from is None  # random weights: the pretrained ViT is no hand-off here
    assert stage.run.name == "demo-bccd-t" and stage.max_steps == 2
    assert stage.registry.enabled and stage.registry.registered_name == "bccd-detector"
    gate = bccd_gate_config(cfg, stage.registry.registered_name, "2")
    assert (gate.registered_name, gate.task, gate.data.format, gate.data.root, gate.split, gate.candidate) == (
        "bccd-detector", "detection", "voc", str(root), "val", "2")
    # the YOLOS gate keeps the chain's synthetic data and the task's default name
    yolos = load_config(PromoteConfig, REPO / cfg.promote.config, gate_overrides(cfg, "detection", "coco", "1"))
    assert yolos.registered_name == "vitpipe-detector" and yolos.data.root == str(tmp_path / "synth")

    # The shipped demo: LW-DETR on a ViT-Ti on BCCD, 100 steps at a constant lr, from random weights.
    demo = load_config(ChainConfig, REPO / load_config(DemoConfig, REPO / "pipelines/configs/demo.yaml").chain,
                       [f"bccd_root={root}"])
    shipped = load_stage(demo, "bccd", "t", init_from=None)
    assert shipped.model.name == "lwdetr_vit_ti" and shipped.data.letterbox and shipped.model.init_from is None
    assert 0 < (shipped.max_steps or 0) <= 200 and shipped.optim.schedule == "constant"


def test_chain_result_carries_the_bccd_stage():
    from components.tracking.promotion import PromotionResult

    def trained(stage: str, model: str, version: str) -> TrainResult:
        return TrainResult(stage=stage, run_name=f"demo-{stage}-t", task="detection", model=model, run_id="r",
                           checkpoint="c", registered_version=version, metrics={"map50": 0.1})

    base = dict(pretrain=trained("pretrain", "vit_demo", "1"), finetune=trained("finetune", "vit_demo", "2"),
                detect=trained("detect", "yolos_demo", "1"), gates=(), seconds=1.0)
    skipped = ChainResult(**base, bccd_skipped="no BCCD data at X")
    assert list(skipped.to_dict()) == ["pretrain", "finetune", "detect", "bccd"]
    assert skipped.to_dict()["bccd"] == {"skipped": "no BCCD data at X"}
    gate = PromotionResult("bccd-detector", "3", None, "map", 0.0, 0.2, None, "first", "champion", "run")
    bccd = BccdResult(trained("bccd", "lwdetr_vit_ti", "3"), gate,
                      {"map": 0.1, "map50": 0.25, "num_images": 72, "per_class_ap": {"RBC": 0.3, "WBC": None}})
    out = ChainResult(**base, bccd=bccd).to_dict()
    assert list(out)[-2:] == ["bccd", "promote-bccd"]
    assert out["bccd"]["test_metrics"]["map50"] == 0.25 and out["bccd"]["test_split"] == "test"
    assert out["bccd"]["registered_version"] == "3" and out["promote-bccd"]["decision"] == "first"
    assert bccd.test_map50 == 0.25
    assert bccd.describe().startswith("bccd-detector v3 test mAP50 0.2500  mAP 0.1000  on 72 test photos  AP RBC 0.3000")


def test_demo_hands_the_chain_its_bccd_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(BCCD_ROOT_ENV, raising=False)
    cfg = load_config(DemoConfig, TINY_CONFIG)
    assert cfg.bccd_path() == (REPO / "../shared/data/bccd/BCCD").resolve()  # beside the checkout
    command = chain_command(cfg, data=tmp_path / "synth", storage=tmp_path / "runs", tag="t", out=tmp_path)
    chain = load_config(ChainConfig, REPO / cfg.chain, command[7:])
    assert chain.bccd_root == str(cfg.bccd_path())  # absolute: the job runs in a copy of the repo
    monkeypatch.setenv(BCCD_ROOT_ENV, str(tmp_path / "elsewhere"))
    assert cfg.bccd_path() == tmp_path / "elsewhere"
    monkeypatch.delenv(BCCD_ROOT_ENV)
    assert load_config(DemoConfig, TINY_CONFIG, ["bccd_root=data/bccd"]).bccd_path() == REPO / "data" / "bccd"

    root = copy_bccd(tmp_path, {"test": 2})
    first = (root / "ImageSets" / "Main" / "test.txt").read_text().split()[0]
    assert bccd_test_photo(root) == root / "JPEGImages" / f"{first}.jpg" and bccd_test_photo(root).is_file()


def test_demo_serve_config_adds_the_bccd_detector_application():
    from ray.serve.schema import ServeDeploySchema

    from components.serving.app import AppArgs

    src = REPO / "pipelines" / "configs" / "serve.yaml"
    config = demo_serve_config(src, port=18123, grpc_port=18124, env_vars={"MLFLOW_TRACKING_URI": "http://x"},
                               bccd_model="bccd-detector", bccd_score_threshold=0.1)
    ServeDeploySchema.model_validate(config)
    main_app, bccd = config["applications"]
    assert main_app == demo_serve_config(src, port=18123, grpc_port=18124,
                                         env_vars={"MLFLOW_TRACKING_URI": "http://x"})["applications"][0]
    assert bccd["route_prefix"] == "/bccd" and bccd["runtime_env"]["env_vars"]["MLFLOW_TRACKING_URI"] == "http://x"
    args = AppArgs.model_validate(bccd["args"])  # what components.serving.app:build_app is given
    assert args.classifier_uri is None and args.detector_uri == "models:/bccd-detector@champion"
    assert args.model_settings["score_threshold"] == 0.1 and args.replicas == 1
