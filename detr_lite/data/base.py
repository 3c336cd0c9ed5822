"""The internal sample format shared by every reader, transform, writer and the collator.

A sample is a dict::

    {"image_id": int, "image": PIL.Image (RGB, EXIF orientation applied),
     "boxes": float32 (n, 4) COCO [x, y, w, h] in absolute pixels,
     "class_labels": int64 (n,) contiguous 0..K-1, "iscrowd": int64 (n,), "difficult": bool (n,)}

Readers parse annotations into :class:`ImageRecord`s (no pixels) and wrap them in a
:class:`DetectionDataset`, which opens the image file only in ``__getitem__`` so that DataLoader
workers do the decoding.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image
from torch.utils.data import Dataset

from ..image_processing_detr_lite import _pil_to_array
from .problems import Action, DataProblem, describe_box

Sample = dict[str, Any]
ImageSource = str | Path | io.BytesIO

PER_BOX_KEYS = ("boxes", "class_labels", "iscrowd", "difficult")  # arrays aligned with the boxes
_ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass
class ImageRecord:
    """One image's ground truth as a reader parsed it; arrays are aligned with ``boxes``."""

    image_id: int
    file_name: str  # relative to the dataset's image folder (HF: the image's own name)
    width: int  # upright (EXIF-applied) size, in pixels
    height: int
    boxes: np.ndarray  # (n, 4) float32 COCO xywh, absolute pixels
    class_labels: np.ndarray  # (n,) int64 contiguous labels
    iscrowd: np.ndarray  # (n,) int64
    difficult: np.ndarray  # (n,) bool
    area: np.ndarray  # (n,) float32: the source's area (COCO: segment area), else w * h


def make_record(
    image_id: int,
    file_name: str,
    width: int,
    height: int,
    boxes: Sequence[Sequence[float]],
    class_labels: Sequence[int],
    iscrowd: Sequence[int] | None = None,
    difficult: Sequence[bool] | None = None,
    area: Sequence[float] | None = None,
) -> ImageRecord:
    """Builds an :class:`ImageRecord` from plain lists; missing per-box fields default to 0/False/w*h."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    n = len(boxes)
    return ImageRecord(
        image_id=int(image_id),
        file_name=str(file_name),
        width=int(width),
        height=int(height),
        boxes=boxes,
        class_labels=np.asarray(class_labels, dtype=np.int64).reshape(n),
        iscrowd=np.zeros(n, np.int64) if iscrowd is None else np.asarray(iscrowd, dtype=np.int64).reshape(n),
        difficult=np.zeros(n, bool) if difficult is None else np.asarray(difficult, dtype=bool).reshape(n),
        area=boxes[:, 2] * boxes[:, 3] if area is None else np.asarray(area, dtype=np.float32).reshape(n),
    )


def clip_boxes(boxes: np.ndarray, width: float, height: float) -> tuple[np.ndarray, np.ndarray]:
    """Clips xywh boxes to the image and says which ones still have an area.

    Args:
        boxes: (n, 4) COCO [x, y, w, h] boxes in pixels.
        width: Image width in pixels.
        height: Image height in pixels.

    Returns:
        The (n, 4) clipped boxes as float64 and a (n,) bool mask of those with w > 0 and h > 0
        (non-finite boxes are False). Callers drop the False rows, as DETR's crop does.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0 = np.clip(boxes[:, 0], 0, width)
    y0 = np.clip(boxes[:, 1], 0, height)
    x1 = np.clip(boxes[:, 0] + boxes[:, 2], 0, width)
    y1 = np.clip(boxes[:, 1] + boxes[:, 3], 0, height)
    clipped = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)
    keep = np.isfinite(boxes).all(axis=1) & (clipped[:, 2] > 0) & (clipped[:, 3] > 0)
    return clipped, keep


def select_boxes(sample: Sample, keep: np.ndarray) -> Sample:
    """Returns a copy of ``sample`` with only the ``keep`` rows of every per-box array."""
    return {key: value[keep] if key in PER_BOX_KEYS else value for key, value in sample.items()}


class BadImageError(ValueError):
    """An image file that cannot be used; ``problem`` names the file and says why (see :mod:`.problems`)."""

    def __init__(self, problem: DataProblem, advice: str = "") -> None:
        self.problem = problem
        super().__init__(f"{problem}. {advice}" if advice else str(problem))


def _is_empty(source: ImageSource) -> bool:
    return source.getbuffer().nbytes == 0 if isinstance(source, io.BytesIO) else Path(source).stat().st_size == 0


