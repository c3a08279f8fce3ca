"""Attention maps of ViT-family models (ViT/DeiT/hybrid classifiers, YOLOS): per-layer
weights, attention rollout (Abnar & Zuidema 2020) and PNG overlays.

The blocks are timm's: their attention runs the fused SDPA kernel; only inside
:func:`capture_attention` do they take timm's explicit softmax path, whose probabilities
``[B, heads, T, T]`` are read by a hook on the (identity at eval) attention dropout.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class TokenLayout:
    """Where the tokens of a ViT-family model sit: ``prefix`` tokens ([CLS]), then the
    ``grid`` of patch tokens row-major, then ``suffix`` tokens (YOLOS's [DET])."""

    prefix: int
    grid: tuple[int, int]
    suffix: int

    @property
    def patches(self) -> slice:
        return slice(self.prefix, self.prefix + self.grid[0] * self.grid[1])


def _vit(model: nn.Module) -> nn.Module:
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "blocks") or not hasattr(backbone, "patch_embed"):
        raise TypeError(f"attention maps need a ViT-family model (ViT, DeiT, hybrid, YOLOS), not {type(model).__name__}")
    if not all(hasattr(b, "attn") and hasattr(b.attn, "attn_drop") for b in backbone.blocks):
        raise TypeError("attention maps need timm ViT blocks")
    return backbone


def token_layout(model: nn.Module) -> TokenLayout:
    vit = _vit(model)
    return TokenLayout(prefix=int(vit.num_prefix_tokens), grid=tuple(vit.patch_embed.grid_size),
                       suffix=int(getattr(model, "num_det_tokens", 0)))


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, forwards of ``model`` append each layer's attention probabilities
    ``[B, heads, T, T]`` (detached) to the yielded list, first layer first."""
    vit = _vit(model)
    captured: list[torch.Tensor] = []
    saved, handles = [], []
    for block in vit.blocks:
        saved.append(block.attn.fused_attn)
        block.attn.fused_attn = False
        handles.append(block.attn.attn_drop.register_forward_hook(
            lambda _m, inputs, _out: captured.append(inputs[0].detach().float())))
    try:
        yield captured
    finally:
        for block, fused, handle in zip(vit.blocks, saved, handles):
            block.attn.fused_attn = fused
            handle.remove()


@torch.no_grad()
def attention_maps(model: nn.Module, patches: torch.Tensor, grid) -> tuple[object, list[torch.Tensor]]:
    """Run ``model(patches, grid)`` once and return ``(outputs, [per-layer [B, heads, T, T]])``."""
    with capture_attention(model) as captured:
        outputs = model(patches, grid)
    return outputs, list(captured)


def rollout(attentions: list[torch.Tensor], residual: float = 0.5) -> torch.Tensor:
    """Attention rollout: ``[B, T, T]`` flow from every token (rows) to the input tokens.

    Each layer's head-mean attention is mixed with the identity for the residual path
    (``residual·I + (1 − residual)·A``), rows renormalised, and the layers multiplied.
    """
    if not attentions:
        raise ValueError("no attention layers captured")
    joint = None
    for layer in attentions:
        a = layer.mean(dim=1)
        eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype).expand_as(a)
        a = residual * eye + (1 - residual) * a
        a = a / a.sum(dim=-1, keepdim=True)
        joint = a if joint is None else a @ joint
    return joint


def patch_map(rows: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Token rows ``[..., T]`` → their patch part as a map ``[..., gh, gw]``, scaled to 0..1."""
    m = rows[..., layout.patches].reshape(*rows.shape[:-1], *layout.grid)
    lo = m.flatten(-2).min(-1).values[..., None, None]
    hi = m.flatten(-2).max(-1).values[..., None, None]
    return (m - lo) / (hi - lo).clamp(min=1e-12)


def overlay(image_rgb: np.ndarray, heat: np.ndarray | torch.Tensor, *, alpha: float = 0.5,
            colormap: str = "inferno") -> np.ndarray:
    """Blend a ``[gh, gw]`` map in 0..1 (upsampled smoothly) over an RGB uint8 image."""
    from matplotlib import colormaps
    from PIL import Image

    heat = heat.detach().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat)
    h, w = image_rgb.shape[:2]
    up = Image.fromarray(np.uint8(np.clip(heat, 0, 1) * 255)).resize((w, h), Image.BICUBIC)
    colored = colormaps[colormap](np.asarray(up, dtype=np.float32) / 255.0)[..., :3] * 255.0
    return np.uint8(np.clip((1 - alpha) * image_rgb.astype(np.float32) + alpha * colored, 0, 255))


def save_png(image_rgb: np.ndarray, path: str | Path, boxes_xyxy: np.ndarray | None = None) -> Path:
    """Write an RGB uint8 image (optionally with boxes drawn) as PNG."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(image_rgb)
    if boxes_xyxy is not None:
        draw = ImageDraw.Draw(im)
        for box in np.asarray(boxes_xyxy).reshape(-1, 4):
            draw.rectangle([float(v) for v in box], outline=(0, 255, 0), width=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="PNG")
    return path
