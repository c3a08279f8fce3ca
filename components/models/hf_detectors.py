"""Modern DETR-family detectors from Hugging Face transformers: RT-DETRv2, D-FINE, LW-DETR.

Each registered name is a transformers config (the sizes of the papers' model zoos) built
with random weights: ``<Family>ForObjectDetection(<Family>Config(...))``, the backbone
(HF's ResNet-vd, HGNetV2 or the LW-DETR ViT) built from its own sub-config, nothing
downloaded. The wrapper only adapts the contracts:

- in: the data layer's patches (``VisionModel.forward``: un-patchified and normalised on
  the device); letterboxed batches pass their padding as the library's ``pixel_mask``
  (``valid_hw`` → ``[B, H, W]``, 1 = image); without one every pixel counts as valid. Any
  input size that is a multiple of the family's stride is accepted;
- out: ``{"pred_logits": [B, Q, C], "pred_boxes": [B, Q, 4]}`` normalised cxcywh. The class
  logits are *sigmoid* scores with no "no object" column (the libraries train them with
  focal / varifocal losses): ``class_scores = "sigmoid"`` tells
  :func:`components.models.postprocess.detections` to take the top-k over queries × classes,
  as the library's own ``post_process_object_detection`` does;
- loss: the library computes it. ``forward(patches, grid, targets=...)`` passes the targets
  as HF ``labels`` (``class_labels`` + normalised cxcywh ``boxes`` per image) and adds
  ``"loss"`` (the library's weighted total) and ``"loss_dict"`` (its named terms: varifocal
  / focal, L1, GIoU, per auxiliary layer, denoising groups, D-FINE's FGL/DDF, LW-DETR's
  one-to-many groups) to the outputs. ``computes_loss = True`` makes the training step use
  them instead of our set criterion.

Sizes (parameters with 80 classes, as the papers count them; see docs/models.md).
"""

from __future__ import annotations

import copy
import importlib
import math
from typing import Any

import torch

from components.models.base import IMAGENET_MEAN, IMAGENET_STD, VisionModel
from components.models.postprocess import check_nms_iou
from components.models.registry import ModelSpec, register

# family → (transformers config class, model class, default mean, default std). RT-DETRv2
# and D-FINE take 0..1 pixels (their image processors only rescale); LW-DETR normalises
# with the ImageNet statistics.
_UNIT = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
FAMILIES: dict[str, tuple[str, str, tuple, tuple]] = {
    "rtdetr_v2": ("RTDetrV2Config", "RTDetrV2ForObjectDetection", *_UNIT),
    "dfine": ("DFineConfig", "DFineForObjectDetection", *_UNIT),
    "lwdetr": ("LwDetrConfig", "LwDetrForObjectDetection", IMAGENET_MEAN, IMAGENET_STD),
}


def _transformers_class(name: str):
    return getattr(importlib.import_module("transformers"), name)


def size_multiple(family: str, config: dict[str, Any]) -> int:
    """The side the input must be a multiple of: the coarsest feature stride (RT-DETRv2,
    D-FINE), or the ViT patch × the window grid side (LW-DETR's windowed attention)."""
    if family == "lwdetr":
        backbone = config.get("backbone_config") or {}
        windows = int(backbone.get("num_windows", 16))
        return int(backbone.get("patch_size", 16)) * max(1, math.isqrt(windows))
    return int(max(config.get("feat_strides") or (8, 16, 32)))


def hf_config(family: str, num_classes: int, config: dict[str, Any]):
    """The transformers config of ``family`` with ``num_classes`` labels (no pretrained
    backbone: the backbone is built from its sub-config)."""
    config_cls = _transformers_class(FAMILIES[family][0])
    return config_cls(num_labels=int(num_classes), **copy.deepcopy(config))


