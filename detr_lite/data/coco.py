"""COCO layout reader: ``annotations/instances_{split}.json``, images in ``{split}/`` or ``images/``.

Category ids may be sparse (COCO's 1..90); contiguous labels follow the ids in ascending order and
``label_to_category_id`` maps back. An annotation with ``"ignore": 1`` (what
:meth:`DetectionDataset.to_coco_dict` writes for difficult objects) is read back as difficult.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from .base import BadImageError, DetectionDataset, ImageRecord, Layout, image_size, make_record
from .problems import Action, DataProblem, DatasetError, is_xywh


def _annotation_file(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{split}.json"


def coco_splits(root: Path) -> list[str]:
    """Split names that have an ``annotations/instances_{split}.json`` file."""
    return sorted(path.stem.removeprefix("instances_") for path in (root / "annotations").glob("instances_*.json"))


def _image_root(root: Path, split: str) -> Path:
    for folder in (root / split, root / "images"):
        if folder.is_dir():
            return folder
    message = f"no image folder for split {split!r}; expected {root / split} or {root / 'images'}"
    raise DatasetError([DataProblem(str(root), "(folder)", message, "rejected")])


def _read_json(path: Path) -> dict:
    """The annotation file's JSON object; an empty or invalid file is a :class:`DatasetError` naming it."""
    text = path.read_text()
    try:
        coco = json.loads(text)
    except json.JSONDecodeError as error:
        message = "the file is empty" if not text.strip() else f"not valid JSON: {error}"
    else:
        if isinstance(coco, dict):
            return coco
        message = f"holds a JSON {type(coco).__name__}, not an object with 'images', 'annotations', 'categories'"
    raise DatasetError([DataProblem(str(path), "(file)", message + ". Re-export the annotations.", "rejected")])


def _entries(coco: dict, key: str, required: tuple[str, ...], ann_file: Path, problems: list[DataProblem]) -> list:
    """(index, entry) for each entry of ``coco[key]`` that has the ``required`` fields; the others are rejected."""
    entries = []
    for index, entry in enumerate(coco.get(key, [])):
        missing = [field for field in required if not isinstance(entry, dict) or field not in entry]
        if missing:
            problems.append(DataProblem(str(ann_file), f"{key}[{index}].{missing[0]}", "missing", "rejected"))
        else:
            entries.append((index, entry))
    return entries


def read_coco(root: Path, split: str) -> DetectionDataset:
    """Reads one split of a COCO-layout dataset (see the module docstring)."""
    ann_file = _annotation_file(root, split)
    coco = _read_json(ann_file)
    problems: list[DataProblem] = []
    categories = sorted((c for _, c in _entries(coco, "categories", ("id", "name"), ann_file, problems)),
                        key=lambda category: category["id"])
    images = [image for _, image in _entries(coco, "images", ("id", "file_name"), ann_file, problems)]
    label_of = {category["id"]: label for label, category in enumerate(categories)}
    objects_of = _objects_by_image(coco, ann_file, label_of, {image["id"] for image in images}, problems)
    image_root = _image_root(root, split) if images else root / split
    records = []
    for image in images:
        try:
            records.append(_record(image, objects_of[image["id"]], label_of, image_root))
        except BadImageError as error:  # no size in the annotations and an unreadable file
            problems.append(error.problem)
    return DetectionDataset(
        records,
        id2label={label: category["name"] for label, category in enumerate(categories)},
        label_to_category_id={label: category["id"] for label, category in enumerate(categories)},
        image_root=image_root,
        problems=problems,
    )


def _objects_by_image(
    coco: dict, ann_file: Path, label_of: dict[int, int], image_ids: set, problems: list[DataProblem]
) -> dict[int, list[dict]]:
    """The usable annotations grouped by image id; each unusable one becomes a problem."""
    objects_of = defaultdict(list)
    seen_ids = set()
    for index, ann in _entries(coco, "annotations", ("image_id", "category_id", "bbox"), ann_file, problems):
        problem = _annotation_problem(ann, label_of, image_ids, seen_ids)
        seen_ids.add(ann.get("id"))
        if problem:
            field, message, action = problem
            problems.append(DataProblem(str(ann_file), f"annotations[{index}].{field}", message, action))
        else:
            objects_of[ann["image_id"]].append(ann)
    return objects_of


def _annotation_problem(
    ann: dict, label_of: dict[int, int], image_ids: set, seen_ids: set
) -> tuple[str, str, Action] | None:
    """(field, message, action) when an annotation cannot be used as it is, else None."""
    if ann.get("id") is not None and ann["id"] in seen_ids:
        return "id", f"id {ann['id']} is also an earlier annotation's id; the first one is kept", "dropped"
    if ann["image_id"] not in image_ids:
        return "image_id", f"image_id {ann['image_id']} is not listed in 'images'", "dropped"
    if ann["category_id"] not in label_of:
        message = f"category_id {ann['category_id']} is not listed in 'categories'. Add it or remove the annotation"
        return "category_id", message, "rejected"
    if not is_xywh(ann["bbox"]):
        return "bbox", f"{ann['bbox']!r} is not a list of 4 numbers [x, y, width, height]", "rejected"
    return None


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
