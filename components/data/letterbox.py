"""Letterbox geometry: an image at its own aspect ratio inside a square, patch-aligned canvas.

With ``data.letterbox`` the whole image is resized so that its LONGER side equals the
target size ``T`` (aspect ratio kept), then padded on the right and bottom with zeros to
the canvas ``C × C``, ``C = ceil(T / P) · P`` (``P`` the patch size)::

    +-----------+----+
    | image     |pad |   valid region: rows [0, valid_h), columns [0, valid_w)
    | valid_h × |    |   (valid_h, valid_w) = the resized image's size, <= T <= C
    | valid_w   |    |
    +-----------+    |
    | pad            |
    +----------------+  C × C, C a multiple of P

The batch carries ``valid_hw`` int64 ``[B, 2]`` (the valid region's height and width in
canvas pixels, anchored at the top-left corner): models that take a padding mask build it
with :func:`pixel_mask` / :func:`patch_mask`. Boxes in rows, batches and model outputs are
normalised cxcywh **relative to the valid region** (as DETR normalises by the unpadded
image), so ``box · (orig_w, orig_h)`` is the box in original pixels: the letterbox adds no
step to the inverse mapping (``components.data.boxes.batch_to_pixels_xyxy``), and padding
never enters it.

:func:`rescale_batch` re-letterboxes a whole torch batch to another target (multi-scale
training): each valid region is resized to its new letterbox size and re-padded; the
normalised boxes do not change.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the data workers stay free of torch until they need it
    import torch


def canvas_side(target: int, patch_size: int) -> int:
    """The canvas side ``C = ceil(target / P) · P`` (pixels) for a letterbox ``target``."""
    if target < 1 or patch_size < 1:
        raise ValueError(f"target {target} and patch size {patch_size} must be positive")
    return math.ceil(target / patch_size) * patch_size


def letterbox_hw(height: int, width: int, target: int) -> tuple[int, int]:
    """``(h, w)`` of a ``height × width`` image resized so that its longer side is ``target``
    (each side at least 1 pixel; rounding as albumentations' ``LongestMaxSize``)."""
    scale = target / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def pixel_mask(valid_hw: "torch.Tensor", height: int, width: int) -> "torch.Tensor":
    """``valid_hw`` ``[B, 2]`` → bool ``[B, height, width]``: True on image pixels, False on
    padding (the HF ``pixel_mask`` / DETR mask convention, inverted: DETR's ``mask`` is True
    on padding)."""
    import torch

    rows = torch.arange(height, device=valid_hw.device)
    cols = torch.arange(width, device=valid_hw.device)
    vh = valid_hw[:, 0].view(-1, 1, 1)
    vw = valid_hw[:, 1].view(-1, 1, 1)
    return (rows.view(1, -1, 1) < vh) & (cols.view(1, 1, -1) < vw)


def patch_mask(valid_hw: "torch.Tensor", grid: tuple[int, int], patch_size: int) -> "torch.Tensor":
    """``valid_hw`` ``[B, 2]`` → bool ``[B, gh · gw]`` (row-major, as ``patchify``): True
    where a patch holds at least one image pixel."""
    gh, gw = grid
    cells = (valid_hw + patch_size - 1) // patch_size  # patches touched per side
    return pixel_mask(cells, gh, gw).reshape(valid_hw.shape[0], gh * gw)


def rescale_batch(batch: dict[str, "torch.Tensor"], target: int, patch_size: int
                  ) -> dict[str, "torch.Tensor"]:
    """A letterboxed batch → the same images letterboxed at ``target`` (multi-scale training).

    Reads ``patches`` ``[B, N, P*P*3]`` uint8, ``grid`` ``[B, 2]`` and ``valid_hw``
    ``[B, 2]``; returns a new dict with those three replaced (``N' = (C'/P)²``,
    ``C' = canvas_side(target, P)``), every other key (boxes normalised to the valid region,
    classes, ``orig_size``, ...) unchanged. Downscaling uses antialiased bilinear resizing.
    """
    import torch
    import torch.nn.functional as F

    from components.data.patchify import images_to_patches, patches_to_images

    if "valid_hw" not in batch:
        raise KeyError("rescale_batch needs a letterboxed batch (with valid_hw)")
    grid = tuple(int(g) for g in batch["grid"].reshape(-1, 2)[0])
    images = patches_to_images(batch["patches"], grid, patch_size)  # [B, 3, H, W]
    side = canvas_side(target, patch_size)
    out = torch.zeros((images.shape[0], 3, side, side), dtype=images.dtype, device=images.device)
    new_valid = torch.empty_like(batch["valid_hw"])
    for i, (vh, vw) in enumerate(batch["valid_hw"].tolist()):
        nh, nw = letterbox_hw(vh, vw, target)
        content = images[i:i + 1, :, :vh, :vw].float()
        if (nh, nw) != (vh, vw):
            content = F.interpolate(content, size=(nh, nw), mode="bilinear", align_corners=False,
                                    antialias=nh < vh or nw < vw)
        out[i, :, :nh, :nw] = content.round().clamp(0, 255).to(images.dtype)[0]
        new_valid[i, 0], new_valid[i, 1] = nh, nw
    patches, new_grid = images_to_patches(out, patch_size)
    result = dict(batch)
    result["patches"] = patches.contiguous()
    result["grid"] = torch.tensor(new_grid, dtype=torch.int64,
                                  device=batch["grid"].device).expand(images.shape[0], 2).clone()
    result["valid_hw"] = new_valid
    return result
