"""Reading through s3:// from a real S3-compatible server, and 2 Ray Train workers' shards."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from components.data.config import DataConfig
from components.data.dataset import build_dataset
from components.data.loader import iter_batches


@pytest.fixture(scope="module")
def s3_synth(s3_server, tiny_synth) -> str:
    """The tiny synthetic dataset uploaded to a bucket on the moto server; returns its URI."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="vitpipe-data")
    for path in sorted(tiny_synth.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), "vitpipe-data", f"synth/{path.relative_to(tiny_synth)}")
    return "s3://vitpipe-data/synth"


def test_s3_dataset_matches_local(ray_cluster, tiny_synth, s3_synth):
    local = build_dataset(DataConfig(root=str(tiny_synth), image_size=64), "val", training=False)
    remote = build_dataset(DataConfig(root=s3_synth, image_size=64), "val", training=False)
    assert remote.num_rows == local.num_rows == 8
    assert remote.fingerprint == local.fingerprint  # same bytes, same annotations
    a = next(iter(iter_batches(local.dataset, batch_size=8, task="detection")))
    b = next(iter(iter_batches(remote.dataset, batch_size=8, task="detection")))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    folder = build_dataset(DataConfig(format="imagefolder", root=s3_synth, image_size=32),
                           "val", training=False)
    assert folder.num_rows == len(list((tiny_synth / "imagefolder" / "val").rglob("*.jpg")))


def test_s3_missing_annotation_file_is_a_clear_error(ray_cluster, s3_synth):
    from components.data.coco import CocoFormatError

    cfg = DataConfig(splits={"x": {"annotations": f"{s3_synth}/annotations/nope.json",
                                   "images": f"{s3_synth}/images/val"}})
    with pytest.raises(CocoFormatError, match="does not exist"):
        build_dataset(cfg, "x", training=False)


def _worker_loop(config: dict) -> None:
    import ray.train

    from components.data.loader import iter_batches as batches

    rank = ray.train.get_context().get_world_rank()
    shard = ray.train.get_dataset_shard("train")
    ids = []
    for epoch in range(2):
        for batch in batches(shard, batch_size=4, task="detection"):
            assert batch["patches"].dtype == torch.uint8
            ids.extend((epoch, i) for i in batch["image_id"].tolist())
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps(ids))
    ray.train.report({"rows": len(ids)})


@pytest.mark.slow
def test_two_workers_get_disjoint_shards_covering_the_set(ray_cluster, tiny_synth, tmp_path):
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Workers cannot import this test module by name: ship the loop by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    bundle = build_dataset(DataConfig(root=str(tiny_synth), image_size=64), "train", training=True)
    trainer = TorchTrainer(
        _worker_loop, train_loop_config={"out": str(tmp_path)},
        datasets={"train": bundle.dataset},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False,
                                     resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="shards", storage_path=str(tmp_path / "runs")),
    )
    trainer.fit()
    shards = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    all_ids = {r["image_id"] for r in bundle.records}
    for epoch in (0, 1):
        a = {i for e, i in shards[0] if e == epoch}
        b = {i for e, i in shards[1] if e == epoch}
        assert a and b and not (a & b)
        assert a | b == all_ids
        assert sum(1 for e, _ in shards[0] + shards[1] if e == epoch) == len(all_ids)
