"""Images ↔ patch tensors: the batch contract's ``patches`` field.

An image of ``H × W`` pixels (``H`` and ``W`` multiples of the patch size ``P``) becomes
``N = (H/P) · (W/P)`` patches in row-major grid order, each flattened in ``(P, P, C)``
order (row, column, channel) to ``P·P·C`` values. ``grid = (H/P, W/P)`` travels with it.

The same functions take numpy arrays (the data workers) and torch tensors (the models);
they are pure reshapes, so ``unpatchify(patchify(x)) == x`` exactly, whatever the dtype.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:  # torch is not imported at run time: data workers and the CLI stay light
    import torch

Array = TypeVar("Array", np.ndarray, "torch.Tensor")


def _permute(x: Array, order: tuple[int, ...]) -> Array:
    return x.transpose(order) if isinstance(x, np.ndarray) else x.permute(*order)


def patchify(images: Array, patch_size: int) -> tuple[Array, tuple[int, int]]:
    """Channels-last images → patches.

    Args:
        images: ``[H, W, C]`` or ``[B, H, W, C]``; ``H`` and ``W`` divisible by ``patch_size``.
    Returns:
        ``([N, P*P*C] or [B, N, P*P*C], (grid_h, grid_w))`` with ``N = grid_h * grid_w``.
    """
    single = images.ndim == 3
    x = images[None] if single else images
    b, h, w, c = x.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    gh, gw = h // p, w // p
    x = x.reshape(b, gh, p, gw, p, c)
    x = _permute(x, (0, 1, 3, 2, 4, 5)).reshape(b, gh * gw, p * p * c)
    return (x[0] if single else x), (gh, gw)


def unpatchify(patches: Array, grid: tuple[int, int], patch_size: int, channels: int = 3) -> Array:
    """Inverse of :func:`patchify`: ``[B, N, P*P*C]`` (or ``[N, P*P*C]``) → ``[B, H, W, C]``."""
    single = patches.ndim == 2
    x = patches[None] if single else patches
    gh, gw = (int(g) for g in grid)
    p, c = patch_size, channels
    b, n, d = x.shape
    if n != gh * gw or d != p * p * c:
        raise ValueError(
            f"patches of shape {tuple(patches.shape)} do not match grid {gh}x{gw}, "
            f"patch {p}, channels {c}"
        )
    x = x.reshape(b, gh, gw, p, p, c)
    x = _permute(x, (0, 1, 3, 2, 4, 5)).reshape(b, gh * p, gw * p, c)
    return x[0] if single else x


def patches_to_images(patches: "torch.Tensor", grid: tuple[int, int], patch_size: int
                      ) -> "torch.Tensor":
    """``[B, N, P*P*3]`` → channels-first ``[B, 3, H, W]`` (for CNN backbones and timm)."""
    return unpatchify(patches, grid, patch_size).permute(0, 3, 1, 2)


def images_to_patches(images: "torch.Tensor", patch_size: int
                      ) -> tuple["torch.Tensor", tuple[int, int]]:
    """Channels-first ``[B, 3, H, W]`` → ``([B, N, P*P*3], grid)``."""
    return patchify(images.permute(0, 2, 3, 1), patch_size)
