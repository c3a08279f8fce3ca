"""A convolutional stem for ViTs: stacked 3x3 stride-2 convolutions instead of the 16x16 patchify.

Xiao et al. 2021, "Early Convolutions Help Transformers See Better": replacing the ViT's
linear patch embedding (one stride-P convolution) with ``log2(P)`` 3x3 stride-2
conv-BN-ReLU layers and a 1x1 projection gives the transformer the CNN's locality bias
where it is cheapest, in the first layers. On the synthetic shapes it is what lets a
small ViT learn from a few thousand images and lets YOLOS localise boxes
(``benchmarks/probe_localization.py``: val IoU 0.08 with the linear patch embedding,
0.51 with this stem).

The token grid is the same as the patchify stem's (``img_size / P``), so position
embeddings, [CLS]/[DET] tokens, the data layer's patch tensors and checkpoints'
``patch_size`` are unchanged. timm's :class:`~timm.layers.HybridEmbed` wraps the stem
(``patch_size=1`` projection), as timm's own ResNet-ViT hybrids do.
"""

from __future__ import annotations

from typing import Any

from timm.layers import HybridEmbed
from torch import nn

STEMS = ("patch", "conv")


def conv_stem(embed_dim: int, patch_size: int, in_chans: int = 3) -> nn.Sequential:
    """``log2(patch_size)`` 3x3 stride-2 conv-BN-ReLU layers, widths ``w, 2w, 4w, ...`` with
    ``w = max(24, D / 8)``: ``D/8 .. D`` for ViT-S/B (about one transformer block of compute,
    as Xiao et al. size it), ``24 .. 192`` for the tiny demo models.

    ``[B, in_chans, H, W] → [B, C, H / patch_size, W / patch_size]`` (``C`` = the last width).
    """
    depth = patch_size.bit_length() - 1
    if patch_size < 4 or 1 << depth != patch_size:
        raise ValueError(f"a conv stem needs a power-of-two patch size >= 4, got {patch_size}")
    if embed_dim < 4:
        raise ValueError(f"embed_dim {embed_dim} is too small for a conv stem")
    widths = [max(24, embed_dim // 8) << i for i in range(depth)]
    layers: list[nn.Module] = []
    for cin, cout in zip([in_chans, *widths[:-1]], widths):
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def conv_stem_embed(*, img_size: Any, patch_size: int, in_chans: int = 3, embed_dim: int, bias: bool = True,
                    **kwargs: Any) -> HybridEmbed:
    """A timm ``embed_layer``: the conv stem + a 1x1 projection to ``embed_dim`` tokens.

    ``[B, 3, H, W] → [B, (H/P)·(W/P), embed_dim]``; ``.grid_size`` and ``.num_patches`` as
    timm's ``PatchEmbed``. Extra timm keywords (``dynamic_img_pad``, ``device``, ``dtype``)
    are accepted; a padded (dynamic) input size is not supported.
    """
    if kwargs.get("dynamic_img_pad"):
        raise ValueError("the conv stem does not support dynamic_img_pad")
    extra = {k: kwargs[k] for k in ("device", "dtype") if k in kwargs}
    size = patch_size if isinstance(patch_size, int) else int(patch_size[0])
    return HybridEmbed(conv_stem(embed_dim, size, in_chans), img_size=img_size, patch_size=1,
                       in_chans=in_chans, embed_dim=embed_dim, bias=bias, **extra)


def timm_stem_kwargs(stem: str) -> dict[str, Any]:
    """The keywords that give a timm ``VisionTransformer`` this stem: ``{}`` for ``"patch"``
    (timm's own ``PatchEmbed``), ``{"embed_layer": conv_stem_embed}`` for ``"conv"``."""
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; known: {', '.join(STEMS)}")
    return {"embed_layer": conv_stem_embed} if stem == "conv" else {}