@contextmanager
def open_image(source: ImageSource, name: str) -> Iterator[Image.Image]:
    """Opens image ``name``; every way opening or decoding it inside the block fails becomes a :class:`BadImageError`.

    Over ``PIL.Image.MAX_IMAGE_PIXELS`` is an error (``rejected``), not Pillow's warning: Pillow only
    refuses at twice the limit, and a limit that is sometimes enforced is no limit.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                yield image
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        message = (f"more pixels than the limit of {Image.MAX_IMAGE_PIXELS:,} (a possible decompression bomb). "
                   "Raise the limit with --max_image_pixels if the image is genuine")
        raise BadImageError(DataProblem(name, "image", message, "rejected")) from error
    except FileNotFoundError as error:
        raise BadImageError(DataProblem(name, "image", "file not found", "skipped")) from error
    except (OSError, SyntaxError, EOFError, ValueError) as error:  # what Pillow raises for corrupt data
        message = "the file is empty (0 bytes)" if _is_empty(source) else f"cannot be decoded: {error}"
        raise BadImageError(DataProblem(name, "image", message, "skipped")) from error


def _name(source: ImageSource, name: str | None) -> str:
    return name or (str(source) if not isinstance(source, io.BytesIO) else "<in-memory image>")


def image_size(source: ImageSource, name: str | None = None) -> tuple[int, int]:
    """(width, height) of an image file as it appears upright, read from its header only.

    Raises:
        BadImageError: The file is missing, empty, not an image, or over the pixel limit; the error
            names the file (``name``, default the path).
    """
    with open_image(source, _name(source, name)) as image:
        width, height = image.size
        if image.getexif().get(ExifTags.Base.Orientation, 1) in _ROTATED_ORIENTATIONS:
            return height, width
        return width, height


def load_rgb(source: ImageSource, name: str | None = None, max_side: int | None = None) -> Image.Image:
    """Decodes an image file into an upright 8-bit RGB PIL image, converted as the image processor does
    (16-bit scaled, not clipped; palette transparency and alpha dropped; CMYK converted).

    With ``max_side``, an image whose longest side is larger comes back shrunk to that longest side
    (aspect ratio kept); a JPEG is then decoded at a reduced scale in the first place (Pillow's draft
    mode: the DCT scales by 1/2, 1/4 or 1/8, several times faster than a full decode).

    Raises:
        BadImageError: The file is missing, empty, truncated, not an image, or over the pixel limit;
            the error names the file (``name``, default the path).
    """
    with open_image(source, _name(source, name)) as image:
        if max_side and image.format == "JPEG" and max(image.size) > max_side:
            scale = max_side / max(image.size)
            image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
        rgb = Image.fromarray(_pil_to_array(image)).convert("RGB")
    if max_side and max(rgb.size) > max_side:
        scale = max_side / max(rgb.size)
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.BILINEAR)
    return rgb


class DetectionDataset(Dataset):
    """A detection split in the internal sample format (see the module docstring).

    Readers build it; users get it from :func:`detr_lite.data.load_detection_dataset`.

    Attributes:
        records: One :class:`ImageRecord` per image, boxes already clipped to the image.
        id2label: Contiguous label → class name.
        label_to_category_id: Contiguous label → the dataset's own category id (what
            :meth:`to_coco_dict` writes, and what evaluation maps predictions back to).
        problems: Every :class:`~detr_lite.data.problems.DataProblem` the reader found and how it
            was handled: clipped boxes, dropped boxes and listings, skipped images, rejections.
        transform: Optional callable applied to every sample (see :mod:`detr_lite.data.transforms`).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        id2label: dict[int, str],
        label_to_category_id: dict[int, int],
        image_root: str | Path | None = None,
        transform: Callable[[Sample], Sample] | None = None,
        problems: Sequence[DataProblem] = (),
    ) -> None:
        self.id2label = dict(id2label)
        self.label_to_category_id = dict(label_to_category_id)
        self.image_root = None if image_root is None else Path(image_root)
        self.transform = transform
        self.problems = list(problems)
        self.records = [self._repair(record) for record in self._unique(records)]

    @property
    def num_dropped_boxes(self) -> int:
        """Boxes dropped because they had no area inside the image or were not finite."""
        return sum(problem.action == "dropped" and problem.field.startswith("boxes[") for problem in self.problems)

    def _unique(self, records: Sequence[ImageRecord]) -> list[ImageRecord]:
        """Keeps the first record of each image id; later ones are dropped (an image listed twice)."""
        first: dict[int, ImageRecord] = {}
        for record in records:
            if record.image_id in first:
                message = f"image id {record.image_id} is listed again (first as {first[record.image_id].file_name})"
                self.problems.append(DataProblem(self.image_name(record), "image_id", message, "dropped"))
            else:
                first[record.image_id] = record
        return list(first.values())

    def _repair(self, record: ImageRecord) -> ImageRecord:
        """Clips boxes to the image and drops those left without area or not finite (each a problem)."""
        boxes, keep = clip_boxes(record.boxes, record.width, record.height)
        size = f"{record.width}x{record.height} image"
        for index, (before, after, kept) in enumerate(zip(record.boxes, boxes, keep)):
            if not kept:
                reason = "is not finite" if not np.isfinite(before).all() else f"has no area inside the {size}"
                self._problem(record, index, f"{describe_box(before)} {reason}", "dropped")
            elif not np.allclose(before, after):
                self._problem(record, index, f"{describe_box(before)} extends outside the {size}", "clipped")
        return replace(
            record,
            boxes=boxes[keep].astype(np.float32),
            class_labels=record.class_labels[keep],
            iscrowd=record.iscrowd[keep],
            difficult=record.difficult[keep],
            area=record.area[keep],
        )

    def _problem(self, record: ImageRecord, index: int, message: str, action: Action) -> None:
        self.problems.append(DataProblem(self.image_name(record), f"boxes[{index}]", message, action))

    def image_name(self, record: ImageRecord) -> str:
        """How messages name a record's image: its path, or (in-memory images) its file name."""
        return record.file_name if self.image_root is None else str(self.image_root / record.file_name)

    @property
    def image_ids(self) -> list[int]:
        """The images' ids, in dataset order."""
        return [record.image_id for record in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        return self.sample(index, self.load_image(index))

    def sample(self, index: int, image: Image.Image, scale: tuple[float, float] = (1.0, 1.0)) -> Sample:
        """Sample ``index`` with ``image``, its boxes scaled by ``scale`` (x, y) for a resized copy of the image."""
        record = self.records[index]
        sample = {
            "image_id": record.image_id,
            "image": image,
            "boxes": record.boxes * np.array(scale * 2, dtype=np.float32),
            "class_labels": record.class_labels.copy(),
            "iscrowd": record.iscrowd.copy(),
            "difficult": record.difficult.copy(),
        }
        return sample if self.transform is None else self.transform(sample)

    def load_image(self, index: int) -> Image.Image:
        """Image ``index`` decoded to upright RGB; raises :class:`BadImageError` naming the file."""
        return load_rgb(self.image_source(index), self.image_name(self.records[index]))

    def image_source(self, index: int) -> ImageSource:
        """Where image ``index``'s encoded bytes are: a path, or an in-memory file."""
        return self.image_root / self.records[index].file_name

    def read_image_bytes(self, index: int) -> bytes:
        """Image ``index``'s encoded file, unchanged (writers copy it without re-encoding)."""
        source = self.image_source(index)
        return source.getvalue() if isinstance(source, io.BytesIO) else Path(source).read_bytes()

    def to_coco_dict(self) -> dict[str, Any]:
        """The split's ground truth as a COCO detection dict, with the dataset's own category ids.

        Difficult objects get ``"iscrowd": 1`` and ``"ignore": 1``: pycocotools' COCOeval treats
        crowd boxes as ignore regions (matching them neither rewards nor penalises a detection),
        which is how VOC's evaluation treats difficult objects. Loads in ``pycocotools.coco.COCO``.
        """
        images, annotations = [], []
        for record in self.records:
            images.append(
                {"id": record.image_id, "file_name": record.file_name, "width": record.width, "height": record.height}
            )
            for box, label, crowd, difficult, area in zip(
                record.boxes, record.class_labels, record.iscrowd, record.difficult, record.area
            ):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": record.image_id,
                        "category_id": self.label_to_category_id[int(label)],
                        "bbox": [float(v) for v in box],
                        "area": float(area),
                        "iscrowd": int(crowd or difficult),
                        "ignore": int(difficult),
                    }
                )
        categories = [
            {"id": self.label_to_category_id[label], "name": name} for label, name in sorted(self.id2label.items())
        ]
        return {"images": images, "annotations": annotations, "categories": categories}


@dataclass(frozen=True)
class Layout:
    """How one on-disk layout is recognised and read (see :mod:`detr_lite.data.datasets`)."""

    name: str
    looks_for: str  # what `matches` checks, for error messages, e.g. "annotations/instances_{split}.json"
    matches: Callable[[Path], bool]
    splits: Callable[[Path], list[str]]
    split_path: Callable[[Path, str], Path]  # the file or folder that holds a split
    read: Callable[[Path, str], DetectionDataset]
