"""``?attention=1``: the attention-rollout map of one request as a base64 PNG.

Uses ``components.models.attention`` (explicit-softmax path only inside its capture block,
so ordinary batches keep the fused SDPA kernel). The overlay is drawn on the model input
(the whole image resized to ``image_size``), upscaled to at least 256 px so it is legible.
Classification: the rollout row of [CLS]; detection: the row of the highest-scoring
detection token.
"""

import base64
import io

import numpy as np
import torch

from components.serving.runtime import LoadedModel

MIN_SIDE = 256


class AttentionUnavailable(ValueError):
    """The served model has no ViT attention (CNN, TNT, DETR)."""


def attention_png(loaded: LoadedModel, patches: np.ndarray) -> str:
    """One request's patches ``[N, P*P*3]`` → base64 PNG of the rollout overlay."""
    from PIL import Image

    from components.data.patchify import unpatchify
    from components.models.attention import (
        attention_maps, overlay, patch_map, rollout, token_layout,
    )

    try:
        layout = token_layout(loaded.model)
    except TypeError as err:
        raise AttentionUnavailable(
            f"attention maps are not available for {loaded.meta.model_name}: {err}") from None
    batch = torch.from_numpy(np.ascontiguousarray(patches))[None].to(loaded.device)
    with loaded.lock, torch.inference_mode():  # fp32: maps are for people, not for speed
        outputs, layers = attention_maps(loaded.model, batch, loaded.grid)
    joint = rollout(layers)[0]
    if isinstance(outputs, torch.Tensor):  # a classifier's logits: the [CLS] token's row
        row = joint[0]
    else:
        scores = outputs["pred_logits"].float().softmax(-1)[0, :, :-1].max(-1).values
        best = int(scores.argmax())
        row = joint[layout.prefix + layout.grid[0] * layout.grid[1] + best]
    image = unpatchify(patches, loaded.grid, loaded.meta.patch_size)
    side = max(MIN_SIDE, image.shape[0])
    image = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))
    buf = io.BytesIO()
    Image.fromarray(overlay(image, patch_map(row, layout))).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
