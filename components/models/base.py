"""What every vitpipe model shares: the input contract and its metadata.

A model takes the data layer's patch tensors ``[B, N, P*P*3]`` (uint8 on the wire, or float
in 0..255) with their ``grid``; :meth:`VisionModel.forward` normalises them on the model's
device with the model's own mean/std, lays the patches back out as images ``[B, 3, H, W]``
(a pure reshape) and hands them to :meth:`forward_images`, which runs the model's own stem
(timm's conv patch embedding, a CNN stem, ...). So images and patch tensors reach the
network through exactly one patch embedding.

Letterboxed batches (``components.data.letterbox``) also carry ``valid_hw`` ``[B, 2]``, the
image region of each padded canvas. ``forward(patches, grid, valid_hw=...)`` turns it into a
pixel mask ``[B, H, W]`` (True = image) for models with ``takes_pixel_mask`` (DETR, the HF
detectors) and ignores it for the others, which see the zero padding as part of the image.
Models with ``any_size`` (CNN backbones with sine or no position embeddings) accept any
grid; the others only the grid they are built for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from components.core.batch import grid_tuple
from components.data.patchify import patches_to_images

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_2tuple(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


class VisionModel(nn.Module):
    """Base of every registered model.

    Attributes:
        task: ``"classification"`` or ``"detection"``.
        img_size: the input size the model is built for: an ``int`` (square) or ``(h, w)``.
        patch_size: the data layer's patch size ``P`` the model expects.
        mean, std: per-channel normalisation of 0..1 pixels (applied in :meth:`forward`).
        name, build_config: set by ``build_model``; ``build_model(name, **build_config)``
            rebuilds the architecture (the checkpoint's ``model_config``).
    """

    task: str = ""
    takes_pixel_mask: bool = False  # forward_images(images, pixel_mask=[B, H, W] bool)
    any_size: bool = False  # any patch grid, not only img_size's

    def __init__(
        self,
        *,
        img_size: int | tuple[int, int],
        patch_size: int,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        hw = to_2tuple(img_size)
        self.img_size: int | tuple[int, int] = hw[0] if hw[0] == hw[1] else hw
        self.patch_size = int(patch_size)
        if hw[0] % self.patch_size or hw[1] % self.patch_size:
            raise ValueError(f"img_size {hw} is not a multiple of patch_size {patch_size}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        # 0..255 → normalised in one multiply-add; not persistent, so not in the state dict.
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std])
        shift = torch.tensor([-m / s for m, s in zip(self.mean, self.std)])
        self.register_buffer("_input_scale", scale, persistent=False)
        self.register_buffer("_input_shift", shift, persistent=False)
        self.name: str = ""
        self.build_config: dict[str, Any] = {}

    @property
    def grid_size(self) -> tuple[int, int]:
        h, w = to_2tuple(self.img_size)
        return (h // self.patch_size, w // self.patch_size)

    def normalize_patches(self, patches: torch.Tensor, grid: tuple[int, int] | torch.Tensor) -> torch.Tensor:
        """``[B, N, P*P*3]`` 0..255 (uint8 or float) → normalised float images ``[B, 3, H, W]``."""
        grid = grid_tuple(grid)
        if patches.ndim != 3 or patches.shape[-1] != self.patch_size**2 * 3:
            raise ValueError(
                f"{self.name or type(self).__name__} expects patches [B, N, {self.patch_size ** 2 * 3}] "
                f"(patch size {self.patch_size}), got {tuple(patches.shape)}"
            )
        if grid != self.grid_size and not self.any_size:
            raise ValueError(
                f"{self.name or type(self).__name__} is built for a {self.grid_size} patch grid "
                f"(img_size {self.img_size}, patch {self.patch_size}); got grid {grid}"
            )
        b, n, d = patches.shape
        x = patches.to(torch.float32).view(b, n, d // 3, 3)
        x = x * self._input_scale + self._input_shift
        return patches_to_images(x.view(b, n, d), grid, self.patch_size).contiguous()

    def forward(self, patches: torch.Tensor, grid: tuple[int, int] | torch.Tensor,
                valid_hw: torch.Tensor | None = None) -> Any:
        """Patch tensors ``[B, N, P*P*3]`` (0..255) with their grid (and, letterboxed, the
        valid region ``[B, 2]``) → the model's outputs."""
        images = self.normalize_patches(patches, grid)
        mask = self.pixel_mask(images, valid_hw)
        if mask is not None:
            return self.forward_images(images, pixel_mask=mask)
        return self.forward_images(images)

    def pixel_mask(self, images: torch.Tensor, valid_hw: torch.Tensor | None) -> torch.Tensor | None:
        """``[B, H, W]`` bool (True = image pixel) when this model takes one, else None."""
        if valid_hw is None or not self.takes_pixel_mask:
            return None
        from components.data.letterbox import pixel_mask

        return pixel_mask(valid_hw.to(images.device), images.shape[-2], images.shape[-1])

    def forward_images(self, images: torch.Tensor) -> Any:  # pragma: no cover - abstract
        """Normalised images ``[B, 3, H, W]`` → outputs (see subclasses)."""
        raise NotImplementedError

    def pretrained_state(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` (another model's checkpoint) in this model's names: as it is, unless a
        subclass knows a translation (LW-DETR takes a ViT classifier's encoder)."""
        return dict(state)

    def init_from_pretrained(self, state: Mapping[str, torch.Tensor]) -> list[str]:
        """Load the weights of ``state`` that this model has (a detector from a classifier:
        its backbone), position embeddings resized; returns the keys left at their init."""
        from components.models.posembed import load_weights

        missing, _ = load_weights(self, self.pretrained_state(state), strict=False)
        return missing


def padding_kwargs(batch: dict[str, Any]) -> dict[str, Any]:
    """The model keyword arguments a batch's padding asks for: ``{"valid_hw": [B, 2]}`` for a
    letterboxed batch, ``{}`` otherwise (so models and runners without masks are called as
    before)."""
    return {"valid_hw": batch["valid_hw"]} if "valid_hw" in batch else {}
