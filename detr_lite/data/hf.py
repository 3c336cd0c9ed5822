"""Hugging Face ``datasets`` readers: a ``DatasetDict.save_to_disk`` folder, or an ``imagefolder``.

Both use the transformers object-detection example's columns: ``image`` and
``objects{bbox (COCO xywh, pixels), category}``, optionally ``image_id``, ``width``, ``height`` and
``objects{area, iscrowd, difficult}``. Labels and category ids:
- ``category`` is a ``ClassLabel``: names from it; label = category id = the ClassLabel index.
- integers without names: labels follow the sorted ids, ``label_to_category_id`` gives the id back,
  the names are the ids as strings.
- strings: labels follow the sorted names; category id = label + 1.
Ids and names are collected over *all* splits, so every split of a folder gets the same labels.

The imagefolder split is the folder ``{split}/`` holding ``metadata.jsonl``; it is loaded on its
own, because ``load_dataset`` would rename a folder called ``val`` to the split ``validation``.
Image ids: the ``image_id`` column, else the row index.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets

from .base import (
    BadImageError,
    DetectionDataset,
    ImageRecord,
    ImageSource,
    Layout,
    image_size,
    make_record,
    open_image,
)
from .problems import DataProblem, is_xywh

_METADATA = "metadata.jsonl"


class HFDetectionDataset(DetectionDataset):
    """A :class:`DetectionDataset` whose images live in a ``datasets.Dataset`` column."""

    def __init__(self, images: datasets.Dataset, rows: dict[int, int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.images = images  # the `image` column with decode=False: {"bytes", "path"} per row
        self.rows = rows  # image id → its row in `images` (rows with problems have no record)

    def image_source(self, index: int) -> ImageSource:
        image = self.images[self.rows[self.records[index].image_id]]["image"]
        return io.BytesIO(image["bytes"]) if image["bytes"] else image["path"]


def _category_feature(features: datasets.Features) -> Any:
    """The feature of one ``objects.category`` value (a ClassLabel, Value, ...)."""
    if "image" not in features or "objects" not in features:
        raise ValueError(
            f"A detection dataset needs the columns 'image' and 'objects' {{bbox, category}}; got {sorted(features)}."
        )
    feature = features["objects"]
    while isinstance(feature, (datasets.List, datasets.LargeList)):  # a list of object dicts
        feature = feature.feature
    feature = feature["category"]
    while isinstance(feature, (datasets.List, datasets.LargeList)):
        feature = feature.feature
    return feature


def _objects(row_objects: dict | list) -> dict[str, list]:
    """``objects`` as a dict of lists, whether stored that way or as a list of dicts."""
    if isinstance(row_objects, dict):
        return row_objects
    return {key: [obj[key] for obj in row_objects] for key in (row_objects[0] if row_objects else {})}


def _label_maps(feature: Any, categories: Iterable[Any]) -> tuple[dict[int, str], dict[int, int], dict[Any, int]]:
    """(id2label, label_to_category_id, category value → label) following the module docstring."""
    if isinstance(feature, datasets.ClassLabel):
        identity = {index: index for index in range(len(feature.names))}
        return dict(enumerate(feature.names)), identity, identity
    values = sorted(set(categories), key=lambda value: (isinstance(value, str), value))
    numeric = all(isinstance(value, int) for value in values)
    id2label = {label: str(value) for label, value in enumerate(values)}
    label_to_category_id = {label: value if numeric else label + 1 for label, value in enumerate(values)}
    return id2label, label_to_category_id, {value: label for label, value in enumerate(values)}


def _read_split(
    split: datasets.Dataset, id2label: dict[int, str], label_to_category_id: dict[int, int], label_of: dict[Any, int]
) -> HFDetectionDataset:
    split = split.cast_column("image", datasets.Image(decode=False))
    columns = [name for name in ("image", "image_id", "width", "height", "objects") if name in split.column_names]
    records, problems, rows = [], [], {}
    for index, row in enumerate(split.select_columns(columns)):
        problem = _row_problem(index, row, label_of)
        if problem is None:
            try:
                records.append(_record(index, row, label_of))
                rows.setdefault(records[-1].image_id, index)  # the first row of an id: the one the dataset keeps
                continue
            except BadImageError as error:  # an unreadable image whose size or format had to be read from it
                problem = error.problem
        problems.append(problem)
    return HFDetectionDataset(
        split.select_columns(["image"]), rows, records=records, id2label=id2label,
        label_to_category_id=label_to_category_id, problems=problems,
    )


def _row_problem(index: int, row: dict, label_of: dict[Any, int]) -> DataProblem | None:
    """A rejected problem for a row whose objects have an unknown category or a malformed box, else None."""
    objects = _objects(row.get("objects") or {})
    name = row["image"]["path"] or f"row {index}"
    for position, category in enumerate(objects.get("category", [])):
        if category not in label_of:
            return DataProblem(name, f"objects.category[{position}]", f"{category!r} is not a known category", "rejected")
    for position, bbox in enumerate(objects.get("bbox", [])):
        if not is_xywh(bbox):
            message = f"{bbox!r} is not a list of 4 numbers [x, y, width, height]"
            return DataProblem(name, f"objects.bbox[{position}]", message, "rejected")
    return None


def _record(index: int, row: dict, label_of: dict[Any, int]) -> ImageRecord:
    image, objects = row["image"], _objects(row.get("objects") or {})
    width, height = row.get("width"), row.get("height")
    if not width or not height:
        source = io.BytesIO(image["bytes"]) if image["bytes"] else image["path"]
        width, height = image_size(source, image["path"] or f"row {index}")
    image_id = row.get("image_id", index)
    file_name = os.path.basename(image["path"] or "") or f"{image_id}.{_format(image['bytes'], f'row {index}')}"
    return make_record(
        image_id,
        file_name,
        width,
        height,
        boxes=objects.get("bbox", []),
        class_labels=[label_of[category] for category in objects.get("category", [])],
        iscrowd=objects.get("iscrowd"),
        difficult=objects.get("difficult"),
        area=objects.get("area"),
    )


def _format(data: bytes, name: str) -> str:
    """The file extension for an encoded image that came without a file name."""
    with open_image(io.BytesIO(data), name) as image:
        return (image.format or "png").lower()


def _split_categories(split: datasets.Dataset) -> list[Any]:
    return [value for objects in split["objects"] for value in _objects(objects or {}).get("category", [])]


def hf_disk_splits(root: Path) -> list[str]:
    """Split names listed in a ``save_to_disk`` folder's ``dataset_dict.json``."""
    return list(json.loads((root / "dataset_dict.json").read_text())["splits"])


