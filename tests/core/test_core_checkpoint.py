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
        (lambda raw: raw.update(image_size="large"), "image_size"),
        (lambda raw: raw.update(class_names="abc"), "class_names"),
        (lambda raw: raw.update(mean=[0.5, 0.5]), "mean"),
        (lambda raw: raw.update(metrics=[1]), "metrics must be a JSON object"),
        (lambda raw: raw.update(format_version="1"), None),  # lax: a numeric string is read
        (lambda raw: raw.update(metrics={"top1": 0.5, "note": "text"}), None),  # free-form
    ],
)
def test_bad_meta_is_a_clear_error(tmp_path, mutate, message):
    save_checkpoint(tmp_path, {"w": torch.zeros(1)}, _meta())
    raw = json.loads((tmp_path / META_FILE).read_text())
    mutate(raw)
    (tmp_path / META_FILE).write_text(json.dumps(raw))
    if message is None:
        assert read_meta(tmp_path).format_version == 1
        return
    with pytest.raises(CheckpointError, match=message):
        read_meta(tmp_path)


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe not utf-8", "not valid JSON"),
    (b"[1, 2]", "must hold a JSON object"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
])
def test_unreadable_meta_files_are_clear_errors(tmp_path, content, message):
    save_checkpoint(tmp_path, {"w": torch.zeros(1)}, _meta())
    (tmp_path / META_FILE).write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_meta(tmp_path)


def test_damaged_weights_are_a_clear_error(tmp_path):
    save_checkpoint(tmp_path, {"w": torch.zeros(8)}, _meta())
    data = (tmp_path / WEIGHTS_FILE).read_bytes()
    for damaged in (data[: len(data) // 2], b"\xff" * 8 + data[8:], b""):
        (tmp_path / WEIGHTS_FILE).write_bytes(damaged)
        with pytest.raises(CheckpointError, match="not a readable safetensors file"):
            load_checkpoint(tmp_path)


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no vitpipe.json"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, {"w": torch.zeros(1)}, _meta())
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_checkpoint(tmp_path)