class HFDetector(VisionModel):
    """A transformers DETR-family detector behind the vitpipe detection contract.

    Args:
        family: a key of :data:`FAMILIES`.
        num_classes: object classes (no "no object" class: scores are sigmoids).
        img_size: input side(s), a multiple of :func:`size_multiple` and of ``patch_size``.
        patch_size: the data layer's patch size (the wire format, not the model's).
        nms_iou: class-aware NMS at inference (None = off; these detectors are one-to-one).
        config: keyword arguments of the family's transformers config.
    """

    task = "detection"
    class_scores = "sigmoid"
    computes_loss = True
    takes_pixel_mask = True
    any_size = True

    def __init__(self, *, family: str, num_classes: int, img_size: int | tuple[int, int], patch_size: int = 16,
                 nms_iou: float | None = None, mean=None, std=None, **config: Any) -> None:
        if family not in FAMILIES:
            raise ValueError(f"unknown detector family {family!r}; known: {', '.join(FAMILIES)}")
        _, model_cls, default_mean, default_std = FAMILIES[family]
        super().__init__(img_size=img_size, patch_size=patch_size, mean=mean or default_mean, std=std or default_std)
        multiple = size_multiple(family, config)
        hw = (self.img_size, self.img_size) if isinstance(self.img_size, int) else self.img_size
        if hw[0] % multiple or hw[1] % multiple:
            raise ValueError(f"{family} needs an img_size that is a multiple of {multiple}, got {self.img_size}")
        self.family = family
        self.num_classes = int(num_classes)
        self.nms_iou = check_nms_iou(nms_iou)
        self._config = dict(config)
        self.hf = _transformers_class(model_cls)(hf_config(family, num_classes, config))

    def reset_classes(self, num_classes: int) -> None:
        """A new class count: the class-dependent layers start afresh, every other weight is kept."""
        old = self.hf.state_dict()
        device = next(self.hf.parameters()).device
        self.hf = _transformers_class(FAMILIES[self.family][1])(
            hf_config(self.family, num_classes, self._config)).to(device)
        new = self.hf.state_dict()
        self.hf.load_state_dict({k: v for k, v in old.items() if k in new and new[k].shape == v.shape},
                                strict=False)
        self.num_classes = int(num_classes)

    def pretrained_state(self, state):
        """A vitpipe ViT classifier's (or MAE encoder's) weights in LW-DETR's backbone names
        (:mod:`components.models.vit_transfer`); any other state as it is."""
        from components.models.vit_transfer import is_vit_classifier_state, vit_to_lwdetr

        if self.family == "lwdetr" and is_vit_classifier_state(state):
            return vit_to_lwdetr(state, self.state_dict())
        return dict(state)

    def forward(self, patches: torch.Tensor, grid: tuple[int, int] | torch.Tensor,
                valid_hw: torch.Tensor | None = None,
                targets: list[dict[str, torch.Tensor]] | None = None) -> dict[str, Any]:
        """Patches ``[B, N, P*P*3]`` (0..255) → outputs; with ``targets`` (per image
        ``{"boxes": [T, 4] normalised cxcywh, "classes": [T]}``) also the library's loss;
        ``valid_hw`` ``[B, 2]``: letterbox padding, passed as ``pixel_mask``."""
        images = self.normalize_patches(patches, grid)
        return self.forward_images(images, targets, pixel_mask=self.pixel_mask(images, valid_hw))

    def forward_images(self, images: torch.Tensor,
                       targets: list[dict[str, torch.Tensor]] | None = None,
                       pixel_mask: torch.Tensor | None = None) -> dict[str, Any]:
        """Normalised images ``[B, 3, H, W]`` → ``{"pred_logits": [B, Q, C] (sigmoid logits),
        "pred_boxes": [B, Q, 4] cxcywh}``, plus ``"loss"`` (scalar) and ``"loss_dict"`` when
        ``targets`` are given (denoising and one-to-many groups only in train mode)."""
        labels = None
        if targets is not None:
            labels = [{"class_labels": t["classes"].to(images.device, torch.int64),
                       "boxes": t["boxes"].to(images.device, torch.float32)} for t in targets]
        mask = None if pixel_mask is None else pixel_mask.to(torch.int64)
        out = self.hf(pixel_values=images, pixel_mask=mask, labels=labels)
        result: dict[str, Any] = {"pred_logits": out.logits, "pred_boxes": out.pred_boxes}
        if labels is not None:
            result["loss"] = out.loss
            result["loss_dict"] = dict(out.loss_dict)
        return result


