"""DETR (Carion et al. 2020): CNN backbone + transformer encoder–decoder + set prediction.

The backbone is timm's ResNet (``features_only``; same architecture and parameter names
as the Hugging Face DETR port's timm backbone), built without weights. BatchNorm trains
normally by default (we start from random weights); ``frozen_bn=True`` freezes it as the
paper does for ImageNet-initialised backbones. The transformer is the paper's post-norm
encoder–decoder with sine position encodings added to queries and keys in every layer,
``num_queries`` learned object queries, and a prediction from every decoder layer: the
last is the output, the others are ``aux_outputs`` for the auxiliary losses.

Padding (letterboxed batches): ``forward_images(images, pixel_mask)`` takes the pixel mask
``[B, H, W]`` (True = image), shrinks it to the feature grid (nearest, as the paper), leaves
padded cells out of every attention over the memory and computes the sine encoding over each
image's own valid extent (:func:`masked_sine_position_encoding`). The backbone is a CNN and
the encodings are computed, not learned, so any input size works (``any_size``); the same
image with more or less padding gives the same detections, up to the convolution padding at
the canvas edge.

Output (the detection contract)::

    {"pred_logits": [B, Q, num_classes + 1] (last = no object),
     "pred_boxes":  [B, Q, 4] normalised cxcywh,
     "aux_outputs": [{"pred_logits", "pred_boxes"}] * (num_decoder_layers - 1)}
"""

from __future__ import annotations

import math
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.layers import freeze_batch_norm_2d
from torch import nn

from components.models.base import IMAGENET_MEAN, IMAGENET_STD, VisionModel
from components.models.layers import MLP, Attention
from components.models.postprocess import check_nms_iou
from components.models.registry import ModelSpec, register


def sine_position_encoding(height: int, width: int, dim: int, *, device=None, temperature: float = 10000.0
                           ) -> torch.Tensor:
    """DETR's normalised 2D sine encoding: ``[height * width, dim]`` (row-major, y then x halves)."""
    half = dim // 2
    scale, eps = 2 * math.pi, 1e-6
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    y = y / (y[-1] + eps) * scale
    x = x / (x[-1] + eps) * scale
    dim_t = torch.arange(half, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)

    def encode(pos: torch.Tensor) -> torch.Tensor:  # [L] → [L, half], sin/cos interleaved
        p = pos[:, None] / dim_t
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(height, width, half)
    pos_x = encode(x)[None, :, :].expand(height, width, half)
    return torch.cat((pos_y, pos_x), dim=2).reshape(height * width, dim)


def masked_sine_position_encoding(valid: torch.Tensor, dim: int, *, temperature: float = 10000.0
                                  ) -> torch.Tensor:
    """DETR's sine encoding over each image's valid cells: ``valid`` bool ``[B, h, w]`` (True =
    image) → ``[B, h * w, dim]``; coordinates are normalised by the valid extent, so padding
    does not move them. With no padding it equals :func:`sine_position_encoding`."""
    half = dim // 2
    scale, eps = 2 * math.pi, 1e-6
    ones = valid.to(torch.float32)
    y = ones.cumsum(1)
    x = ones.cumsum(2)
    y = y / (y[:, -1:, :].amax(dim=2, keepdim=True) + eps) * scale
    x = x / (x[:, :, -1:].amax(dim=1, keepdim=True) + eps) * scale
    dim_t = torch.arange(half, dtype=torch.float32, device=valid.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)

    def encode(pos: torch.Tensor) -> torch.Tensor:  # [B, h, w] → [B, h, w, half]
        p = pos[..., None] / dim_t
        return torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=-1).flatten(-2)

    b, h, w = valid.shape
    return torch.cat((encode(y), encode(x)), dim=-1).reshape(b, h * w, dim)


class EncoderLayer(nn.Module):
    """Post-norm self-attention + FFN; position added to queries and keys. ``[B, L, D] → [B, L, D]``."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, key_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        qk = src + pos
        src = self.norm1(src + self.dropout(self.self_attn(qk, qk, src, key_mask=key_mask)[0]))
        ffn = self.fc2(self.dropout(F.relu(self.fc1(src))))
        return self.norm2(src + self.dropout(ffn))


class DecoderLayer(nn.Module):
    """Post-norm self-attention, cross-attention to the encoder memory, FFN. ``[B, Q, D] → [B, Q, D]``."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor,
                memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        qk = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout(self.self_attn(qk, qk, tgt)[0]))
        cross = self.cross_attn(tgt + query_pos, memory + pos, memory, key_mask=memory_mask)[0]
        tgt = self.norm2(tgt + self.dropout(cross))
        ffn = self.fc2(self.dropout(F.relu(self.fc1(tgt))))
        return self.norm3(tgt + self.dropout(ffn))


