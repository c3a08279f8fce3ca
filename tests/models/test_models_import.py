"""Weight import: reference models with random weights (timm, transformers; nothing is
downloaded) are saved to local files, imported into vitpipe models, and agree to 1e-5."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from components.models import build_model
from components.models.import_weights import detect_format, import_weights, read_state_dict

TINY = dict(depth=2, embed_dim=96, num_heads=3)


def _images(b=2, h=64, w=64, seed=0):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_timm_vit_safetensors_import(tmp_path):
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=5, **TINY).eval()
    torch.nn.init.normal_(ref.head.weight, std=0.1)  # timm zero-inits it; make the head matter
    path = tmp_path / "timm_vit.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    assert detect_format(read_state_dict(path)) == "timm"
    ours = build_model("vit_demo", num_classes=5, img_size=64, **TINY).eval()
    import_weights(ours, path)
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_images(x), ref(x), rtol=1e-5, atol=1e-5)


def test_timm_vit_import_at_another_resolution(tmp_path):
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=5, **TINY)
    path = tmp_path / "timm_vit.pth"
    torch.save(ref.state_dict(), path)
    ours = build_model("vit_demo", num_classes=5, img_size=96, **TINY)
    import_weights(ours, path)
    assert ours.backbone.pos_embed.shape == (1, 1 + 36, 96)
    torch.testing.assert_close(ours.backbone.cls_token, ref.cls_token)


def test_hf_vit_for_image_classification_import(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=96, num_hidden_layers=2, num_attention_heads=3, intermediate_size=384,
                                 image_size=64, patch_size=16, num_labels=5)
    ref = transformers.ViTForImageClassification(cfg).eval()
    path = tmp_path / "hf_vit.bin"
    torch.save(ref.state_dict(), path)
    assert detect_format(read_state_dict(path)) == "hf_vit"
    ours = build_model("vit_demo", num_classes=5, img_size=64, norm_eps=cfg.layer_norm_eps, **TINY).eval()
    import_weights(ours, path)
    x = _images(seed=1)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_images(x), ref(pixel_values=x).logits, rtol=1e-5, atol=1e-5)


def test_hf_vit_model_pooler_is_the_mlp_head_hidden_layer(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=96, num_hidden_layers=2, num_attention_heads=3, intermediate_size=384,
                                 image_size=64, patch_size=16)
    ref = transformers.ViTModel(cfg).eval()
    path = tmp_path / "hf_vit_model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    ours = build_model("vit_demo", num_classes=5, img_size=64, head="mlp", norm_eps=cfg.layer_norm_eps, **TINY).eval()
    missing, unexpected = import_weights(ours, path, strict=False)
    assert set(missing) == {"head.fc.weight", "head.fc.bias"} and not unexpected
    x = _images(seed=2)
    with torch.no_grad():
        pooled = ours.head.act(ours.head.hidden(ours.forward_features(x)))
        torch.testing.assert_close(pooled, ref(pixel_values=x).pooler_output, rtol=1e-5, atol=1e-5)


def test_hf_yolos_import(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.YolosConfig(hidden_size=96, num_hidden_layers=2, num_attention_heads=3, intermediate_size=384,
                                   image_size=[64, 96], patch_size=16, num_detection_tokens=10, num_labels=3,
                                   use_mid_position_embeddings=True)
    ref = transformers.YolosForObjectDetection(cfg).eval()
    path = tmp_path / "hf_yolos.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    assert detect_format(read_state_dict(path)) == "hf_yolos"
    ours = build_model("yolos_demo", num_classes=3, img_size=(64, 96), num_det_tokens=10, mid_pos_embed=True,
                       norm_eps=cfg.layer_norm_eps, **TINY).eval()
    import_weights(ours, path, source_grid=(4, 6))
    x = _images(h=64, w=96, seed=3)
    with torch.no_grad():
        out, expected = ours.forward_images(x), ref(pixel_values=x)
    torch.testing.assert_close(out["pred_logits"], expected.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["pred_boxes"], expected.pred_boxes, rtol=1e-5, atol=1e-5)


def test_unrecognised_file_is_a_clear_error(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="unrecognised"):
        import_weights(build_model("vit_demo", num_classes=2), path)
    with pytest.raises(FileNotFoundError):
        import_weights(build_model("vit_demo", num_classes=2), tmp_path / "missing.pth")


def _to_hub_layout(state):
    """transformers 5 key names → the names stored in hub checkpoints (``encoder.layer.N...``)."""
    names = {"attention.q_proj": "attention.attention.query", "attention.k_proj": "attention.attention.key",
             "attention.v_proj": "attention.attention.value", "attention.o_proj": "attention.output.dense",
             "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    out = {}
    for key, value in state.items():
        if ".layers." in key:
            head, rest = key.split(".layers.", 1)
            idx, name = rest.split(".", 1)
            stem, kind = name.rsplit(".", 1)
            key = f"{head}.encoder.layer.{idx}.{names.get(stem, stem)}.{kind}"
        out[key] = value
    return out


def test_hf_vit_hub_layout_import(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=96, num_hidden_layers=2, num_attention_heads=3, intermediate_size=384,
                                 image_size=64, patch_size=16, num_labels=4)
    ref = transformers.ViTForImageClassification(cfg).eval()
    hub = _to_hub_layout(ref.state_dict())
    assert any(".encoder.layer.1.attention.attention.query.weight" in k for k in hub)
    ours = build_model("vit_demo", num_classes=4, img_size=64, norm_eps=cfg.layer_norm_eps, **TINY).eval()
    import_weights(ours, hub)
    x = _images(seed=4)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_images(x), ref(pixel_values=x).logits, rtol=1e-5, atol=1e-5)


def test_hf_detr_import(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    cfg = transformers.DetrConfig(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                  decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                                  num_queries=10, num_labels=3, dropout=0.0, auxiliary_loss=True)
    ref = transformers.DetrForObjectDetection(cfg).eval()  # timm resnet50 backbone, random weights
    path = tmp_path / "hf_detr.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    assert detect_format(read_state_dict(path)) == "hf_detr"
    ours = build_model("detr_resnet50", num_classes=3, img_size=64, hidden_dim=64, num_heads=4,
                       num_encoder_layers=2, num_decoder_layers=2, ffn_dim=128, num_queries=10, dropout=0.0).eval()
    import_weights(ours, path)
    x = _images(seed=5)
    with torch.no_grad():
        out, expected = ours.forward_images(x), ref(pixel_values=x)
    torch.testing.assert_close(out["pred_logits"], expected.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["pred_boxes"], expected.pred_boxes, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the first decoder layer's prediction (auxiliary output)
        hidden = ref.model(pixel_values=x).intermediate_hidden_states[0]  # [L, B, Q, D]
        aux_boxes = ref.bbox_predictor(hidden).sigmoid()
    assert len(out["aux_outputs"]) == 1
    torch.testing.assert_close(out["aux_outputs"][0]["pred_boxes"], aux_boxes, rtol=1e-5, atol=1e-5)
