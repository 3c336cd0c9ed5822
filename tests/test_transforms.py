"""DETR training augmentation (detr_lite/data/transforms.py): boxes stay consistent with pixels."""

import random

import numpy as np
import pytest
from PIL import Image

from detr_lite.data.transforms import (
    IMAGENET_MEAN_RGB,
    RandomHorizontalFlip,
    RandomResize,
    RandomSizeCrop,
    eval_transforms,
    train_transforms,
)

RED = (255, 0, 0)


def random_sample(rng: np.random.Generator, n: int) -> dict:
    """A random-size image with n random boxes (some partly outside); labels number the boxes."""
    width, height = (int(v) for v in rng.integers(20, 900, 2))
    xy = rng.uniform(-0.2, 1.0, (n, 2)) * [width, height]
    wh = rng.uniform(0.5, 0.6, (n, 2)) * [width, height] * rng.uniform(0.01, 1.0, (n, 1))
    return {
        "image_id": 3,
        "image": Image.new("RGB", (width, height), (10, 200, 30)),
        "boxes": np.concatenate([xy, wh], axis=1).astype(np.float32),
        "class_labels": np.arange(n, dtype=np.int64),
        "iscrowd": np.arange(n, dtype=np.int64) % 2,
        "difficult": np.arange(n) % 3 == 0,
    }


def marked_sample(size: tuple[int, int], box: tuple[int, int, int, int]) -> dict:
    """A white image with one red box, whose ground truth is that box (xywh)."""
    image = Image.new("RGB", size, (255, 255, 255))
    image.paste(RED, (box[0], box[1], box[0] + box[2], box[1] + box[3]))
    return {
        "image_id": 1,
        "image": image,
        "boxes": np.array([box], dtype=np.float32),
        "class_labels": np.array([4]),
        "iscrowd": np.array([0]),
        "difficult": np.array([False]),
    }


def red_box(image: Image.Image) -> list[int]:
    """The xywh bounding box of the red pixels."""
    ys, xs = np.nonzero(np.all(np.asarray(image) == RED, axis=-1))
    return [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


@pytest.mark.parametrize("seed", range(5))
def test_train_transforms_keep_boxes_inside_the_image_and_aligned_with_their_labels(seed):
    rng = np.random.default_rng(seed)
    transform = train_transforms(image_size=640, rng=random.Random(seed))
    for _ in range(40):
        sample = random_sample(rng, int(rng.integers(0, 8)))

        out = transform(sample)

        width, height = out["image"].size
        assert max(width, height) == 640  # the processor's letterbox keeps this scale
        boxes, labels = out["boxes"], out["class_labels"]
        assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4)
        assert np.all(boxes[:, 2:] > 0)
        assert np.all(boxes[:, :2] >= 0)
        assert np.all(boxes[:, 0] + boxes[:, 2] <= width + 1e-3) and np.all(boxes[:, 1] + boxes[:, 3] <= height + 1e-3)
        assert set(labels) <= set(sample["class_labels"])
        np.testing.assert_array_equal(out["iscrowd"], labels % 2)
        np.testing.assert_array_equal(out["difficult"], labels % 3 == 0)
        assert out["image_id"] == 3


def test_horizontal_flip_maps_x_to_width_minus_x_minus_w_exactly():
    rng = np.random.default_rng(0)
    sample = random_sample(rng, 0)
    width, height = sample["image"].size
    x, y = rng.uniform(0, width - 1, 50), rng.uniform(0, height - 1, 50)
    w, h = rng.uniform(0.01, 1, 50) * (width - x), rng.uniform(0.01, 1, 50) * (height - y)
    boxes = np.stack([x, y, w, h], axis=1).astype(np.float32)  # inside the image: no clipping
    sample.update(boxes=boxes, class_labels=np.arange(50), iscrowd=np.zeros(50), difficult=np.zeros(50, bool))

    out = RandomHorizontalFlip(p=1.0)(sample)

    x, w = boxes[:, 0].astype(np.float64), boxes[:, 2].astype(np.float64)
    np.testing.assert_array_equal(out["boxes"][:, 0], (width - x - w).astype(np.float32))
    np.testing.assert_array_equal(out["boxes"][:, 1:], boxes[:, 1:])
    np.testing.assert_array_equal(out["class_labels"], np.arange(50))


def test_horizontal_flip_moves_the_pixels_with_the_box():
    out = RandomHorizontalFlip(p=1.0)(marked_sample((50, 30), (5, 8, 10, 4)))

    assert red_box(out["image"]) == [35, 8, 10, 4] == out["boxes"][0].tolist()


def test_flip_with_probability_zero_changes_nothing():
    sample = marked_sample((50, 30), (5, 8, 10, 4))

    assert RandomHorizontalFlip(p=0.0)(sample) is sample


@pytest.mark.parametrize("seed", range(10))
def test_crop_of_a_box_fully_inside_keeps_its_size_and_pixels(seed):
    sample = marked_sample((100, 80), (40, 30, 20, 15))  # every crop with sides >= 70 contains it

    out = RandomSizeCrop(70, 80, rng=random.Random(seed))(sample)

    assert 70 <= out["image"].width <= 80 and 70 <= out["image"].height <= 80
    assert out["boxes"][0, 2:].tolist() == [20, 15]
    assert red_box(out["image"]) == out["boxes"][0].tolist()


