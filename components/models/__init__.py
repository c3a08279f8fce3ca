"""vitpipe models: registry, classifiers (timm), YOLOS, DETR, the set criterion, weight import.

Public API::

    build_model(name, *, num_classes, img_size=None, **overrides) -> VisionModel
    list_models(task=None) -> list[str]
    set_head(model, num_classes, kind="linear")
    load_weights(model, state_dict, *, strict=True, source_grid=None)
    resize_pos_embed(pos_embed, new_grid, old_grid=None, num_prefix_tokens=1)
    model_from_checkpoint(directory, device="cpu") -> (model, CheckpointMeta)
"""

from components.models.base import VisionModel
from components.models.heads import set_head
from components.models.posembed import load_weights, resize_pos_embed
from components.models.registry import build_model, get_spec, list_models


def model_from_checkpoint(directory, device="cpu"):
    """Rebuild a checkpoint directory's model (strict weight load), in eval mode: the
    checkpoint contract's loader (``components.core.checkpoint.load_model``) with this
    registry's builder. Returns ``(model, CheckpointMeta)``."""
    from components.core.checkpoint import load_model

    return load_model(directory, build_model, device)


__all__ = [
    "VisionModel", "build_model", "get_spec", "list_models", "load_weights", "model_from_checkpoint", "resize_pos_embed", "set_head",
]
