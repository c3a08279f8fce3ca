"""YOLOS (Fang et al. 2021): a plain ViT that detects with learnable [DET] tokens.

The ViT is timm's, built exactly like the classification ViT/DeiT of the same size, so a
classification checkpoint initialises it (:func:`init_from_classifier`, position
embeddings resized to the detection grid). ``num_det_tokens`` learnable [DET] tokens with
their own position embeddings are appended to the patch sequence; the [CLS] token of the
classification ViT stays in the sequence as in the reference implementation (and the
Hugging Face port), but no prediction is read from it: class and box MLP heads read the
[DET] tokens. ``mid_pos_embed`` adds per-layer position embeddings before every block but
the first (YOLOS-S/B, "dwr" scaling). ``stem="conv"`` swaps the linear patch embedding for
the convolutional stem of :mod:`components.models.stem` (same token grid): the plain ViT
does not localise boxes on small data, the stem does. ``nms_iou`` (None = off) is the
class-aware NMS threshold postprocessing applies to this model's detections, needed when
it is trained with one-to-many matching; as a build keyword it travels in checkpoints.

Output (the detection contract)::

    {"pred_logits": [B, Q, num_classes + 1] (last = no object),
     "pred_boxes":  [B, Q, 4] normalised cxcywh in 0..1,
     "aux_outputs": []}                      # YOLOS trains without auxiliary losses
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from components.models.base import IMAGENET_MEAN, IMAGENET_STD, VisionModel, to_2tuple
from components.models.layers import MLP
from components.models.registry import ModelSpec, register
from components.models.postprocess import check_nms_iou
from components.models.stem import timm_stem_kwargs


class Yolos(VisionModel):
    task = "detection"

    def __init__(
        self, *, num_classes: int, img_size: int | tuple[int, int], patch_size: int = 16, embed_dim: int = 192,
        depth: int = 12, num_heads: int = 3, mlp_ratio: float = 4.0, num_det_tokens: int = 100,
        mid_pos_embed: bool = False, drop_path_rate: float = 0.0, norm_eps: float = 1e-6,
        stem: str = "patch", nms_iou: float | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    ) -> None:
        super().__init__(img_size=img_size, patch_size=patch_size, mean=mean, std=std)
        self.stem = stem
        self.nms_iou = check_nms_iou(nms_iou)
        self.backbone = VisionTransformer(
            img_size=to_2tuple(img_size), patch_size=patch_size, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, num_classes=0, global_pool="", class_token=True,
            drop_path_rate=drop_path_rate, norm_layer=partial(nn.LayerNorm, eps=norm_eps),
            **timm_stem_kwargs(stem),
        )
        self.num_classes = num_classes
        self.num_det_tokens = num_det_tokens
        self.embed_dim = embed_dim
        num_pos = self.backbone.pos_embed.shape[1]  # 1 + N
        self.det_token = nn.Parameter(torch.zeros(1, num_det_tokens, embed_dim))
        self.det_pos_embed = nn.Parameter(torch.zeros(1, num_det_tokens, embed_dim))
        if mid_pos_embed:
            self.mid_pos_embed = nn.Parameter(torch.zeros(depth - 1, 1, num_pos, embed_dim))
            self.mid_det_pos_embed = nn.Parameter(torch.zeros(depth - 1, 1, num_det_tokens, embed_dim))
            nn.init.trunc_normal_(self.mid_pos_embed, std=0.02)
            nn.init.trunc_normal_(self.mid_det_pos_embed, std=0.02)
        else:
            self.mid_pos_embed = None
            self.mid_det_pos_embed = None
        nn.init.trunc_normal_(self.det_token, std=0.02)
        nn.init.trunc_normal_(self.det_pos_embed, std=0.02)
        self.class_embed = MLP(embed_dim, embed_dim, num_classes + 1, 3)
        self.bbox_embed = MLP(embed_dim, embed_dim, 4, 3)

    def pos_embed_layout(self) -> dict[str, tuple[int, tuple[int, int]]]:
        layout = {"backbone.pos_embed": (1, self.grid_size)}
        if self.mid_pos_embed is not None:
            layout["mid_pos_embed"] = (1, self.grid_size)
        return layout

    def init_from_pretrained(self, state) -> list[str]:
        """From a ViT classifier of the same width and depth: :func:`init_from_classifier`."""
        return init_from_classifier(self, state)

    def reset_classes(self, num_classes: int) -> None:
        """A new class head's last layer for ``num_classes`` (fine-tuning to another label set)."""
        last = self.class_embed.layers[-1]
        self.class_embed.layers[-1] = nn.Linear(last.in_features, num_classes + 1).to(last.weight.device)
        self.num_classes = num_classes

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images ``[B, 3, H, W]`` → final tokens ``[B, 1 + N + Q, D]`` (cls, patches, det)."""
        bb = self.backbone
        x = bb._pos_embed(bb.patch_embed(images))  # timm adds [CLS] and its position embeddings
        det = (self.det_token + self.det_pos_embed).expand(x.shape[0], -1, -1)
        x = bb.norm_pre(torch.cat([x, det], dim=1))
        for i, block in enumerate(bb.blocks):
            if i > 0 and self.mid_pos_embed is not None:
                x = x + torch.cat([self.mid_pos_embed[i - 1], self.mid_det_pos_embed[i - 1]], dim=1)
            x = block(x)
        return bb.norm(x)

    def forward_images(self, images: torch.Tensor) -> dict[str, Any]:
        det = self.tokens(images)[:, -self.num_det_tokens:]
        return {
            "pred_logits": self.class_embed(det),
            "pred_boxes": self.bbox_embed(det).sigmoid(),
            "aux_outputs": [],
        }


def init_from_classifier(detector: Yolos, classifier_state: dict[str, torch.Tensor] | str | Path) -> list[str]:
    """Initialise a YOLOS detector's ViT from a classification ViT/DeiT of the same width/depth.

    ``classifier_state`` is a vitpipe classifier's state dict (keys ``backbone.*``) or a
    checkpoint directory. Position embeddings are resized (bicubic) from the classifier's
    grid to the detector's; the classifier head is dropped; [DET] tokens and the detection
    heads keep their fresh initialisation. Returns the detector keys left at their init.
    """
    from components.models.posembed import load_weights

    if not isinstance(classifier_state, dict):
        from components.core.checkpoint import load_checkpoint

        classifier_state, _ = load_checkpoint(classifier_state)
    # The classifier's pooling norm (``fc_norm``, present with global_pool="avg") reads a pooled
    # token that YOLOS does not have: it is part of the classification head, dropped with it.
    backbone_only = {
        k: v for k, v in classifier_state.items()
        if k.startswith("backbone.") and not k.startswith("backbone.fc_norm.")
    }
    if not backbone_only:
        raise ValueError("the state dict has no 'backbone.*' keys: not a vitpipe ViT classifier")
    conv_stem_ckpt = any(k.startswith("backbone.patch_embed.backbone.") for k in backbone_only)
    if conv_stem_ckpt != (detector.stem == "conv"):
        theirs = "conv" if conv_stem_ckpt else "patch"
        raise ValueError(
            f"the classifier has the {theirs!r} stem and the detector the {detector.stem!r} stem: build the "
            f"detector with the classifier's stem (model.overrides.stem={theirs})")
    missing, unexpected = load_weights(detector, backbone_only, strict=False)
    if unexpected:
        raise ValueError(f"classifier keys the detector does not have: {unexpected[:5]}")
    return missing


def _register(name: str, img_size, description: str, **defaults: Any) -> None:
    register(ModelSpec(
        name=name, task="detection", family="yolos", builder=Yolos, img_size=img_size,
        patch_size=defaults.get("patch_size", 16), defaults=defaults, default_num_classes=91,
        description=description,
    ))


# Paper sizes (YOLOS Table 1): Ti at 800x1333 (grid 50x83), S with mid embeddings at 512x864.
_register("yolos_ti", (800, 1328), "YOLOS-Ti (DeiT-Ti)", embed_dim=192, depth=12, num_heads=3)
_register("yolos_s", (512, 864), "YOLOS-S dwr (DeiT-S, mid position embeddings)",
          embed_dim=384, depth=12, num_heads=6, mid_pos_embed=True)
_register("yolos_b", (800, 1344), "YOLOS-B (DeiT-B, mid position embeddings)",
          embed_dim=768, depth=12, num_heads=12, mid_pos_embed=True)
_register("yolos_demo", 64, "tiny YOLOS (4x96, 3 heads, 20 det tokens)",
          embed_dim=96, depth=4, num_heads=3, num_det_tokens=20)
