"""Shared building blocks of the detectors: the box/class MLP and DETR's attention.

:class:`Attention` is the one attention module written here (ViT/YOLOS blocks are timm's,
which use the same SDPA fast path): ``F.scaled_dot_product_attention`` by default, an
explicit softmax path only when attention weights are asked for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (DETR/YOLOS box and class heads).

    ``[..., in_dim] → [..., out_dim]``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections (DETR's self- and cross-attention).

    ``forward(query [B, Lq, D], key [B, Lk, D], value [B, Lk, D]) → [B, Lq, D]``;
    ``key_mask`` bool ``[B, Lk]`` (True = attend) leaves padded keys out. With
    ``need_weights=True`` also returns the head-averaged weights ``[B, Lq, Lk]`` (explicit
    path); otherwise the fused SDPA kernel runs and the weights are ``None``.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, need_weights: bool = False,
        key_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, lq, d = query.shape
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
        p = self.dropout if self.training else 0.0
        weights = None
        mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, 1, 1, Lk]
        if need_weights:
            attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
            if mask is not None:
                attn = attn.masked_fill(~mask, float("-inf"))
            attn = attn.softmax(dim=-1)
            weights = attn.mean(dim=1)
            out = F.dropout(attn, p) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out_proj(out.transpose(1, 2).reshape(b, lq, d)), weights
