"""Training augmentation of a whole batch, in the training worker: flips and quarter turns.

With ``data.cache`` the rows are made once, unaugmented, and every epoch reads them back;
the augmentation then runs here, on each batch, per image, with the probabilities of
``data.augment`` and in the order of the albumentations pipeline
(``components.data.transforms``): horizontal flip (``hflip``), vertical flip (``vflip``),
a quarter turn by ``k ∈ {0, 1, 2, 3}`` drawn uniformly (with probability ``rotate90``).
Boxes follow exactly. Crops and colour jitter need the decoded image and are refused by
``DataConfig`` when ``cache`` is on.

Batch in and out (the batch contract, ``components.data.loader``):
  ``patches`` uint8 ``[B, N, P*P*3]`` on a square grid ``(g, g)``;
  detection: ``boxes`` float32 ``[B, M, 4]`` normalised cxcywh (padding rows change too,
  ``box_mask`` still marks the real ones).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from components.data.config import AugmentConfig
from components.data.patchify import patchify, unpatchify


def generator_seed(parts: Sequence[int] | int | None) -> int | None:
    """One 63-bit seed from ``parts`` (e.g. ``[data.seed, epoch, rank]``); None stays None."""
    if parts is None:
        return None
    parts = [parts] if isinstance(parts, int) else list(parts)
    return int(np.random.SeedSequence(parts).generate_state(1, np.uint64)[0] >> 1)


def turn_boxes(boxes: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Normalised cxcywh ``[B, M, 4]`` under ``torch.rot90(image, k[b], dims=(H, W))``.

    One quarter turn maps the point ``(x, y)`` to ``(y, 1 - x)``; ``k`` is ``[B]`` in 0..3."""
    cx, cy, w, h = boxes.unbind(-1)
    k = k.view(-1, 1)
    odd = (k % 2) == 1
    new_cx = torch.where(k == 0, cx, torch.where(k == 1, cy, torch.where(k == 2, 1 - cx, 1 - cy)))
    new_cy = torch.where(k == 0, cy, torch.where(k == 1, 1 - cx, torch.where(k == 2, 1 - cy, cx)))
    return torch.stack([new_cx, new_cy, torch.where(odd, h, w), torch.where(odd, w, h)], dim=-1)


class BatchAugment:
    """Flips and quarter turns of each image of a batch (see module docs).

    ``seed``: the generator's seed (``generator_seed``); the draws then depend only on it
    and the sequence of batch sizes, so a resumed epoch that replays its first batches
    reproduces the same augmentation."""

    def __init__(self, augment: AugmentConfig, *, patch_size: int, seed: int | None):
        self.augment = augment
        self.patch_size = patch_size
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def draws(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(hflip [B] bool, vflip [B] bool, k [B] int64)`` for the next batch."""
        a, g = self.augment, self.generator
        hflip = torch.rand(batch_size, generator=g) < a.hflip
        vflip = torch.rand(batch_size, generator=g) < a.vflip
        turn = torch.rand(batch_size, generator=g) < a.rotate90
        k = torch.randint(0, 4, (batch_size,), generator=g) * turn
        return hflip, vflip, k

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.augment.enabled:
            return batch
        patches = batch["patches"]
        b = patches.shape[0]
        hflip, vflip, k = (t.to(patches.device) for t in self.draws(b))
        if b == 0 or not (hflip.any() or vflip.any() or k.any()):
            return batch
        gh, gw = (int(v) for v in batch["grid"][0])
        if k.any() and gh != gw:
            raise ValueError(f"quarter turns need a square grid, got {gh}x{gw}")
        images = unpatchify(patches, (gh, gw), self.patch_size)  # [B, H, W, 3]
        images = torch.where(hflip.view(-1, 1, 1, 1), images.flip(2), images)
        images = torch.where(vflip.view(-1, 1, 1, 1), images.flip(1), images)
        if k.any():  # images is torch.where's new tensor: written in place, the batch is not
            for turns in (1, 2, 3):
                sel = k == turns
                if sel.any():
                    images[sel] = torch.rot90(images[sel], turns, dims=(1, 2))
        out = dict(batch)
        out["patches"] = patchify(images, self.patch_size)[0].contiguous()
        if "boxes" in batch:
            cx, cy, w, h = batch["boxes"].unbind(-1)
            cx = torch.where(hflip.view(-1, 1), 1 - cx, cx)
            cy = torch.where(vflip.view(-1, 1), 1 - cy, cy)
            out["boxes"] = turn_boxes(torch.stack([cx, cy, w, h], dim=-1), k)
        return out
