"""Patchify round trips are exact, for numpy and torch, any dtype, single image or batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.data.patchify import (images_to_patches, patches_to_images, patchify,
                                      unpatchify)


@pytest.mark.parametrize("shape,p", [((64, 96, 3), 16), ((2, 32, 32, 3), 8), ((3, 48, 16, 3), 16)])
def test_numpy_round_trip_exact(shape, p):
    x = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    patches, grid = patchify(x, p)
    h, w = shape[-3], shape[-2]
    assert grid == (h // p, w // p)
    assert patches.shape[-2:] == (grid[0] * grid[1], p * p * 3)
    assert np.array_equal(unpatchify(patches, grid, p), x)


def test_torch_round_trip_exact_float_and_layout():
    x = torch.rand(2, 3, 32, 48)
    patches, grid = images_to_patches(x, 16)
    assert patches.shape == (2, 6, 16 * 16 * 3) and grid == (2, 3)
    assert torch.equal(patches_to_images(patches, grid, 16), x)
    # Patch (row 1, col 2) holds pixels [16:32, 32:48] flattened in (row, col, channel) order.
    expected = x[0, :, 16:32, 32:48].permute(1, 2, 0).reshape(-1)
    assert torch.equal(patches[0, 1 * 3 + 2], expected)


def test_numpy_and_torch_agree():
    x = np.random.default_rng(1).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    a, _ = patchify(x, 8)
    b, _ = patchify(torch.from_numpy(x), 8)
    assert np.array_equal(a, b.numpy())


def test_bad_sizes_raise():
    with pytest.raises(ValueError):
        patchify(np.zeros((30, 32, 3), np.uint8), 16)
    with pytest.raises(ValueError):
        unpatchify(np.zeros((5, 768), np.uint8), (2, 2), 16)