class Detr(VisionModel):
    task = "detection"
    takes_pixel_mask = True
    any_size = True

    def __init__(
        self, *, num_classes: int, img_size: int | tuple[int, int], patch_size: int = 16,
        backbone: str = "resnet50", backbone_kwargs: dict[str, Any] | None = None, backbone_stage: int = 4,
        frozen_bn: bool = False, hidden_dim: int = 256, num_heads: int = 8, num_encoder_layers: int = 6,
        num_decoder_layers: int = 6, ffn_dim: int = 2048, dropout: float = 0.1, num_queries: int = 100,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, nms_iou: float | None = None,
    ) -> None:
        super().__init__(img_size=img_size, patch_size=patch_size, mean=mean, std=std)
        # IoU of class-aware NMS at inference (postprocess.detections); None = off, as
        # one-to-one matching needs none. Set it when training with criterion.match_repeats > 1.
        self.nms_iou = check_nms_iou(nms_iou)
        self.backbone = timm.create_model(
            backbone, pretrained=False, features_only=True, out_indices=(backbone_stage,), **(backbone_kwargs or {})
        )
        if frozen_bn:
            self.backbone = freeze_batch_norm_2d(self.backbone)
        channels = self.backbone.feature_info.channels()[-1]
        self.stride = self.backbone.feature_info.reduction()[-1]
        self.input_proj = nn.Conv2d(channels, hidden_dim, kernel_size=1)
        self.encoder = nn.ModuleList(
            EncoderLayer(hidden_dim, num_heads, ffn_dim, dropout) for _ in range(num_encoder_layers))
        self.decoder = nn.ModuleList(
            DecoderLayer(hidden_dim, num_heads, ffn_dim, dropout) for _ in range(num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        for layer in [*self.encoder, *self.decoder]:
            for p in layer.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    def reset_classes(self, num_classes: int) -> None:
        self.class_embed = nn.Linear(self.hidden_dim, num_classes + 1).to(self.class_embed.weight.device)
        self.num_classes = num_classes

    def encode(self, images: torch.Tensor, pixel_mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int], torch.Tensor | None]:
        """Images ``[B, 3, H, W]`` (+ ``pixel_mask`` ``[B, H, W]`` bool, True = image) →
        memory ``[B, h*w, D]``, position ``[1 or B, h*w, D]``, ``(h, w)``, the memory's
        key mask ``[B, h*w]`` (None without a pixel mask)."""
        if pixel_mask is not None:  # padding is zero after normalisation, as in the paper
            images = images * pixel_mask[:, None].to(images.dtype)
        features = self.input_proj(self.backbone(images)[-1])  # [B, D, h, w]
        b, d, h, w = features.shape
        src = features.flatten(2).transpose(1, 2)
        key_mask = None
        if pixel_mask is None:
            pos = sine_position_encoding(h, w, d, device=src.device).to(src.dtype)[None]
        else:
            valid = F.interpolate(pixel_mask[:, None].float(), size=(h, w)).to(torch.bool)[:, 0]
            pos = masked_sine_position_encoding(valid, d).to(src.dtype)
            key_mask = valid.reshape(b, h * w)
        for layer in self.encoder:
            src = layer(src, pos, key_mask)
        return src, pos, (h, w), key_mask

    def forward_images(self, images: torch.Tensor, pixel_mask: torch.Tensor | None = None
                       ) -> dict[str, Any]:
        memory, pos, _, key_mask = self.encode(images, pixel_mask)
        query_pos = self.query_embed.weight[None].expand(memory.shape[0], -1, -1)
        tgt = torch.zeros_like(query_pos)
        per_layer = []
        for layer in self.decoder:
            tgt = layer(tgt, memory, pos, query_pos, key_mask)
            per_layer.append(self.decoder_norm(tgt))
        hidden = torch.stack(per_layer)  # [L, B, Q, D]
        logits = self.class_embed(hidden)
        boxes = self.bbox_embed(hidden).sigmoid()
        return {
            "pred_logits": logits[-1],
            "pred_boxes": boxes[-1],
            "aux_outputs": [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])],
        }


def _register(name: str, img_size, description: str, **defaults: Any) -> None:
    register(ModelSpec(
        name=name, task="detection", family="detr", builder=Detr, img_size=img_size, patch_size=16,
        defaults=defaults, default_num_classes=91, description=description,
    ))


_register("detr_resnet50", 800, "DETR-R50 (6+6 layers, 256 wide, 100 queries)")
_register("detr_demo", 64, "tiny DETR (ResNet 16..64 ch to stride 16, 2+2 layers, 64 wide, 20 queries)",
          backbone="resnet18", backbone_kwargs={"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128],
                                                 "stem_width": 16},
          backbone_stage=3, hidden_dim=64, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
          ffn_dim=128, dropout=0.0, num_queries=20)
