"""The convolutional ViT stem (``stem="conv"``): same token grid, checkpoints carry it, YOLOS takes it."""

from __future__ import annotations

import pytest
import torch

from components.data.patchify import images_to_patches
from components.models import build_model, load_weights
from components.models.mae import MaeConfigError, MaskedAutoencoder
from components.models.stem import conv_stem
from components.models.yolos import init_from_classifier


@pytest.mark.parametrize("patch,convs", [(16, 4), (8, 3)])
def test_conv_stem_reduces_by_the_patch_size(patch, convs):
    stem = conv_stem(96, patch)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in stem) == convs
    out = stem(torch.randn(2, 3, 64, 96))
    assert out.shape[-2:] == (64 // patch, 96 // patch)
    with pytest.raises(ValueError, match="power-of-two"):
        conv_stem(96, 12)


def test_conv_stem_vit_keeps_the_patch_contract_and_rebuilds_from_its_config():
    torch.manual_seed(0)
    model = build_model("vit_demo", num_classes=5, img_size=64, stem="conv").eval()
    plain = build_model("vit_demo", num_classes=5, img_size=64)
    assert model.backbone.patch_embed.grid_size == plain.backbone.patch_embed.grid_size == (4, 4)
    assert model.backbone.pos_embed.shape == plain.backbone.pos_embed.shape
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    patches, grid = images_to_patches(images, 16)
    logits = model(patches, grid)
    assert logits.shape == (3, 5) and torch.isfinite(logits).all()
    # The build config (what a checkpoint stores) rebuilds the same architecture: weights load strictly.
    assert model.build_config["stem"] == "conv"
    rebuilt = build_model(model.name, **model.build_config).eval()
    load_weights(rebuilt, model.state_dict())
    torch.testing.assert_close(rebuilt(patches, grid), logits)


def test_conv_stem_vit_fine_tunes_at_a_higher_resolution():
    small = build_model("vit_demo", num_classes=5, img_size=64, stem="conv")
    large = build_model("vit_demo", num_classes=5, img_size=96, stem="conv")
    load_weights(large, small.state_dict())  # conv weights are size-free; position embeddings resized
    assert large.backbone.pos_embed.shape[1] == 1 + 36
    torch.testing.assert_close(large.backbone.patch_embed.backbone[0].weight,
                               small.backbone.patch_embed.backbone[0].weight)


def test_conv_stem_is_for_vits_only():
    with pytest.raises(ValueError, match="ViT family"):
        build_model("resnet_demo", num_classes=5, stem="conv")
    with pytest.raises(ValueError, match="unknown stem"):
        build_model("vit_demo", num_classes=5, stem="pixels")
    # MAE hides patches from the encoder; a conv stem would see across them.
    with pytest.raises(MaeConfigError, match="linear patch embedding"):
        MaskedAutoencoder(build_model("vit_demo", num_classes=0, img_size=64, stem="conv"))


def test_yolos_takes_the_conv_stem_from_a_conv_stem_classifier():
    classifier = build_model("vit_demo", num_classes=5, img_size=64, stem="conv")
    detector = build_model("yolos_demo", num_classes=3, img_size=96, stem="conv", nms_iou=0.6)
    left = init_from_classifier(detector, classifier.state_dict())
    assert not any(k.startswith("backbone.") for k in left)
    torch.testing.assert_close(detector.backbone.patch_embed.backbone[3].weight,
                               classifier.backbone.patch_embed.backbone[3].weight)
    torch.testing.assert_close(detector.backbone.patch_embed.backbone[1].running_var,
                               classifier.backbone.patch_embed.backbone[1].running_var)
    out = detector.forward_images(torch.randn(2, 3, 96, 96))
    assert out["pred_boxes"].shape == (2, 20, 4)
    assert detector.build_config["nms_iou"] == 0.6
    plain = build_model("yolos_demo", num_classes=3, img_size=96)
    with pytest.raises(ValueError, match="model.overrides.stem=conv"):
        init_from_classifier(plain, classifier.state_dict())
    with pytest.raises(ValueError, match="nms_iou"):
        build_model("yolos_demo", num_classes=3, nms_iou=1.5)
