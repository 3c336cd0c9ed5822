"""Unreadable images during training and evaluation: reported, skipped or fatal, never a crash mid-epoch.

DataLoader workers decode images; a worker that meets an unreadable one (missing, empty, truncated,
not an image) does not raise. :class:`SkipBadImages` reports it inside the sample as a
:class:`~detr_lite.data.problems.DataProblem`, the collator carries the reports in the batch
(``batch["bad_images"]``), and the main process applies the policy with :class:`BadImageReport`:
one warning per file and a count (``skip``), or an error naming the file (``error``). An image over
the pixel limit always stops the run: skipping it would hide a limit set too low for the data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from .base import BadImageError, Sample
from .problems import DataProblem

logger = logging.getLogger(__name__)
OnBadSample = Literal["skip", "error"]


class SkipBadImages(Dataset):
    """A dataset view whose samples carry reports of unreadable images instead of raising.

    Sample ``i`` is ``dataset[i]`` with a ``"bad_images"`` list (empty when the image was readable).

    Args:
        dataset: Any map-style dataset of internal samples (e.g. a ``SeededAugmentation``).
        replace: Training: an unreadable sample is replaced by the next readable one (``i + 1``,
            ``i + 2``, ..., wrapping), deterministically, so batches keep their size, a batch is never
            empty, and a resumed run sees the same samples. Evaluation (False): the sample is only
            ``{"bad_images": [...]}`` and the collator leaves it out, so no image is predicted twice.
    """

    def __init__(self, dataset: Dataset, replace: bool) -> None:
        self.dataset, self.replace = dataset, replace

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        bad: list[DataProblem] = []
        for offset in range(len(self.dataset) if self.replace else 1):
            try:
                return {**self.dataset[(index + offset) % len(self.dataset)], "bad_images": bad}
            except BadImageError as error:
                bad.append(error.problem)
                if error.problem.action == "rejected":
                    return {"bad_images": bad}
        if self.replace:
            folder = str(Path(bad[0].file).parent)
            bad.append(DataProblem(folder, "images", f"none of the {len(bad)} images can be read", "rejected"))
        return {"bad_images": bad}


class BadImageReport:
    """The main process's record of unreadable images: one warning per file, or an error.

    Args:
        on_bad_sample: ``"skip"``: warn once per file and go on. ``"error"``: raise at the first.

    Raises (from :meth:`record`):
        BadImageError: With ``"error"``, or for a ``rejected`` problem (over the pixel limit, or no
            readable image at all) whatever the policy; the message names the file and what to do.
    """

    def __init__(self, on_bad_sample: OnBadSample = "skip") -> None:
        if on_bad_sample not in ("skip", "error"):
            raise ValueError(f"on_bad_sample must be 'skip' or 'error', got {on_bad_sample!r}.")
        self.on_bad_sample = on_bad_sample
        self.skipped: dict[str, DataProblem] = {}  # file → its first problem, in the order met

    def record(self, problems: Iterable[DataProblem]) -> None:
        for problem in problems:
            if problem.action == "rejected":
                raise BadImageError(problem)
            if self.on_bad_sample == "error":
                raise BadImageError(problem, "--on_bad_sample error stops at the first unreadable image: fix or "
                                    "remove it (scripts/validate_dataset.py lists them all), or use "
                                    "--on_bad_sample skip to go on without it.")
            if problem.file not in self.skipped:
                self.skipped[problem.file] = problem
                logger.warning("Skipping unreadable image %s: %s", problem.file, problem.message)
