import json

import pytest
import torch

from components.core.checkpoint import (
    META_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    CheckpointMeta,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)


def _meta(**kw):
    base = dict(
        model_name="vit_demo", task="classification",
        model_config={"num_classes": 3, "img_size": 64}, class_names=["a", "b", "c"],
        image_size=64, patch_size=16, data_fingerprint="abc", step=7, metrics={"top1": 0.5},
    )
    base.update(kw)
    return CheckpointMeta(**base)


def test_round_trip_is_exact(tmp_path):
    state = {"w": torch.randn(4, 3), "b": torch.arange(5)}
    save_checkpoint(tmp_path, state, _meta())
    loaded, meta = load_checkpoint(tmp_path)
    assert set(loaded) == {"w", "b"}
    assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["b"], state["b"])
    assert meta == _meta()
    assert isinstance(meta.mean, tuple)


def test_tied_weights_are_saved(tmp_path):
    shared = torch.randn(2, 2)
    save_checkpoint(tmp_path, {"a": shared, "b": shared}, _meta())
    loaded, _ = load_checkpoint(tmp_path)
    assert torch.equal(loaded["a"], loaded["b"])


def test_files_are_safetensors_and_json_only(tmp_path):
    save_checkpoint(tmp_path, {"w": torch.zeros(1)}, _meta())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([META_FILE, WEIGHTS_FILE])
    json.loads((tmp_path / META_FILE).read_text())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda raw: raw.update(surprise=1), "unknown keys"),
        (lambda raw: raw.pop("model_name"), "lacks required keys"),
        (lambda raw: raw.update(task="segmentation"), "unknown task"),
        (lambda raw: raw.update(format_version=99), "upgrade vitpipe"),
    ],
)
def test_bad_meta_is_a_clear_error(tmp_path, mutate, message):
    save_checkpoint(tmp_path, {"w": torch.zeros(1)}, _meta())
    raw = json.loads((tmp_path / META_FILE).read_text())
    mutate(raw)
    (tmp_path / META_FILE).write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=message):
        read_meta(tmp_path)


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no vitpipe.json"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, {"w": torch.zeros(1)}, _meta())
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_checkpoint(tmp_path)
