"""The set criterion normalises by the box count averaged over all ranks (real gloo group)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world: int, init_file: str, queue) -> None:
    from components.models.criterion import build_criterion

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        boxes_here = 3 if rank == 0 else 1
        batch = {
            "boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2]] * 3]),
            "classes": torch.zeros(1, 3, dtype=torch.int64),
            "box_mask": torch.tensor([[True] * boxes_here + [False] * (3 - boxes_here)]),
        }
        outputs = {"pred_logits": torch.zeros(1, 5, 3), "pred_boxes": torch.full((1, 5, 4), 0.5)}
        outputs["pred_boxes"][..., 2:] = 0.3  # every matched box is off by 0.1 in w and h: L1 = 0.2
        losses = build_criterion(2)(outputs, batch)
        queue.put((rank, float(losses["loss_bbox"])))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns two interpreters
def test_box_count_is_averaged_across_ranks(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, 2, str(tmp_path / "pg"), queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=240) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    # the mean box count over ranks is (3 + 1) / 2 = 2; each rank divides its L1 sum by it
    assert abs(results[0] - 3 * 0.2 / 2) < 1e-5
    assert abs(results[1] - 1 * 0.2 / 2) < 1e-5
