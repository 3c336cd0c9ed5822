"""Pascal VOC layout reader: ``ImageSets/Main/{split}.txt``, ``Annotations/*.xml``, ``JPEGImages/``.

Conventions:
- VOC boxes are 1-based *inclusive* pixel indices: pixels xmin..xmax are covered. In continuous
  0-based coordinates that is [xmin - 1, xmax), so x = xmin - 1 and w = xmax - xmin + 1 (the
  convention Detectron2 uses); :mod:`detr_lite.data.writers` inverts it exactly for integer boxes.
- Classes: the names found in all of ``Annotations/*.xml`` (every split, so train and val agree),
  sorted; when they are all standard VOC classes, the 20 standard classes instead, so a subset of
  VOC keeps VOC's label numbering. Category ids are ``label + 1`` (VOC has names only).
- ``difficult`` is kept; VOC has no crowd flag (iscrowd is 0).
- Image ids: the file stems as integers when every stem of the split is a number ("000005" → 5,
  as in VOC2007), otherwise the 1-based line number in the split file ("2008_000002" → its line).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from .base import BadImageError, DetectionDataset, Layout, image_size, make_record
from .problems import DataProblem

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def _split_file(root: Path, split: str) -> Path:
    return root / "ImageSets" / "Main" / f"{split}.txt"


def voc_splits(root: Path) -> list[str]:
    """Split names in ``ImageSets/Main``, without VOC's per-class lists (``{class}_{split}.txt``)."""
    stems = {path.stem for path in (root / "ImageSets" / "Main").glob("*.txt")}
    return sorted(stem for stem in stems if not any(stem.endswith(f"_{other}") for other in stems))


def _matches(root: Path) -> bool:
    return (root / "Annotations").is_dir() and bool(voc_splits(root))


class _BadField(Exception):
    """A missing or malformed element of one VOC XML; ``field`` is its path in the file."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _number(element: ET.Element, path: str, where: str) -> float:
    text = element.findtext(path)
    try:
        return float(text)
    except (TypeError, ValueError):
        raise _BadField(f"{where}/{path}", "missing" if text is None else f"{text!r} is not a number") from None


def _parse_object(obj: ET.Element, where: str) -> tuple[str, tuple[float, ...], bool]:
    """(name, (xmin, ymin, xmax, ymax), difficult) of the ``<object>`` at ``where``, e.g. "object[2]"."""
    name = (obj.findtext("name") or "").strip()
    if not name:
        raise _BadField(f"{where}/name", "missing")
    corners = tuple(_number(obj, f"bndbox/{tag}", where) for tag in ("xmin", "ymin", "xmax", "ymax"))
    return name, corners, int(float(obj.findtext("difficult") or 0)) == 1


def _parse_xml(path: Path, problems: list[DataProblem]) -> dict | None:
    """One VOC annotation file → file name, size (0 when absent) and (name, xyxy, difficult) objects.

    A file that does not parse, or an object with a missing or malformed field, is a rejected problem
    (None is returned).
    """
    try:
        tree = ET.parse(path).getroot()
        objects = [_parse_object(obj, f"object[{index}]") for index, obj in enumerate(tree.iter("object"))]
    except ET.ParseError as error:
        problems.append(DataProblem(str(path), "(file)", f"not valid XML: {error}", "rejected"))
        return None
    except _BadField as error:
        problems.append(DataProblem(str(path), error.field, str(error), "rejected"))
        return None
    return {
        "filename": tree.findtext("filename"),
        "width": int(float(tree.findtext("size/width") or 0)),
        "height": int(float(tree.findtext("size/height") or 0)),
        "objects": objects,
    }


def _split_stems(split_file: Path, problems: list[DataProblem]) -> list[str]:
    """The image stems a split file lists, in order; a stem listed again is dropped."""
    stems: dict[str, int] = {}
    for number, line in enumerate(split_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        stem = line.split()[0]
        if stem in stems:
            message = f"{stem} is listed again (first on line {stems[stem]})"
            problems.append(DataProblem(str(split_file), f"line {number}", message, "dropped"))
        else:
            stems[stem] = number
    return list(stems)


def _class_names(annotations: dict[str, dict]) -> list[str]:
    names = {name for parsed in annotations.values() for name, _, _ in parsed["objects"]}
    return list(VOC_CLASSES) if names <= set(VOC_CLASSES) else sorted(names)


def _image_ids(stems: list[str]) -> list[int]:
    numeric = [int(stem) for stem in stems if stem.isdigit()]
    if len(numeric) == len(stems) and len(set(numeric)) == len(stems):
        return numeric
    return list(range(1, len(stems) + 1))


def read_voc(root: Path, split: str) -> DetectionDataset:
    """Reads one split of a Pascal VOC dataset (see the module docstring)."""
    problems: list[DataProblem] = []
    stems = _split_stems(_split_file(root, split), problems)
    parsed_files = {path.stem: _parse_xml(path, problems) for path in sorted((root / "Annotations").glob("*.xml"))}
    for stem in stems:
        if stem not in parsed_files:
            message = f"listed in {_split_file(root, split)} but there is no such annotation file"
            problems.append(DataProblem(str(root / "Annotations" / f"{stem}.xml"), "(file)", message, "rejected"))
    annotations = {stem: parsed for stem, parsed in parsed_files.items() if parsed is not None}
    names = _class_names(annotations)
    label_of = {name: label for label, name in enumerate(names)}
    image_root = root / "JPEGImages"
    records = []
    for image_id, stem in zip(_image_ids(stems), stems):
        if stem not in annotations:
            continue  # a problem is recorded above
        parsed = annotations[stem]
        file_name = parsed["filename"] or f"{stem}.jpg"
        width, height = parsed["width"], parsed["height"]
        if not width or not height:
            try:
                width, height = image_size(image_root / file_name)
            except BadImageError as error:
                problems.append(error.problem)
                continue
        corners = [box for _, box, _ in parsed["objects"]]
        records.append(
            make_record(
                image_id,
                file_name,
                width,
                height,
                boxes=[(x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1) for x0, y0, x1, y1 in corners],
                class_labels=[label_of[name] for name, _, _ in parsed["objects"]],
                difficult=[difficult for _, _, difficult in parsed["objects"]],
            )
        )
    return DetectionDataset(
        records,
        id2label=dict(enumerate(names)),
        label_to_category_id={label: label + 1 for label in range(len(names))},
        image_root=image_root,
        problems=problems,
    )


VOC_LAYOUT = Layout(
    name="Pascal VOC",
    looks_for="ImageSets/Main/{split}.txt with Annotations/ and JPEGImages/",
    matches=_matches,
    splits=voc_splits,
    split_path=_split_file,
    read=read_voc,
)
