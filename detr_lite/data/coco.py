"""COCO layout reader: ``annotations/instances_{split}.json``, images in ``{split}/`` or ``images/``.

Category ids may be sparse (COCO's 1..90); contiguous labels follow the ids in ascending order and
``label_to_category_id`` maps back. An annotation with ``"ignore": 1`` (what
:meth:`DetectionDataset.to_coco_dict` writes for difficult objects) is read back as difficult.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from .base import DetectionDataset, ImageRecord, Layout, image_size, make_record


def _annotation_file(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{split}.json"


def coco_splits(root: Path) -> list[str]:
    """Split names that have an ``annotations/instances_{split}.json`` file."""
    return sorted(path.stem.removeprefix("instances_") for path in (root / "annotations").glob("instances_*.json"))


def _image_root(root: Path, split: str) -> Path:
    for folder in (root / split, root / "images"):
        if folder.is_dir():
            return folder
    raise ValueError(
        f"COCO dataset {root}: no image folder for split {split!r}; expected {root / split} or {root / 'images'}."
    )


def read_coco(root: Path, split: str) -> DetectionDataset:
    """Reads one split of a COCO-layout dataset (see the module docstring)."""
    ann_file = _annotation_file(root, split)
    coco = json.loads(ann_file.read_text())
    categories = sorted(coco.get("categories", []), key=lambda category: category["id"])
    label_of = {category["id"]: label for label, category in enumerate(categories)}
    objects_of = defaultdict(list)
    for ann in coco.get("annotations", []):
        if ann["category_id"] not in label_of:
            raise ValueError(
                f"{ann_file}: annotation {ann.get('id')} has category_id {ann['category_id']}, which is not "
                "listed in 'categories'. Add the category or remove the annotation."
            )
        objects_of[ann["image_id"]].append(ann)
    images = coco.get("images", [])
    image_root = _image_root(root, split) if images else root / split
    records = [_record(image, objects_of[image["id"]], label_of, image_root) for image in images]
    return DetectionDataset(
        records,
        id2label={label: category["name"] for label, category in enumerate(categories)},
        label_to_category_id={label: category["id"] for label, category in enumerate(categories)},
        image_root=image_root,
    )


def _record(image: dict, objects: list[dict], label_of: dict[int, int], image_root: Path) -> ImageRecord:
    width, height = image.get("width"), image.get("height")
    if not width or not height:
        width, height = image_size(image_root / image["file_name"])
    return make_record(
        image["id"],
        image["file_name"],
        width,
        height,
        boxes=[obj["bbox"] for obj in objects],
        class_labels=[label_of[obj["category_id"]] for obj in objects],
        iscrowd=[int(obj.get("iscrowd", 0) and not obj.get("ignore", 0)) for obj in objects],
        difficult=[bool(obj.get("ignore", 0)) for obj in objects],
        area=[obj.get("area") or obj["bbox"][2] * obj["bbox"][3] for obj in objects],
    )


COCO_LAYOUT = Layout(
    name="COCO",
    looks_for="annotations/instances_{split}.json",
    matches=lambda root: bool(coco_splits(root)),
    splits=coco_splits,
    split_path=_annotation_file,
    read=read_coco,
)
