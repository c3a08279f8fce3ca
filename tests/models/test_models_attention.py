"""Attention maps: captured weights, rollout, overlays and ``vitpipe explain``."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from components.core.checkpoint import CheckpointMeta, save_checkpoint
from components.models import build_model
from components.models.attention import attention_maps, capture_attention, overlay, rollout, token_layout


def _patches(model, seed=0):
    gh, gw = model.grid_size
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (2, gh * gw, model.patch_size**2 * 3), generator=g, dtype=torch.uint8), (gh, gw)


@pytest.mark.parametrize("name", ["vit_demo", "yolos_demo", "hybrid_demo"])
def test_captured_attention_matches_the_fast_path(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3).eval()
    patches, grid = _patches(model)
    with torch.no_grad():
        fast = model(patches, grid)
    outputs, layers = attention_maps(model, patches, grid)
    layout = token_layout(model)
    tokens = layout.prefix + layout.grid[0] * layout.grid[1] + layout.suffix
    assert len(layers) == len(model.backbone.blocks)
    for a in layers:
        assert a.shape == (2, model.backbone.blocks[0].attn.num_heads, tokens, tokens)
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
    fast_t = fast["pred_logits"] if isinstance(fast, dict) else fast
    out_t = outputs["pred_logits"] if isinstance(outputs, dict) else outputs
    torch.testing.assert_close(out_t, fast_t, rtol=1e-5, atol=1e-5)
    fresh = build_model(name, num_classes=3)
    assert [b.attn.fused_attn for b in model.backbone.blocks] == [b.attn.fused_attn for b in fresh.backbone.blocks]
    with torch.no_grad(), capture_attention(model) as again:
        pass
    assert again == []


def test_rollout_properties():
    eye = torch.eye(5).expand(2, 3, 5, 5)
    torch.testing.assert_close(rollout([eye, eye]), torch.eye(5).expand(2, 5, 5))
    a = torch.rand(1, 2, 5, 5).softmax(-1)
    joint = rollout([a, a, a])
    assert joint.shape == (1, 5, 5)
    torch.testing.assert_close(joint.sum(-1), torch.ones(1, 5))


def test_attention_maps_refuse_non_vit_models():
    with pytest.raises(TypeError, match="ViT-family"):
        token_layout(build_model("resnet_demo", num_classes=2))
    with pytest.raises(TypeError):
        token_layout(build_model("detr_demo", num_classes=2))


def test_overlay_shape_and_blend():
    img = np.zeros((50, 70, 3), np.uint8)
    out = overlay(img, np.ones((4, 4)), alpha=1.0)
    assert out.shape == img.shape and out.dtype == np.uint8 and out.max() > 200


def _write_checkpoint(tmp_path, name, task, num_classes=3):
    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes, img_size=64)
    meta = CheckpointMeta(model_name=name, task=task, model_config=model.build_config,
                          class_names=[f"c{i}" for i in range(num_classes)], image_size=64, patch_size=16)
    return save_checkpoint(tmp_path / name, model.state_dict(), meta)


def _run_explain(ckpt, image, out, capsys):
    """``vitpipe explain`` in this process (the console script's ``main``)."""
    from components.cli.main import main

    capsys.readouterr()
    rc = main(["explain", "--checkpoint", str(ckpt), "--image", str(image), "--out", str(out), "--top", "2"])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess([], rc, captured.out, captured.err)


@pytest.fixture()
def image_file(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (80, 120, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    Image.fromarray(rgb).save(path)
    return path


def test_cli_explain_classifier_and_detector(tmp_path, image_file, capsys):
    ckpt = _write_checkpoint(tmp_path, "vit_demo", "classification")
    res = _run_explain(ckpt, image_file, tmp_path / "out_cls", capsys)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "out_cls" / "explain.json").read_text())
    assert report["prediction"]["class_name"] in {"c0", "c1", "c2"}
    assert len(report["files"]) == 1 + report["layers"] == 5
    with Image.open(tmp_path / "out_cls" / "rollout.png") as im:
        assert im.size == (120, 80)

    det_ckpt = _write_checkpoint(tmp_path, "yolos_demo", "detection")
    res = _run_explain(det_ckpt, image_file, tmp_path / "out_det", capsys)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "out_det" / "explain.json").read_text())
    assert len(report["detections"]) == 2 and (tmp_path / "out_det" / "det_1.png").is_file()
    x0, y0, x1, y1 = report["detections"][0]["box_xyxy"]
    assert 0 <= x0 <= x1 <= 120 and 0 <= y0 <= y1 <= 80


def test_cli_explain_user_errors(tmp_path, image_file, capsys):
    cnn = _write_checkpoint(tmp_path, "resnet_demo", "classification")
    res = _run_explain(cnn, image_file, tmp_path / "o1", capsys)
    assert res.returncode == 2 and "ViT-family" in res.stderr
    vit = _write_checkpoint(tmp_path, "vit_demo", "classification")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    res = _run_explain(vit, bad, tmp_path / "o2", capsys)
    assert res.returncode == 2 and "bad.png" in res.stderr
    res = _run_explain(tmp_path / "nowhere", image_file, tmp_path / "o3", capsys)
    assert res.returncode == 2