def _register(name: str, family: str, description: str, *, img_size: int = 640, **config: Any) -> None:
    register(ModelSpec(
        name=name, task="detection", family=family, builder=HFDetector, img_size=img_size, patch_size=16,
        defaults={"family": family, **config}, default_num_classes=80, description=description,
    ))


# ------------------------------------------------------------------------------ RT-DETRv2
# ResNet-vd backbones (HF's rt_detr_resnet, built from config). Batch norms train: the
# library freezes them by default for ImageNet-initialised backbones; we start from random.
def _rtdetr(depths, *, layer_type="bottleneck", hidden_sizes=(256, 512, 1024, 2048), embedding_size=64,
            **config: Any) -> dict:
    backbone = {"model_type": "rt_detr_resnet", "depths": list(depths), "layer_type": layer_type,
                "hidden_sizes": list(hidden_sizes), "embedding_size": embedding_size, "out_indices": [2, 3, 4]}
    return {"backbone_config": backbone, "freeze_backbone_batch_norms": False, **config}


_BASIC = {"layer_type": "basic", "hidden_sizes": (64, 128, 256, 512)}
_register("rtdetr_v2_r18", "rtdetr_v2", "RT-DETRv2-S (ResNet-18vd, 3 decoder layers)",
          **_rtdetr((2, 2, 2, 2), **_BASIC, encoder_in_channels=[128, 256, 512], hidden_expansion=0.5,
                    decoder_layers=3))
_register("rtdetr_v2_r34", "rtdetr_v2", "RT-DETRv2-M* (ResNet-34vd, 4 decoder layers)",
          **_rtdetr((3, 4, 6, 3), **_BASIC, encoder_in_channels=[128, 256, 512], hidden_expansion=0.5,
                    decoder_layers=4))
_register("rtdetr_v2_r50_m", "rtdetr_v2", "RT-DETRv2-M (ResNet-50vd, encoder expansion 0.5)",
          **_rtdetr((3, 4, 6, 3), hidden_expansion=0.5))
_register("rtdetr_v2_r50", "rtdetr_v2", "RT-DETRv2-L (ResNet-50vd)", **_rtdetr((3, 4, 6, 3)))
_register("rtdetr_v2_r101", "rtdetr_v2", "RT-DETRv2-X (ResNet-101vd, 384-wide encoder)",
          **_rtdetr((3, 4, 23, 3), encoder_ffn_dim=2048, encoder_hidden_dim=384, decoder_in_channels=[384] * 3))
_register("rtdetr_v2_demo", "rtdetr_v2", "tiny RT-DETRv2 (ResNet 16..64 ch, d=64, 2 decoder layers, 20 queries)",
          img_size=64,
          **_rtdetr((1, 1, 1, 1), layer_type="basic", hidden_sizes=(16, 32, 48, 64), embedding_size=16,
                    encoder_in_channels=[32, 48, 64], encoder_hidden_dim=64, encoder_ffn_dim=128,
                    encoder_attention_heads=4, hidden_expansion=0.5, d_model=64, decoder_in_channels=[64] * 3,
                    decoder_ffn_dim=128, decoder_attention_heads=4, decoder_layers=2, num_queries=20,
                    num_denoising=10))


