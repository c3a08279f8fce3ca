"""A vitpipe ViT's encoder in LW-DETR's ViT backbone (components.models.vit_transfer): the
translated blocks compute what timm's blocks compute, and a ViT that cannot fit is refused
with the reason."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from transformers import LwDetrViTBackbone, LwDetrViTConfig

from components.models import build_model
from components.models.vit_transfer import vit_to_lwdetr


def _timm_vit(*, init_values=None, depth=2) -> VisionTransformer:
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=64, patch_size=16, embed_dim=48, depth=depth, num_heads=3, num_classes=3,
                            init_values=init_values)
    with torch.no_grad():  # no zero biases or unit norms: every weight must land in its place
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return vit.eval()


def _lwdetr_backbone(depth=2) -> LwDetrViTBackbone:
    # every block global and one window: the same attention as timm's blocks
    config = LwDetrViTConfig(hidden_size=48, num_hidden_layers=depth, num_attention_heads=3, patch_size=16,
                             pretrain_image_size=64, image_size=64, window_block_indices=[], num_windows=1,
                             out_indices=[depth])
    return LwDetrViTBackbone(config).eval()


@pytest.mark.parametrize("init_values", [None, 0.5], ids=["no-layer-scale", "layer-scale"])
def test_translated_blocks_compute_what_timm_computes(init_values):
    vit = _timm_vit(init_values=init_values)
    backbone = _lwdetr_backbone()
    state = {f"backbone.{k}": v for k, v in vit.state_dict().items()}
    assert state["backbone.blocks.0.attn.qkv.bias"].abs().sum() > 0  # the key bias is really dropped
    result = backbone.load_state_dict(vit_to_lwdetr(state, backbone.state_dict()), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = vit.patch_embed(images) + vit.pos_embed[:, 1:]  # [2, 16, 48], no class token
        for block in vit.blocks:
            tokens = block(tokens)
        feature = backbone(images).feature_maps[-1]  # [2, 48, 4, 4]
    torch.testing.assert_close(feature.flatten(2).transpose(1, 2), tokens, rtol=1e-4, atol=1e-4)


def test_position_embeddings_resized_to_the_backbones_pretraining_grid():
    vit = build_model("vit_tiny_patch16_224", num_classes=3, img_size=224)  # 14 x 14
    detector = build_model("lwdetr_vit_ti", num_classes=3, img_size=320)
    key = next(k for k in detector.state_dict() if k.endswith("position_embeddings"))
    small = {**vit.state_dict()}
    small["backbone.pos_embed"] = small["backbone.pos_embed"][:, :1 + 7 * 7]  # a 7 x 7 grid
    moved = detector.pretrained_state(small)
    assert moved[key].shape == detector.state_dict()[key].shape == (1, 1 + 14 * 14, 192)
    assert torch.equal(moved[key][:, 0], small["backbone.pos_embed"][:, 0])  # the class row as it was
    missing = detector.init_from_pretrained(vit.state_dict())
    assert not any(".backbone.backbone." in k for k in missing)  # the whole ViT came from the classifier


def test_a_vit_that_does_not_fit_is_refused_with_the_reason():
    detector = build_model("lwdetr_vit_ti", num_classes=3, img_size=320)
    shallow = {f"backbone.{k}": v for k, v in _timm_vit(depth=2).state_dict().items()}
    with pytest.raises(ValueError, match="2 blocks, the detector's backbone 12"):
        detector.pretrained_state(shallow)
    conv = build_model("vit_demo", num_classes=3, stem="conv").state_dict()
    with pytest.raises(ValueError, match="convolutional stem"):
        detector.pretrained_state(conv)
