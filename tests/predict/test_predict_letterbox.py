"""Batch inference for a letterboxed detector: rows are letterboxed as the val dataset's and
carry the valid region the model's padding mask is made of."""

from __future__ import annotations

import numpy as np
from PIL import Image

from components.data.fs import Location


def test_decode_rows_letterbox_like_the_val_dataset(tmp_path):
    from components.data.transforms import letterbox_preprocess
    from components.predict.stages import DecodeSpec, decode_rows

    rng = np.random.default_rng(0)
    images = {"wide.jpg": (240, 320), "tall.png": (97, 40)}
    for name, hw in images.items():
        Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(tmp_path / name)
    files = sorted(images)
    batch = {"image_id": np.arange(len(files)), "file": np.asarray(files, dtype=object)}
    plain = decode_rows(batch, DecodeSpec(images=Location.from_uri(str(tmp_path)), image_size=64,
                                          patch_size=16, max_pixels=10**7, reduced=False))
    assert "valid_h" not in plain
    rows = decode_rows(batch, DecodeSpec(images=Location.from_uri(str(tmp_path)), image_size=64,
                                         patch_size=16, max_pixels=10**7, reduced=False,
                                         letterbox=True))
    assert list(rows["error"]) == ["", ""]
    assert rows["valid_h"].tolist() == [64, 48] and rows["valid_w"].tolist() == [26, 64]
    assert rows["height"].tolist() == [97, 240] and rows["width"].tolist() == [40, 320]
    for i, name in enumerate(files):
        rgb = np.asarray(Image.open(tmp_path / name).convert("RGB"))
        np.testing.assert_array_equal(rows["patches"][i],
                                      letterbox_preprocess(rgb, image_size=64, patch_size=16)[0])
    assert not np.array_equal(rows["patches"], plain["patches"])
