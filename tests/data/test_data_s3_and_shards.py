"""Reading through s3:// from a real S3-compatible server, and 2 Ray Train workers' shards."""

from __future__ import annotations

import threading

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


def test_two_workers_get_disjoint_shards_covering_the_set(ray_cluster, tiny_synth):
    """``streaming_split(2)`` is what ``ray.train.get_dataset_shard`` hands each of 2 workers
    (Ray Train splits the same way); two consumer threads stand in for the workers."""
    bundle = build_dataset(DataConfig(root=str(tiny_synth), image_size=64, rows_per_block=4),
                           "train", training=True)
    shards = bundle.dataset.streaming_split(2, equal=True)
    seen: list[list[tuple[int, int]]] = [[], []]
    errors: list[BaseException] = []

    def consume(rank: int) -> None:
        try:
            for epoch in range(2):  # each worker iterates its shard once per epoch
                for batch in iter_batches(shards[rank], batch_size=4, task="detection"):
                    assert batch["patches"].dtype == torch.uint8
                    seen[rank].extend((epoch, i) for i in batch["image_id"].tolist())
        except BaseException as err:  # surfaced in the main thread below
            errors.append(err)

    threads = [threading.Thread(target=consume, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    all_ids = {r["image_id"] for r in bundle.records}
    for epoch in (0, 1):
        a = [i for e, i in seen[0] if e == epoch]
        b = [i for e, i in seen[1] if e == epoch]
        assert a and b and not (set(a) & set(b))
        assert len(a) == len(b) == len(all_ids) // 2  # equal=True: same number of rows each
        assert set(a) | set(b) == all_ids
