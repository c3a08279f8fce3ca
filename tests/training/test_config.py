"""Typed training config: mistakes are one clear error before any Ray worker starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.core.config import ConfigError
from components.data.config import DataConfig
from components.training.config import TrainConfig, load_train_config
from components.training.plan import StepPlan, steps_plan

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "pipelines" / "configs"


@pytest.mark.parametrize("name", ["pretrain", "finetune", "detect", "pretrain_ci", "detect_ci"])
def test_shipped_configs_validate(name):
    cfg = load_train_config(CONFIGS / f"{name}.yaml")
    assert cfg.task == ("detection" if name.startswith("detect") else "classification")


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        load_train_config(CONFIGS / "pretrain.yaml", ["optim.lrr=0.1"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"scaling\.num_workers"):
        load_train_config(CONFIGS / "pretrain.yaml", ["scaling.num_workers=two"])


def test_bad_data_section_is_named():
    with pytest.raises(ConfigError, match=r"data\.format"):
        load_train_config(CONFIGS / "pretrain.yaml", ["data.format=parquet"])
    with pytest.raises(ConfigError, match=r"image_size 70 must be a multiple"):
        load_train_config(CONFIGS / "pretrain.yaml", ["data.image_size=70"])


def test_data_section_is_typed_and_required(tmp_path):
    cfg = load_train_config(CONFIGS / "pretrain_ci.yaml", ["data.augment.hflip=0.25"])
    assert isinstance(cfg.data, DataConfig)  # validated once, with the rest of the config
    assert cfg.data.augment.hflip == 0.25 and cfg.data.format == "imagefolder"
    with pytest.raises(ConfigError, match=r"data\.augment\.hflipp"):
        load_train_config(CONFIGS / "pretrain_ci.yaml", ["data.augment.hflipp=0.5"])
    no_data = tmp_path / "no_data.yaml"
    no_data.write_text("task: classification\nmodel: {name: vit_demo}\n")
    with pytest.raises(ConfigError, match=r"  data: Field required"):
        load_train_config(no_data)


TRAINING_CONFIGS = ["pretrain", "pretrain_ci", "pretrain_mae", "pretrain_mae_ci", "pretrain_mae_bccd", "finetune",
                    "detect", "detect_ci", "detect_hf_ci", "detect_bccd", "detect_bccd_yolos", "detect_bccd_lwdetr",
                    "tune_ci", "tune_yolos"]


@pytest.mark.parametrize("name", TRAINING_CONFIGS)
def test_shipped_data_sections_load_unchanged(name):
    """Every training (and tune) YAML's data section loads key for key as the file has it."""
    import yaml

    from components.tune.config import load_tune_config

    path = CONFIGS / f"{name}.yaml"
    cfg = (load_tune_config if name.startswith("tune_") else load_train_config)(path)
    assert cfg.data.model_dump(mode="json", exclude_unset=True) == yaml.safe_load(path.read_text())["data"]


def test_detection_ranks_checkpoints_by_val_loss():
    cfg = TrainConfig.model_validate({"task": "detection", "data": {"root": "unused"}})
    assert (cfg.checkpoint.metric, cfg.checkpoint.mode) == ("val_loss", "min")


def test_run_name_must_be_a_plain_name():
    with pytest.raises(Exception, match="run.name|name"):
        TrainConfig.model_validate({"run": {"name": "../escape"}, "data": {"root": "unused"}})


def test_steps_plan():
    plan = steps_plan(100, num_workers=2, batch_size=8, grad_accum_steps=2, epochs=3, max_steps=None)
    # 50 rows per worker → 6 micro-batches → 3 optimizer steps per epoch
    assert plan == StepPlan(steps_per_epoch=3, total_steps=9, epochs=3)
    capped = steps_plan(100, num_workers=2, batch_size=8, grad_accum_steps=2, epochs=3, max_steps=4)
    assert capped.total_steps == 4 and capped.epochs == 2
    with pytest.raises(ValueError, match="less than one optimizer step"):
        steps_plan(10, num_workers=2, batch_size=8, grad_accum_steps=1, epochs=1, max_steps=None)


@pytest.mark.parametrize("pipeline, args, needle", [
    ("pretrain", ["optim.bogus=1"], "optim.bogus"),
    ("pretrain", ["model.name=vit_nope"], "unknown model 'vit_nope'"),  # reached the workers once
    ("detect", ["model.name=vit_demo"], "'vit_demo' is a classification model"),
    ("finetune", [], "model.init_from"),
    ("detect", ["task=classification"], "task must be 'detection'"),
])
def test_pipeline_config_errors_exit_2_without_starting_ray(pipeline, args, needle, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", f"pipelines.{pipeline}", "--config", str(CONFIGS / f"{pipeline}.yaml"),
         f"run.storage_path={tmp_path}", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing was written: no run started


def test_a_missing_data_root_exits_2_with_one_line(tmp_path):
    """A data mistake found once Ray is up (reading the split) is one line too, not a traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.pretrain", "--config", str(CONFIGS / "pretrain_ci.yaml"),
         f"run.storage_path={tmp_path}", f"data.root={tmp_path / 'missing'}"],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"pretrain: error: image folder {tmp_path / 'missing' / 'train'} does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_registered_init_without_a_registry_is_one_line_and_writes_nothing(tmp_path, synth_dataset):
    """``models:/`` with no tracking URI once made MLflow fall back to ./mlflow.db in the cwd."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.finetune", "--config", str(CONFIGS / "finetune.yaml"),
         f"run.storage_path={tmp_path / 'runs'}", f"data.root={synth_dataset}", "mlflow.enabled=false",
         "registry.enabled=false", "model.init_from=models:/vitpipe-classifier@champion"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "names a registered model: set mlflow.tracking_uri or MLFLOW_TRACKING_URI" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # no mlflow.db, no mlruns


def test_the_controller_poll_interval_is_set_for_the_fit_only(monkeypatch):
    from components.training.trainer import POLL_ENV, _controller_env

    monkeypatch.delenv(POLL_ENV, raising=False)
    assert TrainConfig.model_validate(
        {"data": {"format": "imagefolder", "root": "/x"}}).run.poll_interval_s == 0.5
    with _controller_env(0.25):
        assert os.environ[POLL_ENV] == "0.25"  # what Ray Train hands its controller
    assert POLL_ENV not in os.environ
    monkeypatch.setenv(POLL_ENV, "7")
    with pytest.raises(RuntimeError), _controller_env(0.5):
        assert os.environ[POLL_ENV] == "0.5"
        raise RuntimeError("fit failed")
    assert os.environ[POLL_ENV] == "7"  # restored, even after a failure
    with pytest.raises(ConfigError, match="poll_interval_s"):
        load_train_config(Path(__file__).resolve().parents[2] / "pipelines" / "configs" / "pretrain_ci.yaml",
                          ["run.poll_interval_s=0"])
