"""Tests for detr_lite/data/synthetic.py: determinism, honest boxes, COCO validity, caching."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from detr_lite.data.synthetic import MANIFEST_NAME, SHAPE_CLASSES, make_synthetic_dataset, render_sample


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), num_train=50, num_val=4, seed=0)
    return root, json.loads((root / "annotations" / "instances_train.json").read_text())


def _folder_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    first = _folder_bytes(make_synthetic_dataset(tmp_path / "a", num_train=4, num_val=2, seed=3, workers=1))
    # rendered by 3 processes: the same bytes
    second = _folder_bytes(make_synthetic_dataset(tmp_path / "b", num_train=4, num_val=2, seed=3, workers=3))
    other = _folder_bytes(make_synthetic_dataset(tmp_path / "c", num_train=4, num_val=2, seed=4))
    assert first.keys() == second.keys() and len(first) == 4 + 2 + 3  # images, 2 JSON, manifest
    assert first == second
    assert other["annotations/instances_train.json"] != first["annotations/instances_train.json"]
    assert other["train/000000.jpg"] != first["train/000000.jpg"]
    np.testing.assert_array_equal(render_sample(3, 0, 1).image, render_sample(3, 0, 1).image)


def test_files_are_valid_coco_matching_the_images(dataset):
    root, coco = dataset
    index = COCO(str(root / "annotations" / "instances_train.json"))
    assert len(index.getImgIds()) == 50 and len(index.getCatIds()) == len(SHAPE_CLASSES)
    assert [c["name"] for c in coco["categories"]] == list(SHAPE_CLASSES)
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    for image in coco["images"][:10]:
        with Image.open(root / "train" / image["file_name"]) as pixels:
            assert pixels.size == (image["width"], image["height"])
    assert len(json.loads((root / "annotations" / "instances_val.json").read_text())["images"]) == 4


def test_images_vary_in_size_and_hold_one_to_ten_objects_of_many_classes_and_sizes(dataset):
    _, coco = dataset
    images = {image["id"]: image for image in coco["images"]}
    counts = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=51)[1:]
    assert counts.min() >= 1 and counts.max() <= 10 and len(set(counts)) >= 5
    assert len({a["category_id"] for a in coco["annotations"]}) >= 5
    sides = np.array([(i["width"], i["height"]) for i in images.values()])
    assert sides.min() >= 190 and sides.max() <= 512 and len({w / h for w, h in sides}) > 40
    relative = [max(a["bbox"][2:]) / min(images[a["image_id"]]["width"], images[a["image_id"]]["height"])
                for a in coco["annotations"]]
    assert min(relative) < 0.08 and max(relative) > 0.4
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        image = images[a["image_id"]]
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= image["width"] and y + h <= image["height"]
        assert 0 < a["area"] <= w * h and a["iscrowd"] == 0


@pytest.mark.parametrize("index", range(12))
def test_boxes_are_tight_around_the_visible_pixels(index):
    sample = render_sample(0, 0, index)
    for k, annotation in enumerate(sample.annotations):
        x, y, w, h = annotation["bbox"]
        owned = sample.instance_map == k
        inside = owned[y : y + h, x : x + w]
        assert inside.sum() == owned.sum() == annotation["area"]  # nothing outside the box
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()


def test_objects_stand_out_from_their_surroundings():
    """Per object, the 10% of the pixels just around it closest to its colour are still far from it."""
    contrasts = []
    for index in range(30):
        sample = render_sample(1, 0, index)
        image = sample.image.astype(np.float64)
        for k in range(len(sample.annotations)):
            owned = sample.instance_map == k
            grown = owned.copy()
            for axis in (0, 1):
                for shift in (-2, 2):
                    grown |= np.roll(owned, shift, axis=axis)
            distances = np.linalg.norm(image[grown & ~owned] - image[owned].mean(axis=0), axis=1)
            contrasts.append(np.percentile(distances, 10))
    assert np.percentile(contrasts, 5) > 70  # about 50 with random colours, about 80 as generated


def test_cached_set_is_reused_and_changed_or_partial_sets_are_regenerated(tmp_path):
    root = make_synthetic_dataset(tmp_path, num_train=6, num_val=2, seed=0)
    annotations = root / "annotations" / "instances_train.json"
    image = root / "train" / "000005.jpg"
    for path in (annotations, image):
        os.utime(path, ns=(10**9, 10**9))
    assert make_synthetic_dataset(tmp_path, num_train=6, num_val=2, seed=0) == root
    assert annotations.stat().st_mtime_ns == image.stat().st_mtime_ns == 10**9

    make_synthetic_dataset(tmp_path, num_train=4, num_val=2, seed=0)  # different parameters
    assert len(json.loads(annotations.read_text())["images"]) == 4
    assert not image.exists() and len(list((root / "train").iterdir())) == 4

    (root / MANIFEST_NAME).unlink()  # as if generation had been interrupted
    (root / "train" / "000001.jpg").unlink()
    os.utime(annotations, ns=(10**9, 10**9))
    make_synthetic_dataset(tmp_path, num_train=4, num_val=2, seed=0)
    assert (root / "train" / "000001.jpg").is_file() and annotations.stat().st_mtime_ns != 10**9
    assert (root / MANIFEST_NAME).is_file()


def test_invalid_counts_raise():
    with pytest.raises(ValueError, match="num_train"):
        make_synthetic_dataset("unused", num_train=-1)
