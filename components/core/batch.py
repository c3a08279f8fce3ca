"""The batch contract's patch grid: the one place that reads ``grid`` into a tuple.

A batch (``components.data.loader.iter_batches``) carries ``grid`` as an int64 ``[B, 2]``
tensor with equal rows; a single image's grid is a ``[2]`` tensor or a ``(gh, gw)`` tuple.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def grid_tuple(grid: Sequence[int] | torch.Tensor) -> tuple[int, int]:
    """``(gh, gw)`` of a grid: ``[B, 2]`` or ``[2]`` tensor (first row), or a pair."""
    if isinstance(grid, torch.Tensor):
        flat = grid.reshape(-1, 2)[0].tolist()
        return (int(flat[0]), int(flat[1]))
    gh, gw = grid
    return (int(gh), int(gw))


def batch_grid(batch: Mapping[str, Any]) -> tuple[int, int]:
    """The patch grid ``(gh, gw)`` of a batch (one for all rows)."""
    return grid_tuple(batch["grid"])
