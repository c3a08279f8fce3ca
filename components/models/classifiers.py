"""Classifiers on timm: ViT, DeiT, TNT, hybrid ResNet-ViT, ResNet-50, and tiny CPU variants.

timm builds the backbone (``pretrained=False``, ``num_classes=0``); vitpipe adds the head
(:mod:`components.models.heads`) and the patch-tensor input (:class:`VisionModel`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import timm
import torch
from torch import nn

from components.models.base import IMAGENET_MEAN, IMAGENET_STD, VisionModel
from components.models.heads import make_head
from components.models.registry import ModelSpec, register
from components.models.stem import timm_stem_kwargs


class TimmClassifier(VisionModel):
    """A timm backbone + a vitpipe head.

    ``forward(patches [B, N, P*P*3], grid) → logits [B, num_classes]``;
    ``forward_images(images [B, 3, H, W] normalised) → logits [B, num_classes]``.
    ``forward_features(images) → [B, D]`` pooled features (before the head).
    """

    task = "classification"

    def __init__(
        self, backbone: nn.Module, *, family: str, num_classes: int, head: str, img_size: int | tuple[int, int],
        patch_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    ) -> None:
        super().__init__(img_size=img_size, patch_size=patch_size, mean=mean, std=std)
        self.family = family
        self.backbone = backbone
        self.num_features = int(backbone.num_features)
        self.num_classes = num_classes
        self.head_kind = head
        self.head = make_head(head, self.num_features, num_classes)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(self.backbone.forward_features(images), pre_logits=True)

    def forward_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(images))

    def pos_embed_layout(self) -> dict[str, tuple[int, tuple[int, int]]]:
        """Position-embedding entries of this classifier: ``{key: (prefix tokens, grid)}``."""
        bb = self.backbone
        if self.family in ("vit", "hybrid") and getattr(bb, "pos_embed", None) is not None:
            prefix = 0 if getattr(bb, "no_embed_class", False) else int(bb.num_prefix_tokens)
            return {"backbone.pos_embed": (prefix, tuple(bb.patch_embed.grid_size))}
        if self.family == "tnt":
            return {"backbone.patch_pos": (1, tuple(bb.pixel_embed.grid_size))}
        return {}


def _build_timm(
    *, timm_name: str, family: str, patch_size: int, num_classes: int, img_size: int | tuple[int, int],
    head: str = "linear", mean=IMAGENET_MEAN, std=IMAGENET_STD, norm_eps: float | None = None,
    stem: str = "patch", **timm_kwargs: Any,
) -> TimmClassifier:
    """``norm_eps`` sets the transformer LayerNorm eps (Hugging Face ViTs use 1e-12).

    ``stem="conv"`` (ViT family only) replaces the linear patch embedding with the
    convolutional stem of :mod:`components.models.stem`; the token grid stays the same.
    """
    if stem != "patch":
        if family != "vit":
            raise ValueError(f"stem={stem!r} is for the ViT family; this model is family {family!r}")
        timm_kwargs.update(timm_stem_kwargs(stem))
    if family != "cnn":
        timm_kwargs["img_size"] = img_size
    if family in ("vit", "tnt"):  # the hybrid's patch is its CNN stem's stride, fixed by the stem
        timm_kwargs["patch_size"] = patch_size
    if norm_eps is not None:
        timm_kwargs["norm_layer"] = partial(nn.LayerNorm, eps=norm_eps)
    backbone = timm.create_model(timm_name, pretrained=False, num_classes=0, **timm_kwargs)
    return TimmClassifier(
        backbone, family=family, num_classes=num_classes, head=head, img_size=img_size,
        patch_size=patch_size, mean=mean, std=std,
    )


def _register(name: str, timm_name: str, family: str, *, img_size: int = 224, patch_size: int = 16,
              description: str = "", **timm_defaults: Any) -> None:
    register(ModelSpec(
        name=name, task="classification", family=family,
        builder=partial(_build_timm, timm_name=timm_name, family=family, patch_size=patch_size),
        img_size=img_size, patch_size=patch_size, defaults=timm_defaults, description=description,
    ))


# Paper-sized models (1000 classes by default); timm names.
for _name, _desc in [
    ("vit_tiny_patch16_224", "ViT-Ti/16"), ("vit_small_patch16_224", "ViT-S/16"),
    ("vit_base_patch16_224", "ViT-B/16"), ("vit_large_patch16_224", "ViT-L/16"),
    ("deit_tiny_patch16_224", "DeiT-Ti"), ("deit_small_patch16_224", "DeiT-S"),
    ("deit_base_patch16_224", "DeiT-B"),
]:
    _register(_name, _name, "vit", description=_desc)
_register("vit_huge_patch14_224", "vit_huge_patch14_224", "vit", patch_size=14, description="ViT-H/14")
_register("tnt_s_patch16_224", "tnt_s_patch16_224", "tnt", description="TNT-S")
_register("tnt_b_patch16_224", "tnt_b_patch16_224", "tnt", description="TNT-B")
_register("vit_base_r50_s16_224", "vit_base_r50_s16_224", "hybrid", description="R50+ViT-B/16 hybrid")
_register("resnet50", "resnet50", "cnn", description="ResNet-50 baseline")

# Tiny CPU-sized variants for tests and the demo (img 64 by default; any multiple of 16).
_register("vit_demo", "vit_tiny_patch16_224", "vit", img_size=64, description="tiny ViT (4x96, 3 heads)",
          embed_dim=96, depth=4, num_heads=3)
_register("deit_demo", "deit_tiny_patch16_224", "vit", img_size=64, description="tiny DeiT (4x96, 3 heads)",
          embed_dim=96, depth=4, num_heads=3)
_register("tnt_demo", "tnt_s_patch16_224", "tnt", img_size=64, description="tiny TNT (2 blocks, 96/12)",
          embed_dim=96, inner_dim=12, depth=2, num_heads_outer=3, num_heads_inner=2)
_register("hybrid_demo", "vit_tiny_r_s16_p8_224", "hybrid", img_size=64,
          description="tiny ResNet-stem + ViT hybrid (2 blocks)", depth=2, embed_dim=96, num_heads=3)
_register("resnet_demo", "resnet18", "cnn", img_size=64, description="tiny ResNet (BasicBlock x1 per stage)",
          layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_width=16)