def read_hf_disk(root: Path, split: str) -> HFDetectionDataset:
    """Reads one split of a ``DatasetDict.save_to_disk`` folder."""
    return _read_dataset_dict(datasets.load_from_disk(str(root)), split)


def read_hub_dataset(name: str, config: str | None, split: str) -> HFDetectionDataset:
    """Reads one split of a Hub dataset with ``datasets.load_dataset(name, config)`` (cached after the first time).

    Raises:
        ValueError: the dataset cannot be loaded (offline and not cached, unknown name, no such split); the
            message names the dataset and, offline, ``HF_HUB_OFFLINE``.
    """
    from huggingface_hub import constants

    try:
        dataset_dict = datasets.load_dataset(name, config)
    except Exception as error:  # offline, unknown name, no network: all mean "this dataset cannot be read"
        offline = (" HF_HUB_OFFLINE is set, so only a dataset already in the local cache can load: unset it where "
                   "there is network, or save the dataset with DatasetDict.save_to_disk and pass --data_dir."
                   if constants.is_offline_mode() else "")
        raise ValueError(f"--dataset_name {name}: cannot load the dataset ({error}).{offline}") from error
    if split not in dataset_dict:
        raise ValueError(f"--dataset_name {name}: no split {split!r}. Available splits: {', '.join(dataset_dict)}.")
    return _read_dataset_dict(dataset_dict, split)


def _read_dataset_dict(dataset_dict: datasets.DatasetDict, split: str) -> HFDetectionDataset:
    """One split, with labels collected over every split so that all splits share them."""
    feature = _category_feature(dataset_dict[split].features)
    categories = []
    if not isinstance(feature, datasets.ClassLabel):  # collect over every split: one label set for all
        categories = [value for name in dataset_dict for value in _split_categories(dataset_dict[name])]
    return _read_split(dataset_dict[split], *_label_maps(feature, categories))


def imagefolder_splits(root: Path) -> list[str]:
    """Sub-folders of ``root`` that hold a ``metadata.jsonl``."""
    return sorted(path.parent.name for path in root.glob(f"*/{_METADATA}"))


def _metadata_categories(root: Path) -> list[Any]:
    """Every ``objects.category`` value in the ``metadata.jsonl`` of every split folder."""
    values = []
    for path in sorted(root.glob(f"*/{_METADATA}")):
        for line in path.read_text().splitlines():
            if line.strip():
                values.extend(_objects(json.loads(line).get("objects") or {}).get("category", []))
    return values


def read_imagefolder(root: Path, split: str) -> HFDetectionDataset:
    """Reads the ``{split}/`` folder of an imagefolder dataset with ``metadata.jsonl``."""
    dataset = datasets.load_dataset("imagefolder", data_dir=str(root / split), split="train")
    return _read_split(dataset, *_label_maps(_category_feature(dataset.features), _metadata_categories(root)))


HF_DISK_LAYOUT = Layout(
    name="Hugging Face save_to_disk",
    looks_for="dataset_dict.json listing the split",
    matches=lambda root: (root / "dataset_dict.json").is_file(),
    splits=hf_disk_splits,
    split_path=lambda root, split: root / split,
    read=read_hf_disk,
)

HF_IMAGEFOLDER_LAYOUT = Layout(
    name="Hugging Face imagefolder",
    looks_for=f"{{split}}/{_METADATA}",
    matches=lambda root: bool(imagefolder_splits(root)),
    splits=imagefolder_splits,
    split_path=lambda root, split: root / split / _METADATA,
    read=read_imagefolder,
)
