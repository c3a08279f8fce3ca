"""Absolute position embeddings across resolutions, and loading weights into a model.

:func:`resize_pos_embed` is a pure function (timm's bicubic ``resample_abs_pos_embed``
underneath): identity when the grid is unchanged. :func:`load_weights` uses it whenever a
state dict's position embeddings were trained for another grid: fine-tuning at a new
resolution, or a classification ViT initialising a YOLOS detector.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

log = logging.getLogger(__name__)


def resize_pos_embed(
    pos_embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """Resample position embeddings ``[..., T_old, D]`` → ``[..., T_new, D]`` (bicubic).

    ``T = num_prefix_tokens + grid_h * grid_w``; the prefix rows (class token) are kept
    as they are, the grid rows are interpolated in 2D. Leading dimensions (e.g. YOLOS's
    per-layer mid embeddings ``[L, 1, T, D]``) are resized one slice at a time.
    ``old_grid`` defaults to the square grid that fits. Same grid → the input, unchanged.
    """
    tokens, dim = pos_embed.shape[-2:]
    if old_grid is None:
        side = math.isqrt(tokens - num_prefix_tokens)
        if side * side != tokens - num_prefix_tokens:
            raise ValueError(f"cannot infer a square grid from {tokens - num_prefix_tokens} position tokens")
        old_grid = (side, side)
    old_grid = (int(old_grid[0]), int(old_grid[1]))
    new_grid = (int(new_grid[0]), int(new_grid[1]))
    if old_grid[0] * old_grid[1] + num_prefix_tokens != tokens:
        raise ValueError(f"{tokens} position tokens do not match grid {old_grid} + {num_prefix_tokens} prefix")
    if old_grid == new_grid:
        return pos_embed
    lead = pos_embed.shape[:-2]
    flat = pos_embed.reshape(-1, tokens, dim)
    out = torch.cat([
        resample_abs_pos_embed(flat[i:i + 1], list(new_grid), list(old_grid), num_prefix_tokens=num_prefix_tokens)
        for i in range(flat.shape[0])
    ])
    return out.reshape(*lead, out.shape[-2], dim)


def load_weights(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True,
    source_grid: tuple[int, int] | None = None,
) -> tuple[list[str], list[str]]:
    """Load ``state_dict`` into ``model``, resizing absolute position embeddings if needed.

    The model says which of its entries are position embeddings and their layout through
    ``model.pos_embed_layout() -> {key: (num_prefix_tokens, grid)}``. ``source_grid`` is the
    state dict's grid (default: the square that fits). With ``strict=False`` missing and
    unexpected keys are returned instead of raising (e.g. a classifier's head when it
    initialises a detector). Returns ``(missing_keys, unexpected_keys)``.
    """
    state = dict(state_dict)
    layout = model.pos_embed_layout() if hasattr(model, "pos_embed_layout") else {}
    own = model.state_dict()
    for key, (prefix, grid) in layout.items():
        if key in state and key in own and state[key].shape != own[key].shape:
            log.info("resizing %s %s -> %s", key, tuple(state[key].shape), tuple(own[key].shape))
            state[key] = resize_pos_embed(state[key], grid, source_grid, num_prefix_tokens=prefix)
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    if mismatched:
        detail = ", ".join(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched[:5])
        raise ValueError(f"state dict does not fit {type(model).__name__}: {detail}")
    result = model.load_state_dict(state, strict=strict)
    return list(result.missing_keys), list(result.unexpected_keys)
