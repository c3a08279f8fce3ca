"""Registering checkpoints against a real ``mlflow server``: tags, exact pyfunc predictions,
URI resolution, the per-version cache, manual aliases with history, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from components.core.checkpoint import CheckpointError, load_checkpoint
from components.tracking import registry
from components.tracking.history import read_history
from components.tracking.packaging import model_from_checkpoint, predict_arrays
from components.tracking.promotion import set_alias
from components.tracking.registry import (
    RegistryError,
    fetch_checkpoint,
    load_registered,
    register_checkpoint,
    resolve_uri,
)


def _images(meta, n=3, seed=7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, meta.image_size, meta.image_size, 3), dtype=np.uint8)


def _reference(checkpoint: Path, images: np.ndarray):
    """What the checkpoint itself predicts: rebuilt straight from its files, fp32."""
    model, meta = model_from_checkpoint(checkpoint)
    return predict_arrays(model, meta, images)


def test_register_tags_and_pyfunc_predicts_exactly(mlflow_uri, model_name, checkpoint_factory,
                                                   tmp_path):
    ckpt = checkpoint_factory(1, metrics={"top1": 0.5, "top5": 1.0, "note": "text"})
    version = register_checkpoint(ckpt, task="classification", registered_name=model_name,
                                  tracking_uri=mlflow_uri)
    assert version == "1"
    mv = registry.client(mlflow_uri).get_model_version(model_name, version)
    assert mv.tags["task"] == "classification"
    assert mv.tags["data_fingerprint"] == "fp-1"
    assert mv.tags["metric.top1"] == "0.5" and mv.tags["metric.top5"] == "1"
    assert "metric.note" not in mv.tags  # only numbers are metrics
    assert len(mv.tags["git_commit"]) >= 7 and mv.tags["model_name"] == "vit_demo"
    assert mlflow.get_run(mv.tags["run_id"]).info.run_id == mv.tags["run_id"]

    set_alias(model_name, version, "champion", tracking_uri=mlflow_uri,
              cache_dir=tmp_path / "cache")
    images = _images(load_checkpoint(ckpt)[1])
    expected = _reference(ckpt, images)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model_name}@champion", dst_path=str(tmp_path))
    got = pyfunc.predict(images)
    assert got.dtype == np.float32 and got.shape == (3, 4)
    np.testing.assert_array_equal(got, expected)  # exactly, not approximately
    # The signature states the wire format: uint8 images in.
    assert pyfunc.metadata.get_input_schema().inputs[0].type == np.dtype(np.uint8)

    model, meta, resolved = load_registered(f"models:/{model_name}@champion",
                                            cache_dir=tmp_path / "cache", tracking_uri=mlflow_uri)
    assert resolved == registry.ResolvedModel(model_name, "1", "champion")
    np.testing.assert_array_equal(predict_arrays(model, meta, images), expected)
    state, _ = load_checkpoint(ckpt)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_detector_pyfunc_predicts_exactly(mlflow_uri, model_name, checkpoint_factory, tmp_path):
    ckpt = checkpoint_factory(2, model_name="yolos_demo", num_classes=3, metrics={"map": 0.1})
    version = register_checkpoint(ckpt, task="detection", registered_name=model_name,
                                  tracking_uri=mlflow_uri)
    images = _images(load_checkpoint(ckpt)[1], n=2)
    expected = _reference(ckpt, images)
    got = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}", dst_path=str(tmp_path)).predict(images)
    assert set(got) == {"pred_logits", "pred_boxes"}
    assert got["pred_logits"].shape[-1] == 4  # 3 classes + no-object
    for key in got:
        np.testing.assert_array_equal(got[key], expected[key])


def test_resolve_and_cache_per_version(mlflow_uri, model_name, checkpoint_factory, tmp_path):
    v1 = register_checkpoint(checkpoint_factory(3), task="classification",
                             registered_name=model_name, tracking_uri=mlflow_uri)
    v2 = register_checkpoint(checkpoint_factory(4), task="classification",
                             registered_name=model_name, tracking_uri=mlflow_uri)
    assert (v1, v2) == ("1", "2")
    assert resolve_uri(f"models:/{model_name}/2", tracking_uri=mlflow_uri).version == "2"
    cache = tmp_path / "cache"
    path = fetch_checkpoint(model_name, v2, cache_dir=cache, tracking_uri=mlflow_uri)
    assert path == cache / model_name / "2"
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "vitpipe.json"]
    assert load_checkpoint(path)[1].data_fingerprint == "fp-4"
    # A restart finds the cached copy without asking the server (here: a dead address).
    dead = "http://127.0.0.1:9"
    assert fetch_checkpoint(model_name, v2, cache_dir=cache, tracking_uri=dead) == path
    # A half-written cache entry is not trusted: it is downloaded again.
    (path / "model.safetensors").unlink()
    again = fetch_checkpoint(model_name, v2, cache_dir=cache, tracking_uri=mlflow_uri)
    assert (again / "model.safetensors").is_file()
    assert not [p for p in (cache / model_name).iterdir() if p.name.startswith(".")]


def test_manual_alias_rollback_and_history(mlflow_uri, model_name, checkpoint_factory, tmp_path):
    for seed in (5, 6):
        register_checkpoint(checkpoint_factory(seed), task="classification",
                            registered_name=model_name, tracking_uri=mlflow_uri)
    cache = tmp_path / "cache"
    set_alias(model_name, "2", "champion", reason="ship v2", tracking_uri=mlflow_uri,
              cache_dir=cache)
    set_alias(model_name, "1", "champion", reason="rollback: v2 misbehaves",
              tracking_uri=mlflow_uri, cache_dir=cache)
    assert resolve_uri(f"models:/{model_name}@champion", tracking_uri=mlflow_uri).version == "1"
    events = read_history(registry.client(mlflow_uri), model_name)
    assert [(e["action"], e["version"], e["previous"]) for e in events] == [
        ("manual", "2", None), ("manual", "1", "2")]
    assert events[1]["reason"] == "rollback: v2 misbehaves" and events[1]["time"]


# ------------------------------------------------------------------------ bad input
def test_unknown_model_version_alias_and_uri(mlflow_uri, model_name, checkpoint_factory,
                                             tmp_path):
    with pytest.raises(RegistryError, match="does not exist"):
        resolve_uri(f"models:/{model_name}@champion", tracking_uri=mlflow_uri)
    from components.cli.main import main as cli

    assert cli(["registry", "register", "--checkpoint", str(tmp_path / "nowhere"),
                "--model", model_name]) == 2  # not a checkpoint: exit 2, nothing registered
    assert cli(["registry", "register", "--checkpoint", str(checkpoint_factory(7)),
                "--model", model_name]) == 0  # task read from vitpipe.json
    with pytest.raises(RegistryError, match="no version 9"):
        resolve_uri(f"models:/{model_name}/9", tracking_uri=mlflow_uri)
    with pytest.raises(RegistryError, match="no alias @champion"):
        resolve_uri(f"models:/{model_name}@champion", tracking_uri=mlflow_uri)
    with pytest.raises(RegistryError, match="not a registry URI"):
        resolve_uri("runs:/abc/model")
    with pytest.raises(RegistryError, match="no version 9"):
        set_alias(model_name, "9", "champion", tracking_uri=mlflow_uri, cache_dir=tmp_path)
    with pytest.raises(RegistryError, match="does not exist"):
        set_alias("no-such-model-xyz", "1", "champion", tracking_uri=mlflow_uri,
                  cache_dir=tmp_path)
    assert registry.client(mlflow_uri).get_registered_model(model_name).aliases == {}


def test_missing_artifacts_refused_and_alias_kept(mlflow_server, mlflow_uri, model_name,
                                                  checkpoint_factory, tmp_path):
    for seed in (8, 9):
        register_checkpoint(checkpoint_factory(seed), task="classification",
                            registered_name=model_name, tracking_uri=mlflow_uri)
    set_alias(model_name, "1", "champion", tracking_uri=mlflow_uri, cache_dir=tmp_path / "a")
    # Lose version 2's files on the server's artifact store.
    uri = registry.client(mlflow_uri).get_model_version_download_uri(model_name, "2")
    stored = Path(mlflow_server.root) / "artifacts" / uri.split(":/", 1)[1]
    assert (stored / "artifacts" / "checkpoint" / "model.safetensors").is_file()
    shutil.rmtree(stored / "artifacts")
    with pytest.raises(RegistryError, match="cannot download|no complete checkpoint"):
        fetch_checkpoint(model_name, "2", cache_dir=tmp_path / "b", tracking_uri=mlflow_uri)
    with pytest.raises(RegistryError, match="version 2"):
        set_alias(model_name, "2", "champion", tracking_uri=mlflow_uri,
                  cache_dir=tmp_path / "c")
    assert resolve_uri(f"models:/{model_name}@champion", tracking_uri=mlflow_uri).version == "1"
    assert not (tmp_path / "b" / model_name / "2").exists()  # nothing half-cached


def test_wrong_task_and_broken_checkpoint_are_not_registered(mlflow_uri, model_name,
                                                             checkpoint_factory, tmp_path):
    ckpt = checkpoint_factory(10)
    with pytest.raises(RegistryError, match="classification model, not detection"):
        register_checkpoint(ckpt, task="detection", registered_name=model_name,
                            tracking_uri=mlflow_uri)
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        register_checkpoint(broken, task="classification", registered_name=model_name,
                            tracking_uri=mlflow_uri)
    # Weights of another architecture than vitpipe.json says: refused before registering.
    other = checkpoint_factory(11, num_classes=6)
    mismatched = tmp_path / "mismatched"
    shutil.copytree(ckpt, mismatched)
    shutil.copy(other / "model.safetensors", mismatched / "model.safetensors")
    with pytest.raises(CheckpointError, match="do not fit"):
        register_checkpoint(mismatched, task="classification", registered_name=model_name,
                            tracking_uri=mlflow_uri)
    # An encoder without classes (what MAE pretraining writes): nothing to serve.
    encoder = tmp_path / "encoder"
    shutil.copytree(ckpt, encoder)
    meta = json.loads((encoder / "vitpipe.json").read_text())
    (encoder / "vitpipe.json").write_text(json.dumps({**meta, "class_names": []}))
    with pytest.raises(RegistryError, match="no classes"):
        register_checkpoint(encoder, task="classification", registered_name=model_name,
                            tracking_uri=mlflow_uri)
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        registry.client(mlflow_uri).get_registered_model(model_name)


def test_registering_leaves_the_process_mlflow_uris_alone(mlflow_server, model_name,
                                                          checkpoint_factory, monkeypatch):
    """MLflow's URI setters write os.environ, which Ray workers and Serve replicas started
    later inherit: registering against an explicit server must not leave them behind."""
    import os

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    version = register_checkpoint(checkpoint_factory(9), task="classification",
                                  registered_name=model_name, tracking_uri=mlflow_server.uri)
    assert registry.client(mlflow_server.uri).get_model_version(model_name, version).version == version
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before


def test_no_tracking_uri_is_one_error_not_a_new_mlflow_db(tmp_path):
    """Without --tracking-uri or MLFLOW_TRACKING_URI, MLflow would open ./mlflow.db and the
    registry would look empty: `vitpipe registry list` once printed "(no registered models)"."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, "-m", "components.cli.main", "registry", "list"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "no MLflow server to read the registry from" in proc.stderr
    assert list(tmp_path.iterdir()) == []
