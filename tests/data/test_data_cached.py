"""data.cache: rows made once (object store), read per rank, augmented batch by batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from components.data.batch_augment import BatchAugment, generator_seed
from components.data.cached import CachedRows, iter_cached_batches
from components.data.config import AugmentConfig, DataConfig
from components.data.dataset import build_dataset
from components.data.loader import iter_batches
from components.data.patchify import patchify, unpatchify

FLIPS = dict(scale=(1, 1), ratio=(1, 1), color_p=0.0)


def _painted_batch(n: int, size: int = 64, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``n`` black images, each with one white rectangle; its box (cxcywh, normalised)."""
    rng = np.random.default_rng(seed)
    images = torch.zeros(n, size, size, 3, dtype=torch.uint8)
    boxes = torch.zeros(n, 2, 4)
    for i in range(n):
        x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
        w, h = (int(v) for v in rng.integers(3, size // 2, 2))
        images[i, y0:y0 + h, x0:x0 + w] = 255
        boxes[i, 0] = torch.tensor([(x0 + w / 2) / size, (y0 + h / 2) / size, w / size, h / size])
    patches, grid = patchify(images, 16)
    batch = {"patches": patches, "grid": torch.tensor([grid] * n), "boxes": boxes,
             "box_mask": torch.tensor([[True, False]] * n)}
    return batch, images


def _box_of(image: torch.Tensor) -> torch.Tensor:
    """The cxcywh box (normalised) of the bright pixels of ``[H, W, 3]``."""
    ys, xs = torch.nonzero(image[..., 0]).T
    size = image.shape[0]
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]).float() / size


def test_flips_and_quarter_turns_move_each_box_with_its_pixels():
    batch, images = _painted_batch(48)
    augment = BatchAugment(AugmentConfig(hflip=0.5, vflip=0.5, rotate90=1.0, **FLIPS),
                           patch_size=16, seed=generator_seed([0, 1, 0]))
    hflip, vflip, k = BatchAugment(augment.augment, patch_size=16, seed=generator_seed([0, 1, 0])).draws(48)
    assert hflip.any() and not hflip.all() and vflip.any() and set(k.tolist()) == {0, 1, 2, 3}
    out = augment(batch)
    assert out["patches"].dtype == torch.uint8 and out["patches"].shape == batch["patches"].shape
    pixels = unpatchify(out["patches"], (4, 4), 16)
    for i in range(48):
        assert torch.allclose(out["boxes"][i, 0], _box_of(pixels[i]), atol=1e-6)
        assert int(pixels[i].sum()) == int(images[i].sum())  # moved, not resampled
    assert torch.equal(out["box_mask"], batch["box_mask"])


def test_probabilities_zero_leave_the_batch_as_it_is_and_draws_are_seeded():
    batch, _ = _painted_batch(8)
    still = BatchAugment(AugmentConfig(hflip=0.0, **FLIPS), patch_size=16, seed=1)(batch)
    assert torch.equal(still["patches"], batch["patches"]) and torch.equal(still["boxes"], batch["boxes"])
    aug = AugmentConfig(hflip=0.5, vflip=0.5, rotate90=0.5, **FLIPS)
    one, two = (BatchAugment(aug, patch_size=16, seed=generator_seed([3, 2, 1]))(batch) for _ in range(2))
    other = BatchAugment(aug, patch_size=16, seed=generator_seed([3, 3, 1]))(batch)
    assert torch.equal(one["patches"], two["patches"])
    assert not torch.equal(one["patches"], other["patches"])


@pytest.mark.parametrize("change, word", [({"augment": {"scale": [0.6, 1.0]}}, "augment.scale"),
                                          ({"augment": {"color_p": 0.5, **{k: v for k, v in FLIPS.items() if k != "color_p"}}}, "color_p"),
                                          ({"letterbox": True, "augment": FLIPS}, "letterbox")])
def test_cache_refuses_what_a_batch_cannot_do(change, word):
    with pytest.raises(ValidationError, match=word):
        DataConfig.model_validate({"root": "r", "cache": True, **change})
    DataConfig.model_validate({"root": "r", "cache": True, "augment": FLIPS})
    DataConfig.model_validate({"root": "r", "cache": True, "augment": {"enabled": False}})


def test_cached_rows_are_the_training_rows_less_flips_split_equally_between_ranks(
        ray_cluster, synth_dataset):
    cfg = DataConfig(format="imagefolder", root=str(synth_dataset), image_size=32, patch_size=16,
                     rows_per_block=7, cache=True, augment=AugmentConfig(vflip=0.5, **FLIPS))
    bundle = build_dataset(cfg, "train", training=True)
    rows = CachedRows.of(bundle.dataset)
    assert rows.total == bundle.num_rows and len(rows.blocks) > 2
    assert bundle.for_epoch(3) is bundle.dataset  # every epoch reads the same cached rows
    unflipped = cfg.model_copy(update={"cache": False, "augment": cfg.augment.without_flips()})
    streamed = [b["patches"] for b in iter_batches(build_dataset(unflipped, "train", training=True).dataset,
                                                    batch_size=1000, task="classification")]
    assert len(streamed) == 1
    unaugmented = {bytes(p.numpy()) for p in streamed[0]}
    shards = [rows.shard(rank, 3) for rank in range(3)]
    n = rows.total // 3
    assert [len(s["patches"]) for s in shards] == [n, n, n]
    seen = [bytes(p) for s in shards for p in s["patches"]]
    assert len(set(seen)) == len(seen) and set(seen) <= unaugmented  # disjoint, not flipped

    augment = BatchAugment(cfg.augment, patch_size=16, seed=5)
    epoch = list(iter_cached_batches(shards[0], batch_size=4, task="classification", seed=5, augment=augment))
    again = list(iter_cached_batches(shards[0], batch_size=4, task="classification", seed=5))
    later = list(iter_cached_batches(shards[0], batch_size=4, task="classification", seed=6))
    assert len(epoch) == n // 4 and all(b["label"].dtype == torch.int64 for b in epoch)
    assert {bytes(p.numpy()) for b in again for p in b["patches"]} <= set(seen[:n])
    assert [b["label"].tolist() for b in again] != [b["label"].tolist() for b in later]
    flipped = [not torch.equal(a["patches"], b["patches"]) for a, b in zip(epoch, again)]
    assert any(flipped)  # the same order (seed 5), some images flipped by the augmentation


def test_cached_detection_rows_drop_boxes_the_training_transform_would(ray_cluster, synth_dataset):
    cfg = DataConfig(root=str(synth_dataset), image_size=32, patch_size=16, cache=True,
                     augment=AugmentConfig(**FLIPS, min_box_pixels=12.0))
    rows = CachedRows.of(build_dataset(cfg, "train", training=True).dataset).shard(0, 1)
    kept = rows["boxes"][rows["box_mask"]]
    assert len(kept) > 0 and (kept[:, 2:] * 32 >= 12.0 - 1e-4).all()
    full = CachedRows.of(build_dataset(cfg, "train", training=False).dataset).shard(0, 1)
    every = full["boxes"][full["box_mask"]]
    assert len(every) > len(kept) and (every[:, 2:] * 32 < 12.0).any()  # eval keeps every box
