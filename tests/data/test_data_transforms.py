"""Training transforms keep boxes on their objects; eval boxes map back to original pixels."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.data.boxes import batch_to_pixels_xyxy, cxcywh_to_xyxy
from components.data.config import AugmentConfig
from components.data.transforms import ImageTransform, row_seed
from tests.data.conftest import painted


def _bright(image: np.ndarray) -> np.ndarray:
    return image.astype(int).sum(axis=2) > 300


def test_augmented_box_still_covers_the_painted_object():
    image, box = painted(80, 60)
    aug = AugmentConfig(hflip=0.5, vflip=0.5, rotate90=0.5, scale=(0.3, 1.0), color_p=0.0,
                        min_visibility=0.0)
    transform = ImageTransform(task="detection", training=True, image_size=64, augment=aug)
    kept = 0
    for seed in range(40):
        out, boxes, classes = transform(image, np.array([box]), np.array([3]), seed=seed)
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8
        mask = _bright(out)
        if len(boxes) == 0:  # cropped away entirely: nothing of the object may remain
            assert mask.sum() <= 4
            continue
        kept += 1
        assert classes.tolist() == [3]
        x0, y0, x1, y1 = (cxcywh_to_xyxy(torch.from_numpy(boxes)).numpy()[0] * 64).tolist()
        ys, xs = np.nonzero(mask)
        # The box covers the painted pixels (1 px interpolation slack) and is tight around them.
        assert xs.min() >= x0 - 1.5 and xs.max() + 1 <= x1 + 1.5, (seed, x0, x1, xs.min(), xs.max())
        assert ys.min() >= y0 - 1.5 and ys.max() + 1 <= y1 + 1.5, (seed, y0, y1, ys.min(), ys.max())
        inside = mask[int(np.ceil(y0)):int(y1), int(np.ceil(x0)):int(x1)]
        assert inside.mean() > 0.8, seed
    assert kept >= 20


def test_quarter_turns_rotate_the_box_with_the_image():
    image, box = painted(64, 64)  # a 20x14 object: a quarter turn makes it 14x20
    aug = AugmentConfig(hflip=0.0, rotate90=1.0, scale=(1.0, 1.0), ratio=(1.0, 1.0), color_p=0.0)
    transform = ImageTransform(task="detection", training=True, image_size=64, augment=aug)
    shapes = set()
    for seed in range(12):
        out, boxes, _ = transform(image, np.array([box]), np.array([1]), seed=seed)
        mask = _bright(out)
        ys, xs = np.nonzero(mask)
        w, h = (boxes[0, 2:] * 64).round().tolist()
        assert (w, h) == (xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()), seed
        shapes.add((w, h))
    assert shapes == {(20.0, 14.0), (14.0, 20.0)}


def test_min_visibility_drops_mostly_cropped_boxes():
    image, box = painted(80, 60)
    aug = AugmentConfig(scale=(0.05, 0.1), color_p=0.0, min_visibility=0.9)
    transform = ImageTransform(task="detection", training=True, image_size=32, augment=aug)
    counts = [len(transform(image, np.array([box]), np.array([0]), seed=s)[1]) for s in range(30)]
    assert 0 in counts  # a tiny crop rarely holds 90% of the object


def test_same_seed_same_output_and_different_seed_differs():
    image, box = painted(80, 60)
    transform = ImageTransform(task="detection", training=True, image_size=64,
                               augment=AugmentConfig())
    a = transform(image, np.array([box]), np.array([1]), seed=row_seed(0, 0, 5))
    b = transform(image, np.array([box]), np.array([1]), seed=row_seed(0, 0, 5))
    c = transform(image, np.array([box]), np.array([1]), seed=row_seed(0, 1, 5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_eval_transform_maps_back_to_original_pixels():
    image, box = painted(80, 60)
    transform = ImageTransform(task="detection", training=False, image_size=32)
    out, boxes, classes = transform(image, np.array([box]), np.array([2]))
    assert out.shape == (32, 32, 3) and classes.tolist() == [2]
    back = batch_to_pixels_xyxy(torch.from_numpy(boxes)[None], torch.tensor([[60, 80]]))[0, 0]
    x, y, w, h = box
    assert torch.allclose(back, torch.tensor([x, y, x + w, y + h]), atol=1e-4)


def test_classification_transform_has_no_boxes():
    image, _ = painted(80, 60)
    out, boxes, classes = ImageTransform(task="classification", training=True, image_size=32,
                                         augment=AugmentConfig())(image, seed=1)
    assert out.shape == (32, 32, 3) and boxes.shape == (0, 4) and classes.shape == (0,)


def test_boxes_without_extent_in_float32_are_dropped_not_fatal():
    """A box a read can accept (float64) may have no extent once in float32 (y + h == y) or
    once normalised: albumentations raised ValueError and the whole map task failed."""
    transform = ImageTransform(task="detection", training=True, image_size=32, augment=AugmentConfig())
    rng = np.random.default_rng(0)
    cases = [
        (rng.integers(0, 256, (33, 1, 3), np.uint8), [[0, 0, 1, 33], [0, 33, 1, 7e-15]]),
        (rng.integers(0, 256, (40, 2000, 3), np.uint8), [[10, 5, 50, 20], [1000, 5, 1e-5, 20]]),
    ]
    for image, boxes in cases:
        _, out_boxes, out_classes = transform(image, np.array(boxes, np.float32), np.array([0, 1]), seed=3)
        assert len(out_boxes) == len(out_classes) <= 1
        assert set(out_classes.tolist()) <= {0}  # only the real box can survive


@st.composite
def image_with_boxes(draw):
    sides = st.one_of(st.integers(1, 64), st.sampled_from([1000, 3000]))
    height, width = draw(sides), draw(sides)
    boxes = []
    for _ in range(draw(st.integers(0, 5))):
        x = draw(st.floats(0, width, exclude_max=True))
        y = draw(st.floats(0, height, exclude_max=True))
        boxes.append([x, y, draw(st.floats(1e-9, 1)) * (width - x), draw(st.floats(1e-9, 1)) * (height - y)])
    return height, width, np.array(boxes, np.float32).reshape(-1, 4)


@settings(max_examples=300, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(image_with_boxes(), st.sampled_from(["classification", "detection"]), st.booleans(),
       st.booleans(), st.integers(0, 2**32 - 1))
def test_any_image_and_boxes_give_one_model_input(sample, task, training, wild, seed):
    """Any image size (1 px to 3000 px, any aspect) and any boxes inside it: one ``[S, S, 3]``
    image and normalised boxes in [0, 1], one class each. An exception here fails a map task."""
    height, width, boxes = sample
    aug = (AugmentConfig(scale=(0.05, 1.0), ratio=(0.2, 5.0), min_visibility=0.0, min_box_pixels=0)
           if wild else AugmentConfig())
    transform = _TRANSFORMS.setdefault((task, training, wild), ImageTransform(
        task=task, training=training, image_size=32, augment=aug))
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    classes = np.arange(len(boxes))
    if task == "classification":
        out, out_boxes, out_classes = transform(image, seed=seed)
    else:
        out, out_boxes, out_classes = transform(image, boxes, classes, seed=seed)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert len(out_boxes) == len(out_classes)
    assert np.isfinite(out_boxes).all() and (out_boxes >= -1e-4).all() and (out_boxes <= 1 + 1e-4).all()


_TRANSFORMS: dict = {}
