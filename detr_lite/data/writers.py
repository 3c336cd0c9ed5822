"""Writers for the three layouts the readers understand; ``scripts/convert_dataset.py`` uses them.

Each writer takes ``{split: DetectionDataset}`` and an output folder. Image files are copied byte
for byte (never re-encoded), so pixels and EXIF orientation survive any conversion.
- COCO: ``annotations/instances_{split}.json`` is :meth:`DetectionDataset.to_coco_dict` (difficult
  objects carry ``"ignore": 1``, which the COCO reader reads back as difficult); images in ``{split}/``.
- VOC: integer 1-based inclusive corners (the inverse of the reader's convention, so boxes move
  by less than 1 px); VOC has no crowd flag, so crowd boxes are written as difficult, the flag
  VOC's evaluation ignores. The VOC id is the image file's stem, or ``{split}_{stem}`` when
  another split already used that stem for a different image.
- Hugging Face: a ``DatasetDict.save_to_disk`` folder with the transformers example's columns,
  ``category`` a ``ClassLabel`` of the class names, plus ``objects{area, iscrowd, difficult}``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import datasets
import numpy as np

from .base import DetectionDataset, ImageRecord

Splits = Mapping[str, DetectionDataset]


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_coco(splits: Splits, output_dir: str | Path) -> None:
    """Writes ``annotations/instances_{split}.json`` and ``{split}/`` images for every split."""
    root = Path(output_dir)
    for split, dataset in splits.items():
        for index, record in enumerate(dataset.records):
            _write_file(root / split / record.file_name, dataset.read_image_bytes(index))
        _write_file(root / "annotations" / f"instances_{split}.json", json.dumps(dataset.to_coco_dict()).encode())


def voc_corners(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(n, 4) xywh pixel boxes → (n, 4) int VOC corners (1-based, inclusive) inside the image."""
    x0 = np.clip(np.round(boxes[:, 0]) + 1, 1, width)
    y0 = np.clip(np.round(boxes[:, 1]) + 1, 1, height)
    x1 = np.clip(np.round(boxes[:, 0] + boxes[:, 2]), x0, width)
    y1 = np.clip(np.round(boxes[:, 1] + boxes[:, 3]), y0, height)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.int64)


def _voc_xml(record: ImageRecord, file_name: str, id2label: dict[int, str]) -> bytes:
    annotation = ET.Element("annotation")
    ET.SubElement(annotation, "folder").text = "JPEGImages"
    ET.SubElement(annotation, "filename").text = file_name
    size = ET.SubElement(annotation, "size")
    for tag, value in (("width", record.width), ("height", record.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(annotation, "segmented").text = "0"
    corners = voc_corners(record.boxes, record.width, record.height)
    for box, label, crowd, difficult in zip(corners, record.class_labels, record.iscrowd, record.difficult):
        obj = ET.SubElement(annotation, "object")
        ET.SubElement(obj, "name").text = id2label[int(label)]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(bool(crowd or difficult)))
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bndbox, tag).text = str(int(value))
    ET.indent(annotation)
    return ET.tostring(annotation, encoding="utf-8")


def write_voc(splits: Splits, output_dir: str | Path) -> None:
    """Writes ``JPEGImages/``, ``Annotations/`` and ``ImageSets/Main/{split}.txt`` for every split."""
    root = Path(output_dir)
    written: dict[str, str] = {}  # VOC id → digest of its image: shared images are written once
    for split, dataset in splits.items():
        ids = []
        for index, record in enumerate(dataset.records):
            data = dataset.read_image_bytes(index)
            digest = hashlib.sha1(data).hexdigest()
            name = PurePosixPath(record.file_name)
            voc_id = name.stem if written.get(name.stem, digest) == digest else f"{split}_{name.stem}"
            if written.get(voc_id, digest) != digest:
                raise ValueError(f"Split {split!r} has two different images named {name.stem}; VOC ids must be unique.")
            if voc_id not in written:
                file_name = f"{voc_id}{name.suffix}"
                _write_file(root / "JPEGImages" / file_name, data)
                _write_file(root / "Annotations" / f"{voc_id}.xml", _voc_xml(record, file_name, dataset.id2label))
                written[voc_id] = digest
            ids.append(voc_id)
        _write_file(root / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{voc_id}\n" for voc_id in ids).encode())


def _hf_features(id2label: dict[int, str]) -> datasets.Features:
    names = [id2label[label] for label in range(len(id2label))]
    return datasets.Features(
        {
            "image_id": datasets.Value("int64"),
            "image": datasets.Image(),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
            "objects": {
                "bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
                "category": datasets.List(datasets.ClassLabel(names=names)),
                "area": datasets.List(datasets.Value("float32")),
                "iscrowd": datasets.List(datasets.Value("int64")),
                "difficult": datasets.List(datasets.Value("bool")),
            },
        }
    )


def _hf_rows(dataset: DetectionDataset) -> Iterator[dict[str, Any]]:
    for index, record in enumerate(dataset.records):
        yield {
            "image_id": record.image_id,
            "image": {"bytes": dataset.read_image_bytes(index), "path": PurePosixPath(record.file_name).name},
            "width": record.width,
            "height": record.height,
            "objects": {
                "bbox": record.boxes.tolist(),
                "category": record.class_labels.tolist(),
                "area": record.area.tolist(),
                "iscrowd": record.iscrowd.tolist(),
                "difficult": record.difficult.tolist(),
            },
        }


def write_hf(splits: Splits, output_dir: str | Path) -> None:
    """Writes a ``DatasetDict.save_to_disk`` folder with one split per entry of ``splits``."""
    label_sets = {split: dataset.id2label for split, dataset in splits.items()}
    id2label = next(iter(label_sets.values()), {})
    if any(labels != id2label for labels in label_sets.values()):
        raise ValueError(f"The splits have different classes, but a ClassLabel needs one list: {label_sets}.")
    features = _hf_features(id2label)
    with tempfile.TemporaryDirectory() as cache_dir:  # from_generator's arrow files; save_to_disk copies them
        dataset_dict = datasets.DatasetDict(
            {
                split: datasets.Dataset.from_generator(
                    _hf_rows, features=features, cache_dir=cache_dir, gen_kwargs={"dataset": dataset}
                )
                for split, dataset in splits.items()
            }
        )
        dataset_dict.save_to_disk(str(output_dir))


WRITERS: dict[str, Callable[[Splits, str | Path], None]] = {"coco": write_coco, "voc": write_voc, "hf": write_hf}
