"""Dataset readers (detr_lite/data/{base,coco,voc,hf,datasets}.py) on tiny datasets built in tmp_path."""

import json
import pickle
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detr_lite.data import detect_layout, load_detection_dataset

CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 5, "name": "square"}, {"id": 90, "name": "triangle"}]
# image 1 (64x48): three objects listed with category ids 90, 1, 5; image 2 (40x30): none
COCO_IMAGES = [
    {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
    {"id": 2, "file_name": "b.png", "width": 40, "height": 30},
]
COCO_ANNOTATIONS = [
    {"id": 1, "image_id": 1, "category_id": 90, "bbox": [2.5, 3.0, 10.0, 20.0], "area": 150.0, "iscrowd": 0},
    {"id": 2, "image_id": 1, "category_id": 1, "bbox": [30.0, 5.0, 12.0, 8.0], "area": 96.0, "iscrowd": 1},
    {"id": 3, "image_id": 1, "category_id": 5, "bbox": [40.0, 20.0, 20.0, 25.0], "area": 500.0, "iscrowd": 0},
]


def save_image(path: Path, size: tuple[int, int], seed: int = 0, exif_orientation: int | None = None) -> None:
    """A random-noise image (so any pixel change is visible) of size (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    exif = Image.Exif()
    if exif_orientation is not None:
        exif[0x0112] = exif_orientation
    Image.fromarray(pixels).save(path, exif=exif)


def make_coco(
    root: Path,
    split: str = "train",
    image_dir: str | None = None,
    images: list[dict] = COCO_IMAGES,
    annotations: list[dict] = COCO_ANNOTATIONS,
    categories: list[dict] = CATEGORIES,
    seed: int = 0,
) -> Path:
    """A COCO-layout folder with one split; images in `{split}/` unless `image_dir` says otherwise."""
    for index, image in enumerate(images):
        size = (image.get("width", 40), image.get("height", 30))
        save_image(root / (image_dir or split) / image["file_name"], size, seed + index)
    ann_file = root / "annotations" / f"instances_{split}.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root


VOC_XML = """<annotation><filename>{stem}.png</filename>
<size><width>{width}</width><height>{height}</height><depth>3</depth></size>{objects}</annotation>"""
VOC_OBJECT = """<object><name>{name}</name><difficult>{difficult}</difficult>
<bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>"""


def make_voc(root: Path, splits: dict[str, dict[str, list[tuple]]], size: tuple[int, int] = (64, 48)) -> Path:
    """A VOC folder; `splits` maps split → {stem: [(name, (xmin, ymin, xmax, ymax), difficult)]}."""
    for split, images in splits.items():
        for index, (stem, objects) in enumerate(images.items()):
            save_image(root / "JPEGImages" / f"{stem}.png", size, index)
            xml = VOC_XML.format(
                stem=stem,
                width=size[0],
                height=size[1],
                objects="".join(VOC_OBJECT.format(name=n, box=b, difficult=int(d)) for n, b, d in objects),
            )
            (root / "Annotations").mkdir(parents=True, exist_ok=True)
            (root / "Annotations" / f"{stem}.xml").write_text(xml)
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{stem}\n" for stem in images))
    return root


def hf_rows(root: Path, categories: list[list]) -> list[dict]:
    """One row per image (image i is 64x48 with len(categories[i]) boxes) in the transformers example's columns."""
    rows = []
    for index, cats in enumerate(categories):
        save_image(root / f"img{index}.png", (64, 48), index)
        boxes = [[4.0 * k, 2.0 * k, 10.0, 12.0] for k in range(len(cats))]
        rows.append({"file_name": f"img{index}.png", "objects": {"bbox": boxes, "category": cats}})
    return rows


def make_hf_disk(root: Path, categories: dict[str, list[list]], names: list[str] | None = None) -> Path:
    """A DatasetDict.save_to_disk folder; `category` is a ClassLabel when `names` are given."""
    category = datasets.ClassLabel(names=names) if names else datasets.Value("int64")
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "objects": {
                "bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
                "category": datasets.List(category),
            },
        }
    )
    splits = {}
    for split, cats in categories.items():
        rows = hf_rows(root / "src" / split, cats)
        columns = {
            "image": [str(root / "src" / split / row["file_name"]) for row in rows],
            "objects": [row["objects"] for row in rows],
        }
        splits[split] = datasets.Dataset.from_dict(columns, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(root / "hf"))
    return root / "hf"


