"""Masked-autoencoder (MAE, He et al. 2021) self-supervised pretraining around a vitpipe ViT.

The encoder is an ordinary vitpipe classifier (a timm ``VisionTransformer`` built by
``build_model``), so its weights are saved in the classifier's checkpoint contract and
fine-tuning (``pipelines.finetune``) or YOLOS initialisation (``pipelines.detect``) start
from them unchanged. Its classification head is not used here (frozen, saved untouched).

Per image: a random ``mask_ratio`` of the ``N`` patches is hidden; the encoder sees only the
``N_keep = int(N * (1 - mask_ratio))`` visible patch tokens (plus its prefix tokens), each
with its own position embedding; a light decoder (timm ``Block``s, fixed 2-D sin-cos
position embeddings) gets the encoded tokens back in place, a shared learned mask token at
every hidden position, and predicts the pixels of every patch. The loss is the MSE between
prediction and target on the HIDDEN patches only; the target is the patch's pixels
normalised with the model's mean/std and, with ``norm_pix_loss`` (the paper's default),
per patch (mean 0, variance 1 over the patch's ``P*P*3`` values).

Shapes: ``patches`` ``[B, N, P*P*3]`` uint8 (row, col, channel order within a patch; the
data layer's contract), encoder width ``D``, decoder width ``Dd``.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import PatchEmbed, build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from components.core.batch import grid_tuple


class MaeConfigError(ValueError):
    """The encoder cannot be used for MAE (not a plain ViT) or the settings are out of range."""


def check_mae_encoder(encoder: nn.Module) -> None:
    """MAE needs a plain ViT: patch tokens straight from a linear patch embedding with
    absolute position embeddings (no CNN stem that would see the hidden patches)."""
    family = getattr(encoder, "family", None)
    backbone = getattr(encoder, "backbone", None)
    if family != "vit" or backbone is None or getattr(backbone, "pos_embed", None) is None:
        raise MaeConfigError(
            f"MAE pretraining needs a ViT-family encoder (family 'vit', e.g. vit_demo, deit_demo, "
            f"vit_*_patch16_224); {getattr(encoder, 'name', type(encoder).__name__)!r} is family {family!r}")
    if getattr(backbone, "dynamic_img_size", False):
        raise MaeConfigError("MAE needs a fixed-size ViT (dynamic_img_size=False)")
    if not isinstance(backbone.patch_embed, PatchEmbed):
        raise MaeConfigError(
            "MAE needs the linear patch embedding: a convolutional stem (stem=conv) sees across patches, "
            "so hidden patches would leak into the visible tokens")


def random_masking(batch: int, num_patches: int, mask_ratio: float, *, device: torch.device,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking (argsort of uniform noise).

    Returns ``ids_keep`` ``[B, N_keep]`` (visible patch indices), ``ids_restore`` ``[B, N]``
    (position of each patch in the kept-then-hidden order) and ``mask`` ``[B, N]`` float
    (1 = hidden, 0 = visible), with ``N_keep = int(N * (1 - mask_ratio))`` (at least 1).
    """
    keep = max(1, int(num_patches * (1.0 - mask_ratio)))
    noise = torch.rand(batch, num_patches, generator=generator, device="cpu").to(device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(batch, num_patches, device=device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, ids_restore, mask


def masked_patch_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE per patch ``[B, N]`` averaged over the hidden patches only (``mask`` 1 = hidden)."""
    per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp(min=1.0)


class MaskedAutoencoder(nn.Module):
    """MAE around a vitpipe ViT classifier ``encoder``.

    ``forward(patches [B, N, P*P*3], grid) -> {"loss_recon": scalar, "pred": [B, N, P*P*3],
    "mask": [B, N]}``. In eval mode the mask comes from a generator seeded with
    ``eval_seed`` on every call, so validation losses are comparable across epochs.
    ``last_encoder_tokens`` (set by :meth:`encode`) is the encoder's input token count
    (prefix + visible), kept for tests and logs.
    """

    def __init__(self, encoder: nn.Module, *, mask_ratio: float = 0.75, decoder_dim: int = 64,
                 decoder_depth: int = 2, decoder_heads: int = 4, decoder_mlp_ratio: float = 4.0,
                 norm_pix_loss: bool = True, eval_seed: int = 0) -> None:
        super().__init__()
        check_mae_encoder(encoder)
        if not 0.0 < mask_ratio < 1.0:
            raise MaeConfigError(f"mask_ratio must lie in (0, 1), got {mask_ratio}")
        if decoder_dim % decoder_heads:
            raise MaeConfigError(f"decoder_dim {decoder_dim} is not a multiple of decoder_heads {decoder_heads}")
        self.encoder = encoder
        self.mask_ratio = float(mask_ratio)
        self.norm_pix_loss = bool(norm_pix_loss)
        self.eval_seed = int(eval_seed)
        self.decoder_config = {"decoder_dim": decoder_dim, "decoder_depth": decoder_depth,
                               "decoder_heads": decoder_heads, "decoder_mlp_ratio": decoder_mlp_ratio}
        backbone = encoder.backbone
        # The classifier's head (and an avg-pool fc_norm when the final norm sits elsewhere) is
        # not part of the MAE graph: frozen, so DDP does not wait for gradients it never gets.
        for module in (encoder.head,) + ((backbone.fc_norm,) if not isinstance(backbone.norm, nn.Identity) else ()):
            module.requires_grad_(False)
        width = int(backbone.embed_dim)
        patch_dim = encoder.patch_size ** 2 * 3
        grid = encoder.grid_size
        self.decoder_embed = nn.Linear(width, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed",
                             build_sincos2d_pos_embed(list(grid), decoder_dim).unsqueeze(0), persistent=False)
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_dim, decoder_heads, mlp_ratio=decoder_mlp_ratio, qkv_bias=True)
            for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, patch_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        self.last_encoder_tokens = 0

    # -- the encoder's metadata, so the training loop treats this like any vitpipe model
    @property
    def patch_size(self) -> int:
        return self.encoder.patch_size

    @property
    def mean(self):
        return self.encoder.mean

    @property
    def std(self):
        return self.encoder.std

    @property
    def img_size(self):
        return self.encoder.img_size

    @property
    def build_config(self) -> dict[str, Any]:
        return self.encoder.build_config

    def decoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything but the encoder (the decoder and the mask token)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}

    # -- forward
    def targets(self, patches: torch.Tensor) -> torch.Tensor:
        """``[B, N, P*P*3]`` 0..255 → reconstruction targets ``[B, N, P*P*3]`` float32."""
        b, n, d = patches.shape
        mean = torch.tensor(self.mean, device=patches.device) * 255.0
        std = torch.tensor(self.std, device=patches.device) * 255.0
        x = ((patches.float().view(b, n, d // 3, 3) - mean) / std).view(b, n, d)
        if self.norm_pix_loss:
            x = (x - x.mean(dim=-1, keepdim=True)) / (x.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        return x

    def encode(self, images: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Normalised images ``[B, 3, H, W]`` + visible ids ``[B, N_keep]`` →
        encoded tokens ``[B, prefix + N_keep, D]`` (the encoder never sees hidden patches)."""
        bb = self.encoder.backbone
        tokens = bb.patch_embed(images)  # [B, N, D]
        prefix_pos = 0 if bb.no_embed_class else bb.num_prefix_tokens
        tokens = tokens + bb.pos_embed[:, prefix_pos:]
        dim = tokens.shape[-1]
        tokens = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        prefix = [t.expand(tokens.shape[0], -1, -1) for t in (bb.cls_token, bb.reg_token) if t is not None]
        if prefix:
            prefix_tokens = torch.cat(prefix, dim=1)
            if prefix_pos:
                prefix_tokens = prefix_tokens + bb.pos_embed[:, :prefix_pos]
            tokens = torch.cat([prefix_tokens, tokens], dim=1)
        self.last_encoder_tokens = int(tokens.shape[1])
        tokens = bb.norm_pre(bb.pos_drop(tokens))
        tokens = bb.blocks(tokens)
        return bb.norm(tokens) if not isinstance(bb.norm, nn.Identity) else bb.fc_norm(tokens)

    def decode(self, encoded: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Encoded ``[B, prefix + N_keep, D]`` → predicted patches ``[B, N, P*P*3]``."""
        prefix = self.encoder.backbone.num_prefix_tokens
        x = self.decoder_embed(encoded)  # [B, prefix + N_keep, Dd]
        b, n = ids_restore.shape
        visible = x[:, prefix:]
        hidden = self.mask_token.expand(b, n - visible.shape[1], -1).to(visible.dtype)
        full = torch.cat([visible, hidden], dim=1)  # kept-then-hidden order
        full = torch.gather(full, 1, ids_restore.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
        full = full + self.decoder_pos_embed.to(full.dtype)
        x = torch.cat([x[:, :prefix], full], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, prefix:]

    def forward(self, patches: torch.Tensor, grid: tuple[int, int] | torch.Tensor,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        grid = grid_tuple(grid)
        images = self.encoder.normalize_patches(patches, grid)
        b, n = patches.shape[:2]
        if generator is None and not self.training:
            generator = torch.Generator().manual_seed(self.eval_seed)
        ids_keep, ids_restore, mask = random_masking(b, n, self.mask_ratio, device=patches.device,
                                                     generator=generator)
        pred = self.decode(self.encode(images, ids_keep), ids_restore)
        loss = masked_patch_loss(pred, self.targets(patches), mask)
        return {"loss_recon": loss, "pred": pred, "mask": mask}


def build_mae(encoder_name: str, *, img_size: int, head: str = "linear", overrides: dict | None = None,
              **mae_kwargs: Any) -> MaskedAutoencoder:
    """An MAE around ``build_model(encoder_name, num_classes=0, img_size=..., head=...)``."""
    from components.models.registry import build_model

    encoder = build_model(encoder_name, num_classes=0, img_size=img_size, head=head, **(overrides or {}))
    return MaskedAutoencoder(encoder, **mae_kwargs)
