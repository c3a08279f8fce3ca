"""Draw xyxy pixel boxes with labels on an image (``vitpipe data show``, debugging)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

PALETTE = [(255, 64, 64), (64, 220, 64), (64, 128, 255), (255, 200, 0), (230, 64, 230),
           (0, 220, 220), (255, 128, 0), (160, 96, 255)]


def draw_boxes(image_rgb: np.ndarray, boxes_xyxy: np.ndarray, labels: Sequence[str], *,
               min_side: int = 256) -> Image.Image:
    """``image_rgb`` ``[H, W, 3]`` uint8 + ``[K, 4]`` xyxy pixel boxes → a PIL image.

    Small images are enlarged (nearest) to ``min_side`` so that labels stay legible.
    """
    pil = Image.fromarray(image_rgb)
    scale = max(1.0, min_side / min(pil.size))
    if scale > 1:
        pil = pil.resize((round(pil.width * scale), round(pil.height * scale)),
                         Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(pil)
    colour_of: dict[str, tuple[int, int, int]] = {}
    for box, label in zip(np.asarray(boxes_xyxy, np.float64).reshape(-1, 4), labels):
        colour = colour_of.setdefault(label, PALETTE[len(colour_of) % len(PALETTE)])
        x0, y0, x1, y1 = (float(v) * scale for v in box)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
        tw = draw.textlength(label)
        draw.rectangle([x0, y0, x0 + tw + 4, y0 + 12], fill=colour)
        draw.text((x0 + 2, y0), label, fill=(0, 0, 0))
    return pil