def make_imagefolder(root: Path, categories: dict[str, list[list]]) -> Path:
    for split, cats in categories.items():
        rows = hf_rows(root / split, cats)
        (root / split / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


@pytest.mark.parametrize("image_dir", ["train", "images"])
def test_coco_sparse_category_ids_map_to_contiguous_labels_and_back(tmp_path, image_dir):
    dataset = load_detection_dataset(make_coco(tmp_path, image_dir=image_dir), "train")

    assert dataset.id2label == {0: "circle", 1: "square", 2: "triangle"}
    assert dataset.label_to_category_id == {0: 1, 1: 5, 2: 90}
    assert dataset.image_ids == [1, 2]
    sample = dataset[0]
    assert sample["image_id"] == 1 and sample["image"].mode == "RGB" and sample["image"].size == (64, 48)
    assert sample["class_labels"].dtype == np.int64 and sample["class_labels"].tolist() == [2, 0, 1]
    assert sample["boxes"].dtype == np.float32
    np.testing.assert_array_equal(sample["boxes"], [a["bbox"] for a in COCO_ANNOTATIONS])
    assert sample["iscrowd"].tolist() == [0, 1, 0] and sample["difficult"].tolist() == [False] * 3
    coco_dict = dataset.to_coco_dict()
    assert [a["category_id"] for a in coco_dict["annotations"]] == [90, 1, 5]
    assert [a["area"] for a in coco_dict["annotations"]] == [150.0, 96.0, 500.0]  # the source's areas
    assert coco_dict["categories"] == CATEGORIES


def test_image_without_objects_gives_empty_arrays(tmp_path):
    sample = load_detection_dataset(make_coco(tmp_path), "train")[1]

    assert sample["boxes"].shape == (0, 4) and sample["boxes"].dtype == np.float32
    assert sample["class_labels"].shape == (0,) and sample["class_labels"].dtype == np.int64
    assert sample["iscrowd"].shape == (0,) and sample["difficult"].dtype == bool
    assert sample["image"].size == (40, 30)


def test_empty_annotation_file_reads_as_empty_dataset(tmp_path):
    dataset = load_detection_dataset(make_coco(tmp_path, images=[], annotations=[], categories=[]), "train")

    assert len(dataset) == 0 and dataset.id2label == {} and dataset.num_dropped_boxes == 0
    assert len(COCO(_json_file(tmp_path, dataset.to_coco_dict())).getImgIds()) == 0


def test_boxes_are_clipped_to_the_image_and_empty_ones_dropped(tmp_path):
    boxes = [[-5, 10, 20, 10], [60, 40, 10, 10], [10, 10, 0, 5], [70, 10, 5, 5], [5, 5, float("nan"), 3]]
    annotations = [
        {"id": i + 1, "image_id": 1, "category_id": [1, 5][i % 2], "bbox": box, "iscrowd": 0}
        for i, box in enumerate(boxes)
    ]
    dataset = load_detection_dataset(make_coco(tmp_path, annotations=annotations), "train")

    assert dataset.num_dropped_boxes == 3
    sample = dataset[0]
    np.testing.assert_array_equal(sample["boxes"], [[0, 10, 15, 10], [60, 40, 4, 8]])
    assert sample["class_labels"].tolist() == [0, 1]


def test_exif_orientation_is_applied_to_image_and_size(tmp_path):
    images = [{"id": 7, "file_name": "rotated.jpg"}]  # no width/height: read from the file
    make_coco(tmp_path, images=images, annotations=[])
    save_image(tmp_path / "train" / "rotated.jpg", (40, 20), exif_orientation=6)  # shown rotated 90°

    dataset = load_detection_dataset(tmp_path, "train")

    assert (dataset.records[0].width, dataset.records[0].height) == (20, 40)
    assert dataset[0]["image"].size == (20, 40)


def test_voc_one_based_inclusive_boxes_difficult_and_custom_classes(tmp_path):
    make_voc(
        tmp_path,
        {
            "train": {"000007": [("square", (1, 1, 10, 20), False), ("circle", (5, 6, 64, 48), True)]},
            "val": {"000009": [("square", (2, 3, 2, 3), False)]},  # a 1-pixel box; no circle in val
        },
    )

    train = load_detection_dataset(tmp_path, "train")
    val = load_detection_dataset(tmp_path, "val")

    assert train.id2label == val.id2label == {0: "circle", 1: "square"}  # from every split's XMLs
    assert train.label_to_category_id == {0: 1, 1: 2}
    assert train.image_ids == [7] and val.image_ids == [9]
    sample = train[0]
    np.testing.assert_array_equal(sample["boxes"], [[0, 0, 10, 20], [4, 5, 60, 43]])
    assert sample["class_labels"].tolist() == [1, 0] and sample["difficult"].tolist() == [False, True]
    np.testing.assert_array_equal(val[0]["boxes"], [[1, 2, 1, 1]])
    annotations = train.to_coco_dict()["annotations"]
    assert [(a["iscrowd"], a["ignore"]) for a in annotations] == [(0, 0), (1, 1)]


def test_voc_subset_of_standard_classes_keeps_the_20_voc_labels(tmp_path):
    make_voc(tmp_path, {"trainval": {"2008_000002": [("dog", (1, 1, 5, 5), False)], "2008_000010": []}})

    dataset = load_detection_dataset(tmp_path, "trainval")

    assert len(dataset.id2label) == 20 and dataset.id2label[11] == "dog"
    assert dataset[0]["class_labels"].tolist() == [11]
    assert dataset.image_ids == [1, 2]  # non-numeric ids: line numbers in the split file
    assert len(dataset[1]["boxes"]) == 0


def test_voc_per_class_lists_are_not_splits(tmp_path):
    make_voc(tmp_path, {"train": {"000001": [("cat", (1, 1, 5, 5), False)]}})
    (tmp_path / "ImageSets" / "Main" / "cat_train.txt").write_text("000001  1\n")

    with pytest.raises(ValueError, match="Available splits: train."):
        load_detection_dataset(tmp_path, "cat_train")


def test_hf_save_to_disk_with_class_label(tmp_path):
    root = make_hf_disk(tmp_path, {"train": [[1, 0], []], "test": [[2]]}, names=["circle", "square", "triangle"])

    dataset = load_detection_dataset(root, "train")

    assert type(dataset).__name__ == "HFDetectionDataset"
    assert dataset.id2label == {0: "circle", 1: "square", 2: "triangle"}
    assert dataset.label_to_category_id == {0: 0, 1: 1, 2: 2}
    assert dataset.image_ids == [0, 1]
    sample = pickle.loads(pickle.dumps(dataset))[0]  # DataLoader workers receive a pickled copy
    assert sample["class_labels"].tolist() == [1, 0]
    np.testing.assert_array_equal(sample["boxes"], [[0, 0, 10, 12], [4, 2, 10, 12]])
    expected = np.asarray(Image.open(tmp_path / "src" / "train" / "img0.png").convert("RGB"))
    np.testing.assert_array_equal(np.asarray(sample["image"]), expected)
    assert dataset[1]["boxes"].shape == (0, 4)


def test_hf_integer_categories_without_names_keep_their_ids(tmp_path):
    root = make_hf_disk(tmp_path, {"train": [[7, 3]], "validation": [[12]]})

    dataset = load_detection_dataset(root, "train")

    assert dataset.id2label == {0: "3", 1: "7", 2: "12"}  # ids of every split, sorted
    assert dataset.label_to_category_id == {0: 3, 1: 7, 2: 12}
    assert dataset[0]["class_labels"].tolist() == [1, 0]


def test_hf_image_bytes_without_a_path_and_optional_columns(tmp_path):
    save_image(tmp_path / "x.png", (30, 20))
    columns = {
        "image": [{"bytes": (tmp_path / "x.png").read_bytes(), "path": None}],
        "image_id": [5],
        "width": [30],
        "height": [20],
        "objects": [{"bbox": [[1.0, 2.0, 3.0, 4.0]], "category": ["b"], "iscrowd": [1], "area": [9.5]}],
    }
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(columns)}).save_to_disk(str(tmp_path / "hf"))

    dataset = load_detection_dataset(tmp_path / "hf", "train")

    assert dataset.image_ids == [5] and dataset.records[0].file_name == "5.png"
    assert dataset[0]["iscrowd"].tolist() == [1] and dataset.to_coco_dict()["annotations"][0]["area"] == 9.5
    assert dataset[0]["image"].size == (30, 20)


