"""detr_lite/data/cache.py: training images decoded once, shrunk to the canvas, served from memory."""

import numpy as np
import pytest
from PIL import Image

from detr_lite.data import BadImageError, DecodedImageCache, SkipBadImages, cached_size, load_detection_dataset
from detr_lite.data.base import load_rgb
from test_datasets import make_coco

IMAGES = [
    {"id": 1, "file_name": "a.png", "width": 64, "height": 48},  # larger than the 32-pixel canvas below
    {"id": 2, "file_name": "b.png", "width": 24, "height": 30},  # smaller: kept as it is
]
ANNOTATIONS = [
    {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2.0, 4.0, 10.0, 20.0], "area": 200.0, "iscrowd": 0},
    {"id": 2, "image_id": 2, "category_id": 1, "bbox": [3.0, 5.0, 7.0, 9.0], "area": 63.0, "iscrowd": 0},
]


@pytest.fixture
def dataset(tmp_path):
    make_coco(tmp_path, images=IMAGES, annotations=ANNOTATIONS, categories=[{"id": 1, "name": "cell"}])
    return load_detection_dataset(tmp_path, "train")


@pytest.mark.parametrize("workers", [0, 2])
def test_cached_samples_are_the_images_shrunk_to_the_canvas_with_their_boxes(dataset, workers):
    cache = DecodedImageCache(dataset, max_side=32, num_workers=workers, show_progress=False)
    large, small = cache[0], cache[1]
    assert large["image"].size == (32, 24)
    expected = dataset.load_image(0).resize((32, 24), Image.BILINEAR)
    assert np.array_equal(np.asarray(large["image"]), np.asarray(expected))
    np.testing.assert_allclose(large["boxes"], [[1.0, 2.0, 5.0, 10.0]])  # halved with the image
    assert np.array_equal(np.asarray(small["image"]), np.asarray(dataset.load_image(1)))
    np.testing.assert_array_equal(small["boxes"], dataset[1]["boxes"])
    assert large["image_id"] == 1 and list(large["class_labels"]) == [0]
    assert cached_size(dataset, 32) == 3 * (32 * 24 + 24 * 30)


def test_an_unreadable_image_fails_on_every_access_as_the_dataset_would(dataset, tmp_path):
    (tmp_path / "train" / "b.png").write_bytes(b"")
    cache = DecodedImageCache(dataset, max_side=32, num_workers=0, show_progress=False)
    for _ in range(2):
        with pytest.raises(BadImageError, match="b.png"):
            cache[1]
    replaced = SkipBadImages(cache, replace=True)[1]  # training replaces it with the next readable image
    assert replaced["image_id"] == 1 and "b.png" in str(replaced["bad_images"][0])


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_close_to_the_full_decode(tmp_path):
    gradient = np.linspace(0, 255, 640, dtype=np.float32)
    pixels = np.stack(np.broadcast_arrays(gradient[None, :], gradient[:480, None], 128 + 0 * gradient[None, :]), -1)
    path = tmp_path / "photo.jpg"
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=95)
    small = load_rgb(path, max_side=160)
    full = load_rgb(path).resize((160, 120), Image.BILINEAR)
    assert small.size == (160, 120)
    assert np.abs(np.asarray(small, dtype=np.float32) - np.asarray(full, dtype=np.float32)).mean() < 2.0
