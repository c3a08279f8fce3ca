"""Which pass over a training dataset a map task is in: fresh augmentation every epoch,
still reproducible.

Ray Data re-executes a Dataset every time it is iterated (each epoch, also through
``get_dataset_shard``), but its map tasks are not told which time this is. A tiny actor
per training dataset counts how often each batch (keyed by its first image id) has been
made; that count is the pass number mixed into the per-image augmentation seed. Each
batch is made once per pass, so pass ``k`` of two datasets built alike sees the same
augmentation; a retried task (a worker died) shifts its batch to the next pass's seed.

Kept free of heavy imports: the actor's process loads only this module.
"""

from __future__ import annotations

import ray


@ray.remote(num_cpus=0)
class PassCounter:
    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def next(self, key: int) -> int:
        """How many times ``key`` was asked for before (0 on the first pass)."""
        count = self.counts.get(key, 0)
        self.counts[key] = count + 1
        return count