def test_hf_imagefolder_with_string_categories_in_a_val_folder(tmp_path):
    make_imagefolder(tmp_path, {"train": [["square"]], "val": [["circle", "square"], []]})

    dataset = load_detection_dataset(tmp_path, "val")

    assert dataset.id2label == {0: "circle", 1: "square"} and dataset.label_to_category_id == {0: 1, 1: 2}
    assert len(dataset) == 2 and dataset.records[0].file_name == "img0.png"
    sample = dataset[0]
    assert sample["class_labels"].tolist() == [0, 1] and sample["image"].size == (64, 48)
    np.testing.assert_array_equal(sample["boxes"], [[0, 0, 10, 12], [4, 2, 10, 12]])


@pytest.mark.parametrize(
    "build, layout",
    [
        (lambda root: make_coco(root, image_dir="images", images=COCO_IMAGES[:1]), "COCO"),
        (lambda root: make_voc(root, {"train": {"000001": []}}), "Pascal VOC"),
        (lambda root: make_hf_disk(root, {"train": [[0]]}, names=["a"]), "Hugging Face save_to_disk"),
        (lambda root: make_imagefolder(root, {"train": [[0]]}), "Hugging Face imagefolder"),
    ],
)
def test_layout_is_recognised(tmp_path, build, layout):
    root = build(tmp_path)

    assert detect_layout(root).name == layout
    assert len(load_detection_dataset(root, "train")) == 1


