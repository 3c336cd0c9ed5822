"""DETR's training augmentation on internal samples (PIL image + COCO xywh pixel boxes).

The recipe of DETR (Carion et al. 2020; facebookresearch/detr ``datasets/transforms.py``), written
afresh for DeTR-Lite's fixed canvas (numbers below are for ``image_size=640``)::

    horizontal flip (p=0.5), then with p=0.5 either
        resize (longest side in 384..640 step 32) onto the canvas
    or  resize (longest side in {400, 500, 600}) → random crop (sides 384..600) →
        resize (longest side in 384..640 step 32) onto the canvas

Scale augmentation at a fixed canvas: DETR resizes each image to a random size and pads the batch,
so objects appear at different pixel sizes. DeTR-Lite's image processor resizes every image's
longest side to 640, which would undo a plain resize. So :class:`RandomResize` with a
``canvas_size`` resizes the image to longest side ``s`` and pastes it at the top left of a canvas
with the image's aspect ratio and longest side 640 (bottom/right fill, where DETR's batch padding
goes), filled with the ImageNet mean colour (about 0 after normalisation, like the processor's own
padding). The processor then keeps the size and objects really are ``s / 640`` of their eval-time
size. The only difference from DETR: the fill is marked as real pixels in ``pixel_mask``. The
scales span 0.6..1.0 of the canvas, the ratio of DETR's 480..800.

Boxes follow the pixels exactly; after every geometric step they are clipped to the image and boxes
left with zero width or height are dropped together with their labels, iscrowd and difficult
flags (as DETR's crop does).

Randomness: each transform draws from the ``random.Random`` passed as ``rng``, else from Python's
global ``random`` module. Training wraps the dataset in :class:`SeededAugmentation`, which reseeds one
rng per sample from (seed, epoch, index), so augmentation is reproducible across workers and resumes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .base import Sample, clip_boxes, select_boxes

Transform = Callable[[Sample], Sample]

IMAGENET_MEAN_RGB = (124, 116, 104)  # ImageNet mean × 255: the canvas fill normalises to ≈ 0
_DETR_CANVAS = 640  # DETR's crop-branch sizes below are in pixels at this canvas size


def _random(rng: random.Random | None) -> random.Random:
    return random if rng is None else rng  # the module has the same methods as a Random


def _with_geometry(sample: Sample, image: Image.Image, boxes: np.ndarray) -> Sample:
    """``sample`` with a new image and (n, 4) float64 xywh boxes, clipped; empty boxes dropped."""
    boxes, keep = clip_boxes(boxes, image.width, image.height)
    boxes = boxes.astype(np.float32)
    keep &= (boxes[:, 2] > 0) & (boxes[:, 3] > 0)  # float32 rounding may empty a sliver
    return select_boxes({**sample, "image": image, "boxes": boxes}, keep)


def _long_side_size(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(width, height) scaled so that the longest side is ``long_side``, aspect ratio kept."""
    width, height = size
    ratio = long_side / max(width, height)
    return max(1, round(width * ratio)), max(1, round(height * ratio))


class Compose:
    """Applies transforms one after the other."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for transform in self.transforms:
            sample = transform(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomSelect:
    """Applies ``first`` with probability ``p``, otherwise ``second`` (DETR's RandomSelect)."""

    def __init__(self, first: Transform, second: Transform, p: float = 0.5, rng: random.Random | None = None) -> None:
        self.first, self.second, self.p, self.rng = first, second, p, rng

    def __call__(self, sample: Sample) -> Sample:
        return self.first(sample) if _random(self.rng).random() < self.p else self.second(sample)


class RandomHorizontalFlip:
    """Mirrors the image with probability ``p``; a box's x becomes ``W - x - w``."""

    def __init__(self, p: float = 0.5, rng: random.Random | None = None) -> None:
        self.p, self.rng = p, rng

    def __call__(self, sample: Sample) -> Sample:
        if _random(self.rng).random() >= self.p:
            return sample
        image = sample["image"]
        boxes = sample["boxes"].astype(np.float64)
        boxes[:, 0] = image.width - boxes[:, 0] - boxes[:, 2]
        return _with_geometry(sample, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), boxes)


