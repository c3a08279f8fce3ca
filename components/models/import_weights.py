"""Import weights from timm and Hugging Face checkpoints (local files) into vitpipe models.

Supported sources (``detect_format`` tells them apart by their keys):

- ``timm``: timm ViT/DeiT state dicts (``blocks.N.attn.qkv``, ``head``; old ViTs'
  ``pre_logits.fc`` becomes the MLP head's hidden layer) → vitpipe ViT classifiers;
- ``hf_vit``: transformers ``ViTModel`` / ``ViTForImageClassification`` (DeiT non-distilled
  checkpoints are this type; ``ViTModel``'s pooler — dense + tanh — is the MLP head's
  hidden layer) → vitpipe ViT classifiers;
- ``hf_yolos``: transformers ``YolosForObjectDetection`` → vitpipe YOLOS;
- ``hf_detr``: transformers ``DetrForObjectDetection`` with its timm ResNet backbone (hub
  checkpoints' ``conv_encoder``/``out_proj``/``fc1`` names and transformers 5's names) →
  vitpipe DETR (BatchNorm statistics included; frozen or not is the vitpipe model's choice).

Files are read without unpickling: ``.safetensors`` via safetensors, anything else with
``torch.load(..., weights_only=True)``. Position embeddings trained at another resolution
are resized (bicubic) on load. Hugging Face models use LayerNorm eps 1e-12; build the
vitpipe model with ``norm_eps=1e-12`` to reproduce their outputs exactly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from components.models.posembed import load_weights

FORMATS = ("vitpipe", "timm", "hf_vit", "hf_yolos", "hf_detr")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local ``.safetensors`` or ``.pth/.bin/.pt`` file (never unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    raw = torch.load(str(path), map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "model_state"):  # training checkpoints nest the weights
        if isinstance(raw, dict) and isinstance(raw.get(wrapper), dict):
            raw = raw[wrapper]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return raw


def detect_format(state: Mapping[str, torch.Tensor]) -> str:
    keys = set(state)
    if any(k.startswith("backbone.") for k in keys):
        return "vitpipe"
    if any(k.startswith("model.query_position_embeddings") for k in keys):
        return "hf_detr"
    if any("embeddings.detection_tokens" in k for k in keys):
        return "hf_yolos"
    if any(k.endswith("embeddings.cls_token") for k in keys):
        return "hf_vit"
    if "cls_token" in keys and any(k.startswith("blocks.") for k in keys):
        return "timm"
    raise ValueError("unrecognised checkpoint layout (expected timm, Hugging Face ViT/YOLOS or vitpipe keys)")


def convert_timm_vit(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ``VisionTransformer`` keys → vitpipe classifier keys."""
    out = {}
    for key, value in state.items():
        if key in ("head.weight", "head.bias"):
            out[f"head.fc.{key.split('.')[-1]}"] = value
        elif key.startswith("pre_logits.fc."):
            out[f"head.hidden.{key.split('.')[-1]}"] = value
        else:
            out[f"backbone.{key}"] = value
    return out


