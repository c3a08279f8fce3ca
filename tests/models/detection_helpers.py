"""Shared by the detection tests: a random padded detection batch in the batch contract."""

from __future__ import annotations

import torch


def random_batch(b: int = 2, m: int = 3, num_classes: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """``boxes [b, m, 4]`` cxcywh inside the image, ``classes [b, m]``, ``box_mask [b, m]``
    (image 0's last row is padding)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(b, m, 2, generator=g) * 0.5 + 0.25
    sizes = torch.rand(b, m, 2, generator=g) * 0.3 + 0.1
    mask = torch.ones(b, m, dtype=torch.bool)
    mask[0, -1] = False  # padding row
    return {
        "boxes": torch.cat([centers, sizes], -1), "classes": torch.randint(0, num_classes, (b, m), generator=g),
        "box_mask": mask,
    }
