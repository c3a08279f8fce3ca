"""How a checkpoint is packaged as an MLflow model: a pyfunc "models from code" wrapper.

Nothing pickled: the logged model holds this package's entry file
(:mod:`components.tracking.pyfunc_entry`, which only calls ``set_model``), the checkpoint
(``model.safetensors`` + ``vitpipe.json``) as an artifact, a signature and an input example.
Loading it (``mlflow.pyfunc.load_model("models:/NAME@champion")``) rebuilds the architecture
from ``vitpipe.json`` with ``components.models.build_model`` and loads the safetensors
weights, so the loading side needs ``vitpipe`` installed (the serving image has it).

pyfunc input: uint8 RGB images ``[B, H, W, 3]``. Images already at the model's
``image_size`` are patchified as they are; others go through the eval transform
(``components.data.image_io.preprocess``: whole-image resize, as serving does; a detector
trained letterboxed, ``extra["letterbox"]``, letterboxes every image and passes the
padding mask). Output:
classification → logits ``[B, num_classes]`` float32; detection → ``{"pred_logits":
[B, Q, num_classes + 1], "pred_boxes": [B, Q, 4] normalised cxcywh}``. Predictions run in
fp32 so that they equal the checkpoint's exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.core.checkpoint import CheckpointMeta
from components.data.config import with_boxes
from components.models import model_from_checkpoint
from components.tasks import get_task

ENTRY_FILE = Path(__file__).with_name("pyfunc_entry.py")
CHECKPOINT_ARTIFACT = "checkpoint"


def images_to_batch(images: np.ndarray, meta: CheckpointMeta) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 ``[B, H, W, 3]`` → (patches uint8 ``[B, N, P*P*3]``, grid) at the model's size."""
    from components.data.patchify import patchify

    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 images [B, H, W, 3], got {images.dtype} {tuple(images.shape)}"
        )
    size = meta.image_size
    if images.shape[1:3] == (size, size):
        patches, grid = patchify(torch.from_numpy(np.ascontiguousarray(images)), meta.patch_size)
        return patches, grid
    from components.data.image_io import preprocess

    rows = [preprocess(img, image_size=size, patch_size=meta.patch_size) for img in images]
    grid = rows[0][1]
    return torch.from_numpy(np.stack([r[0] for r in rows])), tuple(grid)


def letterboxed_batch(images: np.ndarray, meta: CheckpointMeta
                      ) -> tuple[torch.Tensor, tuple[int, int], dict[str, torch.Tensor]]:
    """A letterboxed detector's input: each image letterboxed at ``image_size`` (the val
    transform) → (patches, grid, ``{"valid_hw": [B, 2]}``); boxes out are normalised to each
    image's valid region, so ``box · (w, h)`` maps them to its pixels."""
    from components.data.transforms import letterbox_preprocess

    rows = [letterbox_preprocess(np.ascontiguousarray(img), image_size=meta.image_size,
                                 patch_size=meta.patch_size) for img in np.asarray(images)]
    valid = torch.tensor([r[2] for r in rows], dtype=torch.int64)
    return torch.from_numpy(np.stack([r[0] for r in rows])), tuple(rows[0][1]), {"valid_hw": valid}


def predict_arrays(model: torch.nn.Module, meta: CheckpointMeta, images: np.ndarray):
    """Run ``model`` in fp32 on uint8 images; numpy outputs (see the module docstring)."""
    if with_boxes(meta.task) and meta.extra.get("letterbox"):
        patches, grid, padding = letterboxed_batch(images, meta)
    else:
        (patches, grid), padding = images_to_batch(images, meta), {}
    with torch.inference_mode():
        out = model(patches, grid, **padding)
    return get_task(meta.task).outputs_to_numpy(out)


def input_example(meta: CheckpointMeta, batch: int = 1, seed: int = 0) -> np.ndarray:
    """A deterministic uint8 image batch ``[batch, S, S, 3]`` at the model's size."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, meta.image_size, meta.image_size, 3), dtype=np.uint8)


def signature_for(meta: CheckpointMeta, example_output: Any):
    """The pyfunc signature: uint8 images in; logits (or detector tensors) out."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    inputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))])
    if isinstance(example_output, np.ndarray):  # one output tensor (a classifier's logits)
        outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, example_output.shape[-1]))])
    else:
        outputs = Schema([
            TensorSpec(np.dtype(np.float32), (-1, *example_output[k].shape[1:]), name=k)
            for k in get_task(meta.task).serving_outputs
        ])
    return ModelSignature(inputs=inputs, outputs=outputs)


try:  # the wrapper class needs mlflow; the helpers above do not
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[misc,assignment]


class VitpipePyfunc(PythonModel):
    """The pyfunc wrapper: rebuilds the checkpoint's model at load time."""

    def load_context(self, context) -> None:
        self.model, self.meta = model_from_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context, model_input, params=None):
        return predict_arrays(self.model, self.meta, np.asarray(model_input))