class RandomResize:
    """Resizes so the longest side is a random choice of ``scales``, aspect ratio kept.

    With ``canvas_size``, the resized image is pasted at the top left of a mean-colour canvas of
    the image's aspect ratio and longest side ``canvas_size`` (see the module docstring), so the
    processor's letterbox resize keeps the scale.
    """

    def __init__(
        self, scales: Sequence[int], canvas_size: int | None = None, rng: random.Random | None = None
    ) -> None:
        if not scales or min(scales) < 1:
            raise ValueError(f"RandomResize needs positive scales, got {list(scales)}.")
        if canvas_size is not None and max(scales) > canvas_size:
            raise ValueError(f"RandomResize scales must fit the {canvas_size} canvas, got up to {max(scales)}.")
        self.scales, self.canvas_size, self.rng = list(scales), canvas_size, rng

    def __call__(self, sample: Sample) -> Sample:
        image = sample["image"]
        resized = image.resize(_long_side_size(image.size, _random(self.rng).choice(self.scales)), Image.BILINEAR)
        scale = np.array([resized.width / image.width, resized.height / image.height] * 2)
        if self.canvas_size is not None:
            canvas = Image.new("RGB", _long_side_size(image.size, self.canvas_size), IMAGENET_MEAN_RGB)
            canvas.paste(resized, (0, 0))
            resized = canvas
        return _with_geometry(sample, resized, sample["boxes"].astype(np.float64) * scale)


class RandomSizeCrop:
    """Crops a random region with sides in [min_size, max_size] (clamped to the image), as DETR does."""

    def __init__(self, min_size: int, max_size: int, rng: random.Random | None = None) -> None:
        if not 1 <= min_size <= max_size:
            raise ValueError(f"RandomSizeCrop needs 1 <= min_size <= max_size, got {min_size} and {max_size}.")
        self.min_size, self.max_size, self.rng = min_size, max_size, rng

    def __call__(self, sample: Sample) -> Sample:
        rng = _random(self.rng)
        image = sample["image"]
        width = rng.randint(min(self.min_size, image.width), min(self.max_size, image.width))
        height = rng.randint(min(self.min_size, image.height), min(self.max_size, image.height))
        left, top = rng.randint(0, image.width - width), rng.randint(0, image.height - height)
        boxes = sample["boxes"].astype(np.float64) - np.array([left, top, 0, 0])
        return _with_geometry(sample, image.crop((left, top, left + width, top + height)), boxes)


def train_transforms(image_size: int = 640, rng: random.Random | None = None, policy: str = "detr") -> Compose:
    """DETR's training augmentation for a ``image_size`` canvas (see the module docstring).

    Args:
        image_size: The image processor's canvas size.
        rng: Source of randomness; None uses the global ``random`` module.
        policy: "detr" (flip + multi-scale + random crop) or "flip" (horizontal flip only: for very short
            runs, where scale and crop augmentation slow learning more than they help).

    Returns:
        A transform from an internal sample to an augmented internal sample whose longest side is
        ``image_size``.
    """
    if policy == "flip":
        return Compose([RandomHorizontalFlip(rng=rng)])
    if policy != "detr":
        raise ValueError(f"augmentation policy must be 'detr' or 'flip', got {policy!r}.")
    scales = [round(image_size * (0.6 + 0.05 * step)) for step in range(9)]  # 384..640 step 32 at 640
    k = image_size / _DETR_CANVAS
    pre_crop = [round(size * k) for size in (400, 500, 600)]
    crop_branch = Compose(
        [
            RandomResize(pre_crop, rng=rng),
            RandomSizeCrop(round(384 * k), round(600 * k), rng=rng),
            RandomResize(scales, canvas_size=image_size, rng=rng),
        ]
    )
    return Compose(
        [
            RandomHorizontalFlip(rng=rng),
            RandomSelect(RandomResize(scales, canvas_size=image_size, rng=rng), crop_branch, rng=rng),
        ]
    )


def eval_transforms() -> Compose:
    """The evaluation transform: none (the image processor does all resizing)."""
    return Compose([])


class SeededAugmentation(Dataset):
    """A dataset view whose augmentation of sample ``i`` in epoch ``e`` is drawn from an RNG seeded by
    ``(seed, e, i)``.

    Augmentation then depends on nothing else: not on the DataLoader worker, not on batches prefetched
    before a checkpoint, not on the process count. A run resumed mid-epoch sees exactly the samples
    the uninterrupted run would have seen. Call :meth:`set_epoch` before each epoch (with workers that
    are re-created per epoch, so they see it).
    """

    def __init__(self, dataset: Dataset, transform_factory: Callable[[random.Random], Callable[[Sample], Sample]],
                 seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0
        self._rng = random.Random()
        self._transform = transform_factory(self._rng)  # every step of it draws from self._rng

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        self._rng.seed(f"{self.seed}:{self.epoch}:{index}")
        return self._transform(self.dataset[index])
