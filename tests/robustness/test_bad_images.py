"""Unreadable, oversized and awkward images (detr_lite/data/base.py, bad_images.py, collate.py, inference.py)."""

import logging
import warnings

import numpy as np
import pytest
from corpus import UNREADABLE, VALID_MODES, coco_box, coco_image, write_coco, write_good_jpeg
from PIL import Image
from torch.utils.data import DataLoader

from detr_lite import DeTRLiteImageProcessor
from detr_lite.data import (
    BadImageError,
    BadImageReport,
    DetectionCollator,
    SkipBadImages,
    load_detection_dataset,
)
from detr_lite.data.base import image_size, load_rgb
from detr_lite.inference import predict_dataset


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_unreadable_image_raises_naming_the_file_and_the_cause(tmp_path, name):
    write, cause = UNREADABLE[name]
    path = write(tmp_path / name)

    with pytest.raises(BadImageError) as error:
        load_rgb(path)

    problem = error.value.problem
    assert problem.file == str(path) and problem.field == "image" and problem.action == "skipped"
    assert cause in problem.message and str(path) in str(error.value)


def test_truncated_jpeg_header_reads_but_decoding_fails(tmp_path):
    path = UNREADABLE["truncated.jpg"][0](tmp_path / "t.jpg")

    assert image_size(path) == (64, 48)  # so only a full decode (training, the validator) finds it
    with pytest.raises(BadImageError, match="truncated"):
        load_rgb(path)


@pytest.mark.parametrize("size", [(40, 30), (60, 40)])  # Pillow only warns up to 2x the limit, raises beyond
def test_image_over_the_pixel_limit_is_rejected_naming_file_and_limit(tmp_path, monkeypatch, size):
    path = write_good_jpeg(tmp_path / "big.jpg", size)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)

    for read in (load_rgb, image_size):
        with pytest.raises(BadImageError) as error:
            read(path)
        message = str(error.value)
        assert str(path) in message and "limit of 1,000" in message and "--max_image_pixels" in message
        assert error.value.problem.action == "rejected"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", size[0] * size[1])
    assert load_rgb(path).size == size  # at the limit: fine


@pytest.mark.parametrize("name", sorted(VALID_MODES))
def test_awkward_image_modes_load_as_upright_8_bit_rgb(tmp_path, name):
    path, expected = VALID_MODES[name](tmp_path / name)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Pillow's palette-transparency warning
        image = load_rgb(path)
        width, height = image_size(path)

    assert image.mode == "RGB" and (width, height) == image.size == (expected.shape[1], expected.shape[0])
    np.testing.assert_array_equal(np.asarray(image), expected)


def bad_and_good_dataset(tmp_path, broken: dict[int, str]):
    """A COCO split of 4 images (ids 1..4) with one box each; image id → an UNREADABLE kind to write over it."""
    write_coco(tmp_path, [coco_image(i) for i in range(1, 5)], [coco_box(i, i, [2, 2, 10, 10]) for i in range(1, 5)])
    for image_id, kind in broken.items():
        path = tmp_path / "train" / f"{image_id}.jpg"
        path.unlink()
        UNREADABLE[kind][0](path)
    return load_detection_dataset(tmp_path, "train")


def test_training_view_replaces_an_unreadable_sample_with_the_next_readable_one(tmp_path):
    dataset = bad_and_good_dataset(tmp_path, {2: "truncated.jpg", 3: "empty.jpg"})
    view = SkipBadImages(dataset, replace=True)

    sample = view[1]  # image 2 and 3 are unreadable: image 4 takes their place

    assert sample["image_id"] == 4 and sample["image"].size == (40, 30)
    assert [problem.file for problem in sample["bad_images"]] == [str(tmp_path / "train" / f) for f in ("2.jpg", "3.jpg")]
    assert view[0]["image_id"] == 1 and view[0]["bad_images"] == []
    assert view[2]["image_id"] == 4 and view[3]["image_id"] == 4  # deterministic: the same on every call