def test_unknown_layout_error_lists_what_was_looked_for(tmp_path):
    (tmp_path / "stuff").mkdir()

    with pytest.raises(ValueError) as error:
        load_detection_dataset(tmp_path, "train")

    message = str(error.value)
    assert str(tmp_path) in message
    for layout_file in ("annotations/instances_{split}.json", "ImageSets/Main/{split}.txt", "dataset_dict", "metadata"):
        assert layout_file in message


def test_missing_split_error_names_the_file_and_the_available_splits(tmp_path):
    make_coco(tmp_path)

    with pytest.raises(ValueError) as error:
        load_detection_dataset(tmp_path, "val")

    assert str(tmp_path / "annotations" / "instances_val.json") in str(error.value)
    assert "Available splits: train." in str(error.value)


def test_missing_coco_image_folder_is_named(tmp_path):
    make_coco(tmp_path, image_dir="elsewhere")

    with pytest.raises(ValueError, match="expected .*train or .*images"):
        load_detection_dataset(tmp_path, "train")


def test_transform_is_applied_to_samples(tmp_path):
    dataset = load_detection_dataset(make_coco(tmp_path), "train", transform=lambda s: {**s, "boxes": s["boxes"] + 1})

    np.testing.assert_array_equal(dataset[0]["boxes"], np.asarray([a["bbox"] for a in COCO_ANNOTATIONS]) + 1)


def _json_file(tmp_path: Path, coco_dict: dict) -> str:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(coco_dict))
    return str(path)


def test_to_coco_dict_evaluates_difficult_objects_as_ignored(tmp_path):
    make_voc(tmp_path, {"val": {"000001": [("circle", (1, 1, 20, 20), False), ("circle", (31, 21, 60, 45), True)]}})
    dataset = load_detection_dataset(tmp_path, "val")
    gt = COCO(_json_file(tmp_path, dataset.to_coco_dict()))
    # Detect only the non-difficult object: with the difficult one ignored, precision and recall are 1.
    detections = [{"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 20.0, 20.0], "score": 0.9}]

    evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()

    assert evaluator.stats[0] == pytest.approx(1.0)
