"""Torch batches from a Ray Dataset (or a Ray Train shard): the batch contract's collate.

Batch (all tensors, on ``device``):
  ``patches`` uint8 ``[B, N, P*P*3]``, ``grid`` int64 ``[B, 2]`` (same for every row);
  classification: ``label`` int64 ``[B]``;
  detection: ``boxes`` float32 ``[B, M, 4]`` normalised cxcywh, ``classes`` int64 ``[B, M]``,
  ``box_mask`` bool ``[B, M]`` (True = real box), ``image_id`` int64 ``[B]``,
  ``orig_size`` int64 ``[B, 2]`` (h, w); letterboxed data (``data.letterbox``) adds
  ``valid_hw`` int64 ``[B, 2]``: each image's region of the padded canvas (top-left
  anchored; ``components.data.letterbox.pixel_mask`` / ``patch_mask`` make masks of it).

Multi-scale training (``multiscale`` sizes): each letterboxed batch is re-letterboxed to a
size drawn at random from the list (``components.data.letterbox.rescale_batch``); boxes,
normalised to the valid region, are unchanged.

Rows arrive padded to ``max_boxes``; the detection collate trims the padding to the
largest box count in the batch (``M >= 1``), so a varying number of boxes per image costs
only what the batch needs.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from components.core.names import ModelTask
from components.data.config import with_boxes

Task = ModelTask

CLASSIFICATION_KEYS = ("patches", "grid", "label")
DETECTION_KEYS = ("patches", "grid", "boxes", "classes", "box_mask", "image_id", "orig_size")
OPTIONAL_KEYS = ("valid_hw",)  # letterboxed detection rows


def collate_numpy(batch: dict[str, np.ndarray], task: Task) -> dict[str, torch.Tensor]:
    """A numpy batch of rows → the torch batch contract (CPU tensors)."""
    boxes = with_boxes(task)
    keys = DETECTION_KEYS if boxes else CLASSIFICATION_KEYS
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"{task} batch lacks {missing}; got {sorted(batch)}")
    # Ray hands out read-only views; np.require copies only those (torch needs writable).
    keys = keys + tuple(k for k in OPTIONAL_KEYS if k in batch and boxes)
    out = {k: torch.from_numpy(np.require(batch[k], requirements=["C", "W"])) for k in keys}
    out["grid"] = out["grid"].to(torch.int64)
    if boxes:
        mask = out["box_mask"].to(torch.bool)
        m = max(1, int(mask.sum(dim=1).max().item())) if mask.numel() else 1
        out["boxes"] = out["boxes"][:, :m].to(torch.float32)
        out["classes"] = out["classes"][:, :m].to(torch.int64)
        out["box_mask"] = mask[:, :m]
    else:
        out["label"] = out["label"].to(torch.int64)
    return out


class _Collate(NumpyBatchCollateFn):
    def __init__(self, task: Task):
        super().__init__()
        self.task = task

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return collate_numpy(batch, self.task)


def iter_batches(dataset_or_shard: Any, *, batch_size: int, task: Task, drop_last: bool = False,
                 prefetch_batches: int = 2, device: str | torch.device | None = None,
                 local_shuffle_buffer_size: int | None = None,
                 local_shuffle_seed: int | None = None, multiscale: Sequence[int] | None = None,
                 multiscale_seed: int | None = None, patch_size: int = 16
                 ) -> Iterator[dict[str, torch.Tensor]]:
    """Iterate torch batches (see module docs) from a ``ray.data.Dataset`` or a
    ``DataIterator`` (``ray.train.get_dataset_shard``). ``device=None``: Ray Train's device
    inside a worker, else CPU. ``multiscale``: letterbox targets, one drawn per batch
    (``multiscale_seed`` makes the draws reproducible)."""
    with_boxes(task)  # an unknown task is a ValueError here, before any batch
    batches = dataset_or_shard.iter_torch_batches(
        batch_size=batch_size, collate_fn=_Collate(task), drop_last=drop_last,
        prefetch_batches=prefetch_batches, device="auto" if device is None else device,
        local_shuffle_buffer_size=local_shuffle_buffer_size, local_shuffle_seed=local_shuffle_seed)
    if not multiscale:
        yield from batches
        return
    yield from multiscale_batches(batches, multiscale, seed=multiscale_seed, patch_size=patch_size)


def multiscale_batches(batches: Iterable[dict[str, torch.Tensor]], sizes: Sequence[int], *,
                       seed: int | None, patch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Each letterboxed batch re-letterboxed to a target drawn from ``sizes``."""
    from components.data.letterbox import rescale_batch

    rng = np.random.default_rng(seed)
    for batch in batches:
        yield rescale_batch(batch, int(rng.choice(list(sizes))), patch_size)
