"""Recognises a dataset folder's layout and reads a split of it with the matching reader."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from .base import BadImageError, DetectionDataset, Layout, Sample
from .coco import COCO_LAYOUT
from .hf import HF_DISK_LAYOUT, HF_IMAGEFOLDER_LAYOUT
from .problems import DataProblem, DatasetError, count_actions, raise_if_rejected
from .voc import VOC_LAYOUT

logger = logging.getLogger(__name__)
LAYOUTS = (COCO_LAYOUT, VOC_LAYOUT, HF_DISK_LAYOUT, HF_IMAGEFOLDER_LAYOUT)  # checked in this order


def detect_layout(data_dir: str | Path) -> Layout:
    """The first layout in :data:`LAYOUTS` that ``data_dir`` matches.

    Raises:
        ValueError: ``data_dir`` is not a folder or matches no layout; the message lists what was looked for.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"Dataset folder {root} does not exist or is not a folder.")
    for layout in LAYOUTS:
        if layout.matches(root):
            return layout
    looked_for = "; ".join(f"{layout.name}: {layout.looks_for}" for layout in LAYOUTS)
    raise ValueError(f"{root} is not a dataset layout DeTR-Lite recognises. Looked for {looked_for}.")


def available_splits(data_dir: str | Path) -> list[str]:
    """The split names a dataset folder holds (e.g. ``["train", "val"]``)."""
    return detect_layout(data_dir).splits(Path(data_dir))


def _read(root: Path, split: str) -> DetectionDataset:
    layout = detect_layout(root)
    splits = layout.splits(root)
    if split not in splits:
        raise ValueError(
            f"Split {split!r} not found in {layout.name} dataset {root}: expected {layout.split_path(root, split)}. "
            f"Available splits: {', '.join(splits)}."
        )
    return layout.read(root, split)


def load_detection_dataset(
    data_dir: str | Path, split: str, transform: Callable[[Sample], Sample] | None = None
) -> DetectionDataset:
    """Reads one split of a COCO, Pascal VOC or Hugging Face dataset folder, recognised automatically.

    Problems in the data (see :mod:`detr_lite.data.problems`) are repaired or dropped and counted in
    one logged warning; the dataset's ``problems`` lists them.

    Args:
        data_dir: The dataset's root folder, in one of the layouts of :data:`LAYOUTS`.
        split: The split's name, e.g. ``"train"`` or ``"val2017"``.
        transform: Applied to every sample, e.g. :func:`detr_lite.data.transforms.train_transforms`.

    Returns:
        The split as a :class:`DetectionDataset` of internal samples.

    Raises:
        ValueError: The layout is not recognised, or the split is missing (the message names the
            file or folder that would hold it and the splits that exist).
        DatasetError: (a ValueError) The split has problems that must be fixed first; the message
            names each file and field.
    """
    dataset = _read(Path(data_dir), split)
    raise_if_rejected(dataset.problems)
    if dataset.problems:
        counts = ", ".join(f"{count} {action}" for action, count in count_actions(dataset.problems).items())
        logger.warning("%s, split %r: %s (boxes, annotations or unreadable images). `python "
                       "scripts/validate_dataset.py --data_dir %s --split %s` lists each one.",
                       data_dir, split, counts, data_dir, split)
    dataset.transform = transform
    return dataset


def find_problems(data_dir: str | Path, split: str) -> list[DataProblem]:
    """Every problem of one split: what its reader finds, then each image file that does not fully decode.

    This is what ``scripts/validate_dataset.py`` reports; it raises only when the layout or split is
    not found (ValueError, as :func:`load_detection_dataset`).
    """
    try:
        dataset = _read(Path(data_dir), split)
    except DatasetError as error:
        return error.problems  # the annotations cannot be read: there are no images to check
    problems = list(dataset.problems)
    for index in range(len(dataset)):
        try:
            dataset.load_image(index)
        except BadImageError as error:
            problems.append(error.problem)
    return problems