# ---------------------------------------------------------------------------------- D-FINE
# HGNetV2 backbones (HF's hgnet_v2); the stage tables are the D-FINE model zoo's.
def _hgnet(stem, stage_in, stage_mid, stage_out, blocks, layers, *, light=(False, False, True, True),
           kernels=(3, 3, 5, 5), out_indices=(2, 3, 4), lab=True) -> dict:
    return {"model_type": "hgnet_v2", "stem_channels": list(stem), "stage_in_channels": list(stage_in),
            "stage_mid_channels": list(stage_mid), "stage_out_channels": list(stage_out),
            "stage_num_blocks": list(blocks), "stage_downsample": [False, True, True, True],
            "stage_light_block": list(light), "stage_kernel_size": list(kernels),
            "stage_numb_of_layers": list(layers), "hidden_sizes": list(stage_out),
            "out_indices": list(out_indices), "use_learnable_affine_block": lab}


def _dfine(backbone: dict, **config: Any) -> dict:
    return {"backbone_config": backbone, "freeze_backbone_batch_norms": False, **config}


_B0 = ((3, 16, 16), (16, 64, 256, 512), (16, 32, 64, 128), (64, 256, 512, 1024), (1, 1, 2, 1), (3, 3, 3, 3))
_register("dfine_n", "dfine", "D-FINE-N (HGNetV2-B0, 2 levels, d=128, 3 decoder layers)",
          **_dfine(_hgnet(*_B0, out_indices=(3, 4)), num_feature_levels=2, feat_strides=[16, 32],
                   encoder_in_channels=[512, 1024], encode_proj_layers=[1], encoder_hidden_dim=128,
                   encoder_ffn_dim=512, d_model=128, decoder_in_channels=[128, 128], decoder_ffn_dim=512,
                   decoder_n_points=[6, 6], decoder_layers=3, depth_mult=0.5, hidden_expansion=0.34))
_register("dfine_s", "dfine", "D-FINE-S (HGNetV2-B0, 3 decoder layers)",
          **_dfine(_hgnet(*_B0), encoder_in_channels=[256, 512, 1024], decoder_n_points=[3, 6, 3],
                   decoder_layers=3, depth_mult=0.34, hidden_expansion=0.5))
_register("dfine_m", "dfine", "D-FINE-M (HGNetV2-B2, 4 decoder layers)",
          **_dfine(_hgnet((3, 24, 32), (32, 96, 384, 768), (32, 64, 128, 256), (96, 384, 768, 1536),
                          (1, 1, 3, 1), (4, 4, 4, 4)),
                   encoder_in_channels=[384, 768, 1536], decoder_n_points=[3, 6, 3], decoder_layers=4,
                   depth_mult=0.67))
_register("dfine_l", "dfine", "D-FINE-L (HGNetV2-B4, 6 decoder layers)",
          **_dfine(_hgnet((3, 32, 48), (48, 128, 512, 1024), (48, 96, 192, 384), (128, 512, 1024, 2048),
                          (1, 1, 3, 1), (6, 6, 6, 6), lab=False),
                   encoder_in_channels=[512, 1024, 2048], decoder_n_points=[3, 6, 3]))
_register("dfine_x", "dfine", "D-FINE-X (HGNetV2-B5, 384-wide encoder, 6 decoder layers)",
          **_dfine(_hgnet((3, 32, 64), (64, 128, 512, 1024), (64, 128, 256, 512), (128, 512, 1024, 2048),
                          (1, 2, 5, 2), (6, 6, 6, 6), lab=False),
                   encoder_in_channels=[512, 1024, 2048], encoder_hidden_dim=384, encoder_ffn_dim=2048,
                   decoder_in_channels=[384] * 3, decoder_n_points=[3, 6, 3]))
_register("dfine_demo", "dfine", "tiny D-FINE (HGNetV2 8..64 ch, 2 levels, d=64, 2 decoder layers, 20 queries)",
          img_size=64,
          **_dfine(_hgnet((3, 8, 8), (8, 16, 32, 48), (8, 8, 16, 16), (16, 32, 48, 64), (1, 1, 1, 1),
                          (1, 1, 1, 1), out_indices=(3, 4)),
                   num_feature_levels=2, feat_strides=[16, 32], encoder_in_channels=[48, 64],
                   encode_proj_layers=[1], encoder_hidden_dim=64, encoder_ffn_dim=128, encoder_attention_heads=4,
                   d_model=64, decoder_in_channels=[64, 64], decoder_ffn_dim=128, decoder_attention_heads=4,
                   decoder_n_points=[2, 2], decoder_layers=2, depth_mult=0.34, hidden_expansion=0.34,
                   num_queries=20, num_denoising=10))


