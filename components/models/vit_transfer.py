"""A vitpipe ViT classifier's encoder in the names of LW-DETR's ViT backbone.

Our ViT classifiers (and the MAE encoder, which is saved as one) hold timm ViT weights under
``backbone.*``. LW-DETR's backbone (transformers' ``lw_detr_vit``) is the same pre-norm ViT
in CAE's layout, with some blocks attending within windows; only the names and the packing
differ. Per block ``i``:

- ``norm1`` / ``norm2`` → ``layernorm_before`` / ``layernorm_after``;
- ``attn.qkv`` ``[3D, D]`` → ``q_proj``, ``k_proj``, ``v_proj`` ``[D, D]`` each. The key
  projection has no bias there: a bias ``b`` on every key adds the same ``q · b`` to every
  logit of a query, which the softmax ignores, so dropping it changes nothing;
- ``attn.proj`` → ``o_proj``; ``mlp.fc1`` / ``mlp.fc2`` → ``intermediate.fc1`` / ``fc2``;
- ``gamma_1`` / ``gamma_2`` (layer scale) ← timm's ``ls1`` / ``ls2`` gammas, or ones when the
  ViT has none (its residual branches are unscaled).

``patch_embed.proj`` → ``embeddings.projection``; ``pos_embed`` ``[1, T, D]`` →
``position_embeddings`` ``[1, 1 + g*g, D]`` (the class-token row, zeros for a ViT without
one; the grid resized to the backbone's pretraining grid, which the library interpolates to
each input's grid). Dropped: the class token, the final norm, ``fc_norm`` and the head
(LW-DETR's projector reads the blocks' raw outputs).

The number of attention heads is not in the weights: the backbone must be configured with
the ViT's (``lwdetr_vit_ti`` has ViT-Ti's 3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from components.models.posembed import resize_pos_embed

_BLOCK_NAMES = {
    "norm1.weight": "layernorm_before.weight", "norm1.bias": "layernorm_before.bias",
    "norm2.weight": "layernorm_after.weight", "norm2.bias": "layernorm_after.bias",
    "attn.proj.weight": "attention.o_proj.weight", "attn.proj.bias": "attention.o_proj.bias",
    "mlp.fc1.weight": "intermediate.fc1.weight", "mlp.fc1.bias": "intermediate.fc1.bias",
    "mlp.fc2.weight": "intermediate.fc2.weight", "mlp.fc2.bias": "intermediate.fc2.bias",
    "ls1.gamma": "gamma_1", "ls2.gamma": "gamma_2",
}


def is_vit_classifier_state(state: Mapping[str, torch.Tensor]) -> bool:
    """True for a vitpipe ViT classifier's (or MAE encoder's) state dict: timm ViT blocks
    under ``backbone.``."""
    return "backbone.blocks.0.attn.qkv.weight" in state and "backbone.pos_embed" in state


def backbone_prefix(detector_state: Mapping[str, torch.Tensor]) -> str:
    """Where the LW-DETR ViT sits in a detector's state dict (``...backbone.``)."""
    for key in detector_state:
        if key.endswith("embeddings.projection.weight"):
            return key[: -len("embeddings.projection.weight")]
    raise ValueError("the detector has no LW-DETR ViT backbone (no embeddings.projection)")


def vit_to_lwdetr(state: Mapping[str, torch.Tensor],
                  detector_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (a vitpipe ViT classifier's, timm names) → the detector's backbone keys.

    ``detector_state`` (the LW-DETR detector's own state dict) gives the prefix, the depth
    and the position-embedding grid. Raises ``ValueError`` naming the problem when the ViT
    does not fit: a convolutional stem, another depth or another width.
    """
    if any(k.startswith("backbone.patch_embed.backbone.") for k in state):
        raise ValueError("the ViT has a convolutional stem (stem=conv); LW-DETR's backbone starts with a "
                         "linear patch embedding: pretrain with the patch stem")
    prefix = backbone_prefix(detector_state)
    depth = len({k.split(".")[2] for k in state if k.startswith("backbone.blocks.")})
    own_depth = len({k[len(prefix):].split(".")[2] for k in detector_state
                     if k.startswith(prefix + "encoder.layer.")})
    if depth != own_depth:
        raise ValueError(f"the ViT has {depth} blocks, the detector's backbone {own_depth}")
    out: dict[str, torch.Tensor] = {}
    for i in range(depth):
        src, dst = f"backbone.blocks.{i}.", f"{prefix}encoder.layer.{i}."
        for theirs, ours in _BLOCK_NAMES.items():
            if src + theirs in state:
                out[dst + ours] = state[src + theirs]
        q, k, v = state[src + "attn.qkv.weight"].chunk(3, dim=0)
        out |= {dst + "attention.q_proj.weight": q, dst + "attention.k_proj.weight": k,
                dst + "attention.v_proj.weight": v}
        if src + "attn.qkv.bias" in state:
            q_bias, _, v_bias = state[src + "attn.qkv.bias"].chunk(3, dim=0)
            out |= {dst + "attention.q_proj.bias": q_bias, dst + "attention.v_proj.bias": v_bias}
        width = q.shape[0]
        for gamma in ("gamma_1", "gamma_2"):
            out.setdefault(dst + gamma, torch.ones(width, dtype=q.dtype))
    out[prefix + "embeddings.projection.weight"] = state["backbone.patch_embed.proj.weight"]
    out[prefix + "embeddings.projection.bias"] = state["backbone.patch_embed.proj.bias"]
    out[prefix + "embeddings.position_embeddings"] = _position_embeddings(
        state, detector_state[prefix + "embeddings.position_embeddings"])
    return out


def _position_embeddings(state: Mapping[str, torch.Tensor], own: torch.Tensor) -> torch.Tensor:
    """The ViT's ``pos_embed`` as ``own``'s ``[1, 1 + g*g, D]``: class row first, grid resized."""
    pos = state["backbone.pos_embed"]
    prefix = 1 if "backbone.cls_token" in state else 0
    prefix += sum(f"backbone.{t}" in state for t in ("dist_token", "reg_token"))
    grid = pos.shape[1] - prefix
    side = math.isqrt(grid)
    if side * side != grid:
        raise ValueError(f"the ViT's position embeddings cover {grid} patches, not a square grid")
    cls_row = pos[:, :1] if "backbone.cls_token" in state else torch.zeros_like(pos[:, :1])
    patches = pos[:, prefix:]
    own_side = math.isqrt(own.shape[1] - 1)
    if own_side != side:
        patches = resize_pos_embed(patches, (own_side, own_side), (side, side), num_prefix_tokens=0)
    return torch.cat([cls_row, patches], dim=1)
