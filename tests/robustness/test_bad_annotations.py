"""Broken annotations in every reader: each repaired (clipped), dropped with a count, or rejected naming the
file and field (detr_lite/data/{problems,base,coco,voc,hf,datasets}.py)."""

import logging

import numpy as np
import pytest
import torch
from corpus import coco_box, coco_image, voc_xml, write_coco, write_good_jpeg, write_voc

from detr_lite import DeTRLiteImageProcessor
from detr_lite.data import DatasetError, DetectionCollator, load_detection_dataset


def problems_of(dataset) -> list[tuple[str, str]]:
    return [(problem.field, problem.action) for problem in dataset.problems]


def test_boxes_are_clipped_or_dropped_and_counted_in_one_warning(tmp_path, caplog):
    boxes = [
        [5, 5, -3, 4],  # negative width: dropped
        [5, 5, 4, 0],  # zero height: dropped
        [30, 20, 20, 20],  # partly outside the 40x30 image: clipped
        [50, 5, 5, 5],  # wholly outside: dropped
        [float("nan"), 5, 5, 5],  # NaN: dropped
        [1, 2, 3, 4],  # fine
    ]
    write_coco(tmp_path, [coco_image(1)], [coco_box(i + 1, 1, box) for i, box in enumerate(boxes)])

    with caplog.at_level(logging.WARNING):
        dataset = load_detection_dataset(tmp_path, "train")

    assert problems_of(dataset) == [("boxes[0]", "dropped"), ("boxes[1]", "dropped"), ("boxes[2]", "clipped"),
                                    ("boxes[3]", "dropped"), ("boxes[4]", "dropped")]
    messages = [problem.message for problem in dataset.problems]
    assert "no area inside the 40x30 image" in messages[0] and "[5, 5, -3, 4]" in messages[0]
    assert "extends outside" in messages[2] and "is not finite" in messages[4]
    assert all(problem.file == str(tmp_path / "train" / "1.jpg") for problem in dataset.problems)
    np.testing.assert_array_equal(dataset[0]["boxes"], [[30, 20, 10, 10], [1, 2, 3, 4]])
    assert dataset.num_dropped_boxes == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "4 dropped, 1 clipped" in warnings[0] and "validate_dataset.py" in warnings[0]


def test_unknown_category_is_rejected_naming_the_file_and_field(tmp_path):
    ann_file = write_coco(tmp_path, [coco_image(1)], [coco_box(1, 1, [1, 1, 5, 5]), coco_box(2, 1, [1, 1, 5, 5], 7)])

    with pytest.raises(DatasetError) as error:
        load_detection_dataset(tmp_path, "train")

    message = str(error.value)
    assert f"{ann_file}: annotations[1].category_id: category_id 7 is not listed in 'categories'" in message
    assert "validate_dataset.py" in message


def test_duplicate_annotation_id_keeps_the_first_and_drops_the_rest(tmp_path):
    ann_file = write_coco(tmp_path, [coco_image(1)], [coco_box(4, 1, [1, 1, 5, 5]), coco_box(4, 1, [9, 9, 5, 5])])

    dataset = load_detection_dataset(tmp_path, "train")

    assert [(p.file, p.field, p.action) for p in dataset.problems] == [(str(ann_file), "annotations[1].id", "dropped")]
    np.testing.assert_array_equal(dataset[0]["boxes"], [[1, 1, 5, 5]])


def test_image_listed_twice_is_read_once(tmp_path):
    write_coco(tmp_path, [coco_image(1), coco_image(2), coco_image(1, "copy.jpg")], [coco_box(1, 1, [1, 1, 5, 5])])

    dataset = load_detection_dataset(tmp_path, "train")

    assert dataset.image_ids == [1, 2] and len(dataset[0]["boxes"]) == 1
    assert problems_of(dataset) == [("image_id", "dropped")]
    assert "listed again (first as 1.jpg)" in dataset.problems[0].message


def test_annotation_pointing_to_a_missing_image_is_dropped(tmp_path):
    write_coco(tmp_path, [coco_image(1)], [coco_box(1, 1, [1, 1, 5, 5]), coco_box(2, 99, [1, 1, 5, 5])])

    dataset = load_detection_dataset(tmp_path, "train")

    assert problems_of(dataset) == [("annotations[1].image_id", "dropped")]
    assert "image_id 99 is not listed in 'images'" in dataset.problems[0].message
    assert len(dataset[0]["boxes"]) == 1


@pytest.mark.parametrize(
    "content, cause",
    [(b"", "the file is empty"), (b"{\"images\": [", "not valid JSON: Expecting value"), (b"[]", "a JSON list")],
)
def test_empty_or_invalid_annotation_file_is_rejected_naming_it(tmp_path, content, cause):
    ann_file = write_coco(tmp_path, [coco_image(1)], [])
    ann_file.write_bytes(content)

    with pytest.raises(DatasetError) as error:
        load_detection_dataset(tmp_path, "train")

    assert f"{ann_file}: (file): " in str(error.value) and cause in str(error.value)


