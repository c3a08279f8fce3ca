"""Classifiers: every registered classification name runs forward/backward on patch tensors."""

from __future__ import annotations

import pytest
import torch

from components.data.patchify import images_to_patches
from components.models import build_model, list_models, load_weights, resize_pos_embed, set_head

# Paper-sized models run at reduced depth/width here (their real sizes are checked on the
# meta device in test_sizes.py); the tiny ones run as registered.
SMALL = {"depth": 1}
SHRINK = {
    "vit": dict(depth=1, embed_dim=48, num_heads=2),
    "tnt": dict(depth=1, embed_dim=48, inner_dim=12, num_heads_outer=2, num_heads_inner=2),
    "hybrid": dict(depth=1, embed_dim=48, num_heads=2),
}


def small_model(name: str, num_classes: int = 5, **extra):
    from components.models.registry import get_spec

    spec = get_spec(name)
    overrides = {} if name.endswith("_demo") or spec.family == "cnn" else dict(SHRINK[spec.family])
    img = 64 if spec.patch_size == 16 else 56
    return build_model(name, num_classes=num_classes, img_size=img, **overrides, **extra)


@pytest.mark.parametrize("name", list_models("classification"))
def test_forward_backward_every_classifier(name):
    torch.manual_seed(0)
    model = small_model(name, head="mlp")
    assert model.task == "classification"
    p = model.patch_size
    gh, gw = model.grid_size
    patches = torch.randint(0, 256, (2, gh * gw, p * p * 3), dtype=torch.uint8)
    logits = model(patches, (gh, gw))
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()
    logits.square().sum().backward()
    no_grad = [n for n, prm in model.named_parameters() if prm.requires_grad and prm.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    zero = [n for n, prm in model.named_parameters() if prm.grad is not None and not torch.isfinite(prm.grad).all()]
    assert not zero


def test_patches_and_images_take_the_same_path():
    torch.manual_seed(0)
    model = build_model("vit_demo", num_classes=4).eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    patches, grid = images_to_patches(images, 16)
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    normalised = (images.float() / 255 - mean) / std
    with torch.no_grad():
        a = model(patches, grid)
        b = model.forward_images(normalised)
        c = model(patches.float(), torch.tensor([grid, grid]))  # float 0..255 and a [B, 2] grid tensor
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, c)


def test_wrong_grid_is_a_clear_error():
    model = build_model("vit_demo", num_classes=4)
    with pytest.raises(ValueError, match="grid"):
        model(torch.zeros(1, 36, 768, dtype=torch.uint8), (6, 6))


@pytest.mark.parametrize("name", ["vit_demo", "deit_demo"])
def test_patch_size_override_reaches_the_patch_embedding(name):
    """``patch_size=8`` builds an 8x8 patch embedding with one position per 8x8 patch (a
    wrapper that said 8 while timm embedded 16x16 patches once trained the wrong model)."""
    model = build_model(name, num_classes=5, img_size=64, patch_size=8)
    assert model.patch_size == 8 and model.grid_size == (8, 8)
    assert model.backbone.patch_embed.proj.kernel_size == (8, 8)
    assert model.backbone.pos_embed.shape[1] == 1 + 8 * 8
    patches, grid = images_to_patches(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8), 8)
    assert model(patches, grid).shape == (2, 5)
    rebuilt = build_model(model.name, **model.build_config)
    assert rebuilt.backbone.patch_embed.proj.kernel_size == (8, 8)


def test_mlp_head_then_linear_head_for_fine_tuning():
    model = build_model("vit_demo", num_classes=10, head="mlp")
    assert hasattr(model.head, "hidden") and isinstance(model.head.act, torch.nn.Tanh)
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    set_head(model, 3, kind="linear")
    assert not hasattr(model.head, "hidden") and model.head.fc.out_features == 3
    assert torch.count_nonzero(model.head.fc.weight) == 0  # fine-tuning head starts at zero
    assert model.build_config["num_classes"] == 3 and model.build_config["head"] == "linear"
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, backbone_before[k])
    rebuilt = build_model(model.name, **model.build_config)
    rebuilt.load_state_dict(model.state_dict())


def test_resize_pos_embed_identity_and_shape():
    pe = torch.randn(1, 1 + 16, 8)
    assert resize_pos_embed(pe, (4, 4)) is pe
    out = resize_pos_embed(pe, (6, 5))
    assert out.shape == (1, 1 + 30, 8)
    torch.testing.assert_close(out[:, :1], pe[:, :1])  # class token untouched
    back = resize_pos_embed(resize_pos_embed(pe, (8, 8)), (4, 4))
    assert back.shape == pe.shape
    mid = torch.randn(3, 1, 1 + 16, 8)
    assert resize_pos_embed(mid, (2, 2)).shape == (3, 1, 5, 8)
    with pytest.raises(ValueError):
        resize_pos_embed(torch.randn(1, 1 + 15, 8), (4, 4))


def test_load_weights_at_another_resolution():
    torch.manual_seed(0)
    small = build_model("vit_demo", num_classes=3, img_size=64)
    large = build_model("vit_demo", num_classes=3, img_size=96)
    missing, unexpected = load_weights(large, small.state_dict())
    assert not missing and not unexpected
    expected = resize_pos_embed(small.backbone.pos_embed.detach(), (6, 6), (4, 4))
    torch.testing.assert_close(large.backbone.pos_embed.detach(), expected)
    torch.testing.assert_close(large.backbone.blocks[0].attn.qkv.weight, small.backbone.blocks[0].attn.qkv.weight)
    out = large(torch.zeros(1, 36, 768, dtype=torch.uint8), (6, 6))
    assert out.shape == (1, 3)


def test_same_seed_same_model_and_output():
    def run():
        torch.manual_seed(123)
        model = build_model("vit_demo", num_classes=4).eval()
        x = torch.Generator().manual_seed(1)
        patches = torch.randint(0, 256, (2, 16, 768), generator=x, dtype=torch.uint8)
        return model(patches, (4, 4))

    torch.testing.assert_close(run(), run(), rtol=0, atol=0)


def test_unknown_model_name():
    with pytest.raises(KeyError, match="unknown model"):
        build_model("vit_gigantic", num_classes=2)