# --------------------------------------------------------------------------------- LW-DETR
# A plain ViT (HF's lw_detr_vit: interleaved window / global attention) + a C2f projector +
# a 3-layer deformable decoder, trained with 13 one-to-many query groups (group_detr).
# ``outs`` are the paper's 0-based block indices (the last block included); the HF backbone
# numbers its stages from the patch embedding (stage k = block k - 1), hence the + 1: taken
# literally, the last ViT block would run without feeding anything (it gets no gradient).
def _lwdetr(width: int, depth: int, windows: list[int], outs: list[int], *, scales=(1.0,), heads=(8, 16),
            points=2, d_model=256, num_queries=300, vit_heads=12, num_windows=16, **config: Any) -> dict:
    backbone = {"model_type": "lw_detr_vit", "image_size": 1024, "hidden_size": width, "num_hidden_layers": depth,
                "num_attention_heads": vit_heads, "window_block_indices": windows, "out_indices": [i + 1 for i in outs],
                "num_windows": num_windows}
    return {"backbone_config": backbone, "projector_scale_factors": list(scales), "num_queries": num_queries,
            "decoder_layers": 3, "decoder_self_attention_heads": heads[0],
            "decoder_cross_attention_heads": heads[1], "decoder_n_points": points, "d_model": d_model, **config}


_W10, _O10 = [0, 1, 3, 6, 7, 9], [2, 4, 5, 9]
_register("lwdetr_tiny", "lwdetr", "LW-DETR-tiny (ViT 6 × 192, 100 queries)",
          **_lwdetr(192, 6, [0, 2, 4], [1, 3, 5], num_queries=100))
_register("lwdetr_small", "lwdetr", "LW-DETR-small (ViT 10 × 192)", **_lwdetr(192, 10, _W10, _O10))
_register("lwdetr_medium", "lwdetr", "LW-DETR-medium (ViT 10 × 384)", **_lwdetr(384, 10, _W10, _O10))
_register("lwdetr_large", "lwdetr", "LW-DETR-large (ViT 10 × 384, two scales, d=384)",
          **_lwdetr(384, 10, _W10, _O10, scales=(2.0, 0.5), heads=(12, 24), points=4, d_model=384))
_register("lwdetr_xlarge", "lwdetr", "LW-DETR-xlarge (ViT 10 × 768, two scales, d=384)",
          **_lwdetr(768, 10, _W10, _O10, scales=(2.0, 0.5), heads=(12, 24), points=4, d_model=384))
# ViT-Ti/16's shape (12 × 192, 3 heads; vit_tiny_patch16_224 and the MAE encoder of
# pretrain_mae_bccd.yaml): a checkpoint of ours loads into its backbone (model.init_from).
# Global attention every third block, as ViTDet spaces it; those blocks feed the projector.
_register("lwdetr_vit_ti", "lwdetr", "LW-DETR with a ViT-Ti/16 backbone (12 × 192, 3 heads, 100 queries)",
          **_lwdetr(192, 12, [0, 1, 3, 4, 6, 7, 9, 10], [2, 5, 8, 11], vit_heads=3, num_queries=100))
_register("lwdetr_demo", "lwdetr", "tiny LW-DETR (ViT 2 × 48, d=64, 10 queries, 3 groups)", img_size=64,
          **_lwdetr(48, 2, [0], [0, 1], vit_heads=3, num_windows=4, heads=(4, 4), d_model=64, num_queries=10,
                    decoder_ffn_dim=128, group_detr=3))
