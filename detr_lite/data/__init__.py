"""Training-side data: dataset readers and writers, DETR augmentation, batching.

Every dataset yields the same internal sample (see :mod:`detr_lite.data.base`), whatever its layout.
"""

from .bad_images import BadImageReport, SkipBadImages
from .base import BadImageError, DetectionDataset, ImageRecord, Sample
from .cache import DEFAULT_MEMORY_LIMIT, DecodedImageCache, cached_size
from .collate import DetectionCollator
from .datasets import LAYOUTS, available_splits, detect_layout, find_problems, load_detection_dataset
from .problems import DataProblem, DatasetError
from .transforms import (
    Compose,
    RandomHorizontalFlip,
    RandomResize,
    RandomSelect,
    RandomSizeCrop,
    SeededAugmentation,
    eval_transforms,
    train_transforms,
)
from .writers import WRITERS, write_coco, write_hf, write_voc

__all__ = [
    "DEFAULT_MEMORY_LIMIT",
    "DecodedImageCache",
    "cached_size",
    "LAYOUTS",
    "WRITERS",
    "BadImageError",
    "BadImageReport",
    "Compose",
    "DataProblem",
    "DatasetError",
    "DetectionCollator",
    "DetectionDataset",
    "ImageRecord",
    "RandomHorizontalFlip",
    "RandomResize",
    "RandomSelect",
    "RandomSizeCrop",
    "Sample",
    "SeededAugmentation",
    "SkipBadImages",
    "available_splits",
    "detect_layout",
    "eval_transforms",
    "find_problems",
    "load_detection_dataset",
    "train_transforms",
    "write_coco",
    "write_hf",
    "write_voc",
]