def test_crop_drops_boxes_left_outside_with_their_labels():
    sample = marked_sample((100, 100), (40, 40, 20, 20))
    sample["boxes"] = np.array([[0, 0, 3, 3], [40, 40, 20, 20], [97, 97, 3, 3]], dtype=np.float32)
    sample["class_labels"], sample["iscrowd"] = np.array([0, 1, 2]), np.array([1, 0, 1])
    sample["difficult"] = np.array([True, False, True])

    out = RandomSizeCrop(60, 60, rng=random.Random(0))(sample)  # a 60x60 crop misses a corner box

    kept = out["class_labels"].tolist()
    assert 1 in kept and len(kept) < 3
    np.testing.assert_array_equal(out["iscrowd"], [0 if label == 1 else 1 for label in kept])
    np.testing.assert_array_equal(out["difficult"], [label != 1 for label in kept])


def test_resize_onto_canvas_shrinks_objects_at_a_fixed_canvas():
    sample = marked_sample((200, 100), (20, 10, 40, 30))

    out = RandomResize([320], canvas_size=640)(sample)

    assert out["image"].size == (640, 320)  # the image's aspect ratio at the canvas' long side
    np.testing.assert_allclose(out["boxes"], [[32, 16, 64, 48]])  # scaled by 320 / 200
    pixels = np.asarray(out["image"])
    assert tuple(pixels[319, 639]) == IMAGENET_MEAN_RGB and tuple(pixels[159, 319]) == (255, 255, 255)


def test_resize_without_canvas_resizes_the_longest_side():
    out = RandomResize([50])(marked_sample((200, 100), (20, 10, 40, 30)))

    assert out["image"].size == (50, 25)
    np.testing.assert_allclose(out["boxes"], [[5, 2.5, 10, 7.5]])


def test_resize_rejects_scales_larger_than_the_canvas():
    with pytest.raises(ValueError, match="canvas"):
        RandomResize([480, 800], canvas_size=640)


def test_same_seed_gives_the_same_augmentation():
    sample = random_sample(np.random.default_rng(1), 6)

    first = train_transforms(rng=random.Random(7))(sample)
    second = train_transforms(rng=random.Random(7))(sample)

    np.testing.assert_array_equal(first["boxes"], second["boxes"])
    assert first["image"].size == second["image"].size


def test_eval_transforms_are_the_identity():
    sample = marked_sample((50, 30), (5, 8, 10, 4))

    assert eval_transforms()(sample) is sample


def test_seeded_augmentation_depends_only_on_seed_epoch_and_index():
    import copy
    import functools

    from detr_lite.data import SeededAugmentation, train_transforms

    images = [{"image_id": i, "image": Image.new("RGB", (200 + 10 * i, 150), (i, 0, 0)),
               "boxes": np.array([[20.0, 30.0, 60.0, 40.0]], dtype=np.float32), "class_labels": np.array([i % 3]),
               "iscrowd": np.zeros(1, dtype=np.int64), "difficult": np.zeros(1, dtype=bool)} for i in range(6)]

    class Listing(list):
        def __getitem__(self, index):  # a fresh copy each time, as a dataset reading from disk gives
            sample = super().__getitem__(index)
            return {**sample, "boxes": sample["boxes"].copy()}

    augmented = SeededAugmentation(Listing(images), functools.partial(train_transforms, 128), seed=7)
    forward = [augmented[i]["boxes"].tolist() for i in range(6)]
    backward = [augmented[i]["boxes"].tolist() for i in reversed(range(6))][::-1]
    assert forward == backward  # order of access (prefetching, workers) does not matter
    worker_copy = copy.deepcopy(augmented)  # what a DataLoader worker holds
    assert [worker_copy[i]["boxes"].tolist() for i in range(6)] == forward
    augmented.set_epoch(1)
    assert [augmented[i]["boxes"].tolist() for i in range(6)] != forward  # a new epoch, new augmentations


def test_flip_policy_keeps_the_geometry_and_unknown_policies_are_rejected():
    sample = {"image_id": 1, "image": Image.new("RGB", (300, 200)), "class_labels": np.array([0]),
              "boxes": np.array([[10.0, 20.0, 30.0, 40.0]], dtype=np.float32),
              "iscrowd": np.zeros(1, dtype=np.int64), "difficult": np.zeros(1, dtype=bool)}
    sizes = set()
    for seed in range(8):
        out = train_transforms(128, random.Random(seed), policy="flip")(dict(sample, boxes=sample["boxes"].copy()))
        assert out["image"].size == (300, 200)
        sizes.add(tuple(out["boxes"][0].tolist()))
    assert sizes == {(10.0, 20.0, 30.0, 40.0), (260.0, 20.0, 30.0, 40.0)}
    with pytest.raises(ValueError, match="policy"):
        train_transforms(128, policy="mosaic")
