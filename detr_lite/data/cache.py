"""Training images decoded once and kept in memory, shrunk to the model's canvas (small datasets, CPU training).

Decoding dominates a CPU data pipeline: a 640x480 JPEG or a PNG takes longer to decode than to augment and
normalise, and every epoch decodes every image again, in workers that compete with the training step for the
same cores. :class:`DecodedImageCache` decodes each image once, in parallel, shrinks it so that its longest side
is the canvas size (the processor would shrink it to that anyway; JPEGs decode at a reduced scale directly),
and serves samples from memory with their boxes scaled to match. Augmentation then runs on the small copy.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .base import BadImageError, DetectionDataset, Sample, load_rgb
from .problems import DataProblem

DEFAULT_MEMORY_LIMIT = 4 * 2**30  # bytes of RGB pixels at the canvas size; larger datasets are read from disk


def cached_size(dataset: DetectionDataset, max_side: int) -> int:
    """Bytes the cache would hold: each image's RGB pixels, shrunk to a longest side of at most ``max_side``."""
    total = 0
    for record in dataset.records:
        scale = min(1.0, max_side / max(record.width, record.height, 1))
        total += 3 * round(record.width * scale) * round(record.height * scale)
    return total


class _Decode(Dataset):
    """Image ``i`` of a dataset, shrunk, as a uint8 array with its scale, or the problem that stopped it."""

    def __init__(self, dataset: DetectionDataset, max_side: int) -> None:
        self.dataset, self.max_side = dataset, max_side

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[np.ndarray, tuple[float, float]] | DataProblem:
        record = self.dataset.records[index]
        try:
            image = load_rgb(self.dataset.image_source(index), self.dataset.image_name(record), self.max_side)
        except BadImageError as error:
            return error.problem
        return np.array(image), (image.width / record.width, image.height / record.height)


def _unchanged(entry):
    return entry  # the DataLoader would turn the arrays into tensors


class DecodedImageCache(Dataset):
    """A training split served from memory: images decoded once and shrunk to the canvas (see the module doc).

    Samples are those of ``dataset`` with the small image and boxes scaled to it; an image that could not
    be decoded raises the same :class:`BadImageError` on every access, as the dataset itself would.

    Args:
        dataset: The split, without a transform (augmentation wraps the cache).
        max_side: The model's canvas size.
        num_workers: Processes that decode in parallel (default: one per core).
        show_progress: Show a progress bar while decoding.
    """

    def __init__(self, dataset: DetectionDataset, max_side: int, num_workers: int | None = None,
                 show_progress: bool = True) -> None:
        self.dataset = dataset
        workers = (os.cpu_count() or 1) if num_workers is None else num_workers
        loader = DataLoader(_Decode(dataset, max_side), batch_size=None, num_workers=workers if workers > 1 else 0,
                            collate_fn=_unchanged)
        self._entries = list(tqdm(loader, desc="decoding images", total=len(dataset), disable=not show_progress,
                                  leave=False))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        entry = self._entries[index]
        if isinstance(entry, DataProblem):
            raise BadImageError(entry)
        pixels, scale = entry
        return self.dataset.sample(index, Image.fromarray(pixels), scale)
