"""scripts/convert_dataset.py and the writers it uses (detr_lite/data/writers.py)."""

import numpy as np
import pytest
from scripts_helpers import load_script
from test_datasets import make_coco, make_voc

from detr_lite.data import detect_layout, load_detection_dataset


def convert(*argv: str) -> None:
    load_script("convert_dataset.py").main(list(argv))


def class_names(dataset, index: int) -> list[str]:
    return [dataset.id2label[int(label)] for label in dataset.records[index].class_labels]


def test_coco_to_voc_to_hf_to_coco_keeps_images_boxes_and_class_names(tmp_path, capsys):
    make_coco(tmp_path / "coco", "train")
    make_coco(tmp_path / "coco", "val", seed=10)  # same file names as train, other pixels
    chain = [("coco", "voc", "voc", "Pascal VOC"), ("voc", "hf", "hf", "Hugging Face save_to_disk")]
    chain.append(("hf", "coco_again", "coco", "COCO"))
    for source, target, layout, name in chain:
        convert("--data_dir", str(tmp_path / source), "--output_dir", str(tmp_path / target), "--to", layout)
        assert detect_layout(tmp_path / target).name == name

    assert "train: 2 images, 3 boxes, 3 classes" in capsys.readouterr().out
    for split in ("train", "val"):
        before = load_detection_dataset(tmp_path / "coco", split)
        after = load_detection_dataset(tmp_path / "coco_again", split)
        assert sorted(after.id2label.values()) == sorted(before.id2label.values())
        assert len(after) == len(before) == 2
        for index in range(len(before)):
            np.testing.assert_array_equal(np.asarray(after[index]["image"]), np.asarray(before[index]["image"]))
            np.testing.assert_allclose(after.records[index].boxes, before.records[index].boxes, atol=1.0)
            assert class_names(after, index) == class_names(before, index)


def test_voc_corners_survive_a_round_trip_exactly(tmp_path):
    objects = [("circle", (1, 1, 64, 48), False), ("square", (10, 20, 10, 20), True)]  # whole image; one pixel
    make_voc(tmp_path / "voc", {"train": {"000003": objects}})

    convert("--data_dir", str(tmp_path / "voc"), "--output_dir", str(tmp_path / "coco"), "--to", "coco")
    convert("--data_dir", str(tmp_path / "coco"), "--output_dir", str(tmp_path / "voc2"), "--to", "voc")

    xml = (tmp_path / "voc2" / "Annotations" / "000003.xml").read_text()
    assert "<xmin>1</xmin>" in xml and "<xmax>64</xmax>" in xml and "<xmin>10</xmin>" in xml
    before = load_detection_dataset(tmp_path / "voc", "train")
    after = load_detection_dataset(tmp_path / "voc2", "train")
    np.testing.assert_array_equal(after[0]["boxes"], before[0]["boxes"])
    assert after[0]["difficult"].tolist() == [False, True]  # kept through COCO's "ignore"
    assert after.image_ids == [3]


def test_only_the_named_splits_are_converted(tmp_path):
    make_coco(tmp_path / "coco", "train")
    make_coco(tmp_path / "coco", "val")

    convert("--data_dir", str(tmp_path / "coco"), "--output_dir", str(tmp_path / "hf"), "--to", "hf", "--splits", "val")

    with pytest.raises(ValueError, match="Available splits: val."):
        load_detection_dataset(tmp_path / "hf", "train")


def test_a_non_empty_output_folder_is_refused(tmp_path):
    make_coco(tmp_path / "coco")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")

    with pytest.raises(SystemExit, match="not empty"):
        convert("--data_dir", str(tmp_path / "coco"), "--output_dir", str(tmp_path / "out"), "--to", "voc")
