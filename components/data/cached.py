"""Cached training rows (``data.cache``) read straight from the object store by each rank.

The driver materialises the training split once (``build_dataset``: unaugmented rows in
Ray's object store) and hands every worker :class:`CachedRows`: the blocks' object refs
and row counts, a few kilobytes. Rank ``r`` of ``w`` reads rows ``[r·n, (r+1)·n)`` of
the blocks in order, ``n = total // w`` (the equal split Ray Train gives a streamed
dataset, so ``components.training.plan.steps_plan`` holds), once per worker start, as
numpy columns. Each epoch it draws a permutation of its rows (seeded by ``data.seed``,
the epoch and the rank) and the loop augments each batch (``batch_augment``).

Why not Ray Train's dataset shard over the materialised dataset: with the rows already
made, the split coordinator's executor and the iterator's threads were all that was left
to run beside a 2-thread training step, and took a share of it on a 2-core node (630 img/s
through the shard against 660–760 reading the blocks, docs/data.md). Rows are read once and
held in the worker's memory: the split must fit there (1/w of it per worker).

Batches (the batch contract, ``components.data.loader``): torch tensors on ``device``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from components.core.names import ModelTask
from components.data.loader import collate_numpy


@dataclass(frozen=True)
class CachedRows:
    """A materialised split as its blocks: ``blocks[i]`` (``ray.ObjectRef`` of an Arrow
    table) holds ``rows[i]`` rows, in the split's order."""

    blocks: tuple[Any, ...]
    rows: tuple[int, ...]

    @classmethod
    def of(cls, dataset) -> "CachedRows":
        """The blocks of a materialised ``ray.data.Dataset``, their row counts from the blocks'
        metadata (no block leaves the object store for the driver)."""
        refs, rows = [], []
        for bundle in dataset.iter_internal_ref_bundles():
            refs += bundle.block_refs
            rows += [meta.num_rows for meta in bundle.metadata]
        return cls(blocks=tuple(refs), rows=tuple(rows))

    @property
    def total(self) -> int:
        return sum(self.rows)

    def shard(self, rank: int, world: int) -> dict[str, np.ndarray]:
        """Rows ``[rank·n, (rank+1)·n)``, ``n = total // world``, as numpy columns."""
        import ray
        from ray.data.block import BlockAccessor

        n = self.total // world
        lo, hi = rank * n, (rank + 1) * n
        pieces, start = [], 0
        for ref, count in zip(self.blocks, self.rows):
            end = start + count
            if end > lo and start < hi:
                columns = BlockAccessor.for_block(ray.get(ref)).to_numpy()
                a, b = max(lo, start) - start, min(hi, end) - start
                pieces.append({k: v[a:b] for k, v in columns.items()})
            start = end
        if not pieces:
            raise ValueError(f"rank {rank} of {world}: no cached row (total {self.total})")
        return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}


def iter_cached_batches(rows: dict[str, np.ndarray], *, batch_size: int, task: ModelTask,
                        seed: int | None, shuffle: bool = True, drop_last: bool = True,
                        device: str | torch.device = "cpu",
                        augment: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
                        ) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch over ``rows`` (numpy columns, ``R`` rows): torch batches of ``batch_size``
    in a permutation drawn from ``seed`` (None: a fresh one), each through ``augment``."""
    n = len(rows["patches"])
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        index = order[start:start + batch_size]
        batch = collate_numpy({k: v[index] for k, v in rows.items()}, task)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        yield augment(batch) if augment is not None else batch