def test_a_batch_of_only_unreadable_images_still_gives_a_full_training_batch(tmp_path):
    dataset = bad_and_good_dataset(tmp_path, {3: "truncated.jpg", 4: "not_an_image.jpg"})
    collate = DetectionCollator(DeTRLiteImageProcessor(size=64, label2id=None))
    # The second batch, images 3 and 4, are both unreadable. Decoded in a worker process, reported through the batch.
    loader = DataLoader(SkipBadImages(dataset, replace=True), batch_size=2, collate_fn=collate, num_workers=1)

    first, second = list(loader)

    assert first["pixel_values"].shape[0] == second["pixel_values"].shape[0] == 2
    assert [int(label["image_id"]) for label in second["labels"]] == [1, 1]  # the next readable, wrapping round
    assert [problem.file.rsplit("/", 1)[1] for problem in second["bad_images"]] == ["3.jpg", "4.jpg", "4.jpg"]
    assert first["bad_images"] == []


def test_no_readable_image_at_all_stops_with_a_clear_error(tmp_path):
    dataset = bad_and_good_dataset(tmp_path, {i: "empty.jpg" for i in range(1, 5)})

    with pytest.raises(BadImageError, match="none of the 4 images can be read"):
        BadImageReport("skip").record(SkipBadImages(dataset, replace=True)[0]["bad_images"])


def test_evaluation_view_drops_unreadable_samples_and_an_all_bad_batch_is_empty(tmp_path):
    dataset = bad_and_good_dataset(tmp_path, {1: "missing.jpg", 2: "truncated.jpg"})
    collate = DetectionCollator(DeTRLiteImageProcessor(size=64, label2id=None))
    view = SkipBadImages(dataset, replace=False)

    all_bad = collate([view[0], view[1]])
    mixed = collate([view[1], view[2]])

    assert set(all_bad) == {"bad_images"} and len(all_bad["bad_images"]) == 2
    assert mixed["pixel_values"].shape[0] == 1 and int(mixed["labels"][0]["image_id"]) == 3


def test_report_warns_once_per_file_in_skip_mode_and_stops_in_error_mode(tmp_path, caplog):
    dataset = bad_and_good_dataset(tmp_path, {2: "truncated.jpg"})
    problem = SkipBadImages(dataset, replace=False)[1]["bad_images"][0]
    report = BadImageReport("skip")

    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # e.g. three epochs
            report.record([problem])

    warned = [r.getMessage() for r in caplog.records if "Skipping unreadable image" in r.getMessage()]
    assert len(warned) == 1 and str(tmp_path / "train" / "2.jpg") in warned[0] and "truncated" in warned[0]
    assert list(report.skipped) == [problem.file]
    with pytest.raises(BadImageError) as error:
        BadImageReport("error").record([problem])
    assert problem.file in str(error.value) and "--on_bad_sample skip" in str(error.value)


def test_evaluation_skips_an_unreadable_validation_image(tmp_path, tiny_model, caplog):
    dataset = bad_and_good_dataset(tmp_path, {2: "not_an_image.jpg"})
    report = BadImageReport("skip")

    with caplog.at_level(logging.WARNING):
        predictions = predict_dataset(tiny_model, DeTRLiteImageProcessor(size=128), dataset, batch_size=2,
                                      show_progress=False, bad_images=report)

    assert {p["image_id"] for p in predictions} == {1, 3, 4}
    assert list(report.skipped) == [str(tmp_path / "train" / "2.jpg")]
    with pytest.raises(BadImageError, match="2.jpg"):
        predict_dataset(tiny_model, DeTRLiteImageProcessor(size=128), dataset, show_progress=False,
                        bad_images=BadImageReport("error"))


def test_image_without_size_in_the_annotations_and_unreadable_is_skipped_at_read_time(tmp_path):
    images = [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"}]  # no width/height: read from file
    write_coco(tmp_path, images, [])
    (tmp_path / "train" / "2.jpg").write_bytes(b"")

    dataset = load_detection_dataset(tmp_path, "train")

    assert dataset.image_ids == [1]
    assert [(p.file, p.action) for p in dataset.problems] == [(str(tmp_path / "train" / "2.jpg"), "skipped")]
    assert dataset[0]["image"].size == (40, 30)