# Hugging Face ViT layer names, both the hub checkpoints' layout (``encoder.layer.N.attention.
# attention.query``) and transformers 5's (``layers.N.attention.q_proj``) → timm block names.
_HF_LAYER = {
    "layernorm_before": "norm1", "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}
_HF_QKV = {
    "attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
    "attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v",
}


def _hf_encoder(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """HF ViT encoder + embeddings (under ``prefix``) → timm ``backbone.*`` keys.

    Separate q/k/v projections are concatenated into timm's fused ``qkv``.
    """
    out: dict[str, torch.Tensor] = {}
    emb = f"{prefix}embeddings."
    out["backbone.cls_token"] = state[f"{emb}cls_token"]
    out["backbone.patch_embed.proj.weight"] = state[f"{emb}patch_embeddings.projection.weight"]
    out["backbone.patch_embed.proj.bias"] = state[f"{emb}patch_embeddings.projection.bias"]
    out["backbone.norm.weight"] = state[f"{prefix}layernorm.weight"]
    out["backbone.norm.bias"] = state[f"{prefix}layernorm.bias"]
    layer_re = re.compile(rf"^{re.escape(prefix)}(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = layer_re.match(key)
        if not m:
            continue
        i, name, kind = int(m.group(1)), m.group(2), m.group(3)
        if name in _HF_QKV:
            qkv.setdefault((i, kind), {})[_HF_QKV[name]] = value
        elif name in _HF_LAYER:
            out[f"backbone.blocks.{i}.{_HF_LAYER[name]}.{kind}"] = value
        else:
            raise ValueError(f"unexpected Hugging Face key {key}")
    if not qkv:
        raise ValueError("no Hugging Face ViT encoder layers found")
    for (i, kind), parts in qkv.items():
        out[f"backbone.blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def convert_hf_vit(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``ViTModel`` / ``ViTForImageClassification`` keys → vitpipe classifier keys."""
    prefix = "vit." if any(k.startswith("vit.") for k in state) else ""
    out = _hf_encoder(state, prefix)
    pos = state[f"{prefix}embeddings.position_embeddings"]
    out["backbone.pos_embed"] = pos
    for kind in ("weight", "bias"):
        if f"classifier.{kind}" in state:
            out[f"head.fc.{kind}"] = state[f"classifier.{kind}"]
        if f"{prefix}pooler.dense.{kind}" in state:
            out[f"head.hidden.{kind}"] = state[f"{prefix}pooler.dense.{kind}"]
    return out


def convert_hf_yolos(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``YolosForObjectDetection`` keys → vitpipe YOLOS keys."""
    prefix = "vit."
    out = _hf_encoder(state, prefix)
    det = state[f"{prefix}embeddings.detection_tokens"]
    q = det.shape[1]
    pos = state[f"{prefix}embeddings.position_embeddings"]
    out["det_token"] = det
    out["backbone.pos_embed"] = pos[:, :-q]
    out["det_pos_embed"] = pos[:, -q:]
    mid = state.get(f"{prefix}encoder.mid_position_embeddings",
                    state.get(f"{prefix}encoder.interpolation.mid_position_embeddings"))
    if mid is not None:
        out["mid_pos_embed"] = mid[:, :, :-q]
        out["mid_det_pos_embed"] = mid[:, :, -q:]
    for head_hf, head_ours in (("class_labels_classifier", "class_embed"), ("bbox_predictor", "bbox_embed")):
        for key, value in state.items():
            if key.startswith(f"{head_hf}."):
                out[f"{head_ours}.{key[len(head_hf) + 1:]}"] = value
    return out


# (pattern, replacement) applied in order to each Hugging Face DETR key.
_HF_DETR_RULES = [
    (r"^model\.backbone\.(?:conv_encoder\.)?model\.", "backbone."),
    (r"^model\.input_projection\.", "input_proj."),
    (r"^model\.query_position_embeddings\.", "query_embed."),
    (r"^model\.decoder\.layernorm\.", "decoder_norm."),
    (r"^model\.(encoder|decoder)\.layers\.", r"\1."),
    (r"\.encoder_attn\.", ".cross_attn."),
    (r"\.(self_attn|cross_attn)\.o_proj\.", r".\1.out_proj."),
    (r"\.mlp\.(fc[12])\.", r".\1."),
    (r"\.self_attn_layer_norm\.", ".norm1."),
    (r"\.encoder_attn_layer_norm\.", ".norm2."),
    (r"^class_labels_classifier\.", "class_embed."),
    (r"^bbox_predictor\.", "bbox_embed."),
]


def convert_hf_detr(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``DetrForObjectDetection`` keys → vitpipe DETR keys."""
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in _HF_DETR_RULES:
            new = re.sub(pattern, repl, new)
        if new.startswith("encoder.") and ".final_layer_norm." in new:
            new = new.replace(".final_layer_norm.", ".norm2.")
        elif new.startswith("decoder.") and ".final_layer_norm." in new:
            new = new.replace(".final_layer_norm.", ".norm3.")
        if new.startswith("model."):
            raise ValueError(f"unexpected Hugging Face DETR key {key}")
        out[new] = value
    return out


_CONVERTERS = {"timm": convert_timm_vit, "hf_vit": convert_hf_vit, "hf_yolos": convert_hf_yolos,
               "hf_detr": convert_hf_detr, "vitpipe": dict}


def import_weights(
    model: nn.Module, source: str | Path | Mapping[str, torch.Tensor], *, fmt: str = "auto", strict: bool = True,
    source_grid: tuple[int, int] | None = None,
) -> tuple[list[str], list[str]]:
    """Load a timm / Hugging Face / vitpipe checkpoint (file or state dict) into ``model``.

    ``fmt`` is one of :data:`FORMATS` or ``"auto"``. ``source_grid`` is the checkpoint's
    patch grid when it is not square (e.g. YOLOS trained at 800×1333). Returns
    ``(missing_keys, unexpected_keys)`` (empty when ``strict``).
    """
    state = read_state_dict(source) if isinstance(source, (str, Path)) else dict(source)
    fmt = detect_format(state) if fmt == "auto" else fmt
    if fmt not in _CONVERTERS:
        raise ValueError(f"fmt must be one of {FORMATS} or 'auto', got {fmt!r}")
    converted = _CONVERTERS[fmt](state)
    for key, value in model.state_dict().items():  # frozen-BN sources carry no batch counters
        if key.endswith("num_batches_tracked") and key not in converted:
            converted[key] = value
    return load_weights(model, converted, strict=strict, source_grid=source_grid)