def test_missing_or_malformed_coco_fields_are_rejected_naming_each(tmp_path):
    annotations = [{"id": 1, "image_id": 1, "category_id": 1}, coco_box(2, 1, [1, 2, 3])]
    write_coco(tmp_path, [coco_image(1), {"id": 2}], annotations)

    with pytest.raises(DatasetError) as error:
        load_detection_dataset(tmp_path, "train")

    assert [problem.field for problem in error.value.problems] == [
        "images[1].file_name", "annotations[0].bbox", "annotations[1].bbox"]
    assert "[1, 2, 3] is not a list of 4 numbers" in str(error.value)


def test_voc_xml_that_does_not_parse_is_rejected_with_every_broken_file(tmp_path):
    write_voc(tmp_path, {"a": voc_xml("a", "1"), "b": "<annotation><object>", "c": ""}, ["a", "b", "c"])

    with pytest.raises(DatasetError) as error:
        load_detection_dataset(tmp_path, "train")

    problems = error.value.problems
    assert [(p.file, p.field) for p in problems] == [(str(tmp_path / "Annotations" / f"{s}.xml"), "(file)")
                                                     for s in ("b", "c")]
    assert all("not valid XML" in p.message for p in problems) and "line 1" in problems[1].message


def test_voc_malformed_or_missing_coordinate_names_the_field(tmp_path):
    write_voc(tmp_path, {"a": voc_xml("a", "1", "abc"), "b": voc_xml("b", "1").replace("<xmax>20</xmax>", "")},
              ["a", "b"])

    with pytest.raises(DatasetError) as error:
        load_detection_dataset(tmp_path, "train")

    assert [(p.field, p.message) for p in error.value.problems] == [
        ("object[1]/bndbox/xmin", "'abc' is not a number"), ("object[0]/bndbox/xmax", "missing")]


def test_voc_image_listed_twice_in_the_split_file_is_read_once(tmp_path):
    split_file = write_voc(tmp_path, {"000001": voc_xml("000001", "1"), "000002": voc_xml("000002")},
                           ["000001", "000002", "000001"])

    dataset = load_detection_dataset(tmp_path, "train")

    assert dataset.image_ids == [1, 2]
    assert [(p.file, p.field, p.action) for p in dataset.problems] == [(str(split_file), "line 3", "dropped")]


def test_hf_malformed_box_and_unknown_class_label_are_rejected(tmp_path):
    import datasets

    write_good_jpeg(tmp_path / "x.jpg")
    features = datasets.Features({"image": datasets.Image(), "objects": {
        "bbox": datasets.List(datasets.List(datasets.Value("float32"))),
        "category": datasets.List(datasets.ClassLabel(names=["cat"]))}})
    rows = {"image": [str(tmp_path / "x.jpg")] * 2,
            "objects": [{"bbox": [[1, 2, 3]], "category": [0]}, {"bbox": [[1, 2, 3, 4]], "category": [-1]}]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(
        str(tmp_path / "hf"))

    with pytest.raises(DatasetError) as error:
        load_detection_dataset(tmp_path / "hf", "train")

    assert [p.field for p in error.value.problems] == ["objects.bbox[0]", "objects.category[0]"]
    assert all(p.file.endswith("x.jpg") for p in error.value.problems)


def test_images_without_objects_and_a_batch_with_none_train_normally(tmp_path, tiny_model):
    write_coco(tmp_path, [coco_image(1), coco_image(2)], [])
    dataset = load_detection_dataset(tmp_path, "train")
    batch = DetectionCollator(DeTRLiteImageProcessor(size=128, label2id=None))([dataset[0], dataset[1]])
    model = tiny_model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.class_labels_classifier.weight.detach().clone()

    loss = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"]).loss
    loss.backward()
    optimizer.step()

    assert [len(label["boxes"]) for label in batch["labels"]] == [0, 0]
    assert torch.isfinite(loss) and loss > 0  # the no-object class is still learned
    assert not torch.equal(model.class_labels_classifier.weight, before)
    assert dataset.problems == []


def test_run_detection_stops_on_a_rejected_dataset_naming_the_file(tmp_path):
    from scripts_helpers import run_script

    ann_file = write_coco(tmp_path / "data", [coco_image(1)], [coco_box(1, 1, [1, 1, 5, 5], 7)])
    write_coco(tmp_path / "data", [coco_image(1)], [], split="val")

    result = run_script("run_detection.py", "--data_dir", str(tmp_path / "data"), "--output_dir",
                        str(tmp_path / "out"), "--max_train_steps", "1", check=False)

    assert result.returncode == 1
    assert f"{ann_file}: annotations[0].category_id: category_id 7" in result.stderr
