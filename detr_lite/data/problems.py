"""What can be wrong with a dataset, and what DeTR-Lite does about each thing.

Readers record every problem they meet as a :class:`DataProblem` instead of raising at the first
one, so that ``scripts/validate_dataset.py`` can report all of them at once through the same code
that training uses. :func:`detr_lite.data.load_detection_dataset` then raises a
:class:`DatasetError` when any problem is ``rejected`` and logs a count of the others.

Actions:
- ``clipped``: a box partly outside the image is clipped to it and kept.
- ``dropped``: an annotation or listing that cannot be used (no area, not finite, duplicate id,
  pointing to a missing image, an image or split line listed twice) is ignored.
- ``skipped``: an image file that cannot be decoded (missing, empty, truncated, not an image) is left
  out of training and evaluation, or stops the run with ``--on_bad_sample error``.
- ``rejected``: the split cannot be used until the file is fixed (unreadable annotation file, XML
  that does not parse, unknown category, a missing or malformed field, an image over the pixel limit).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

Action = Literal["clipped", "dropped", "skipped", "rejected"]
_SHOWN_IN_ERRORS = 5  # a DatasetError lists this many rejected problems, then a count


@dataclass(frozen=True)
class DataProblem:
    """One thing wrong with a dataset file."""

    file: str  # the file at fault: an annotation file, a VOC XML, or an image
    field: str  # where in it, e.g. "annotations[3].bbox", "object[1]/bndbox/xmin", "image" for the pixels
    message: str  # what is wrong, in words
    action: Action  # what DeTR-Lite does about it (see the module docstring)

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}"


class DatasetError(ValueError):
    """A dataset split that cannot be used as it is; ``problems`` holds every problem found in it."""

    def __init__(self, problems: list[DataProblem]) -> None:
        self.problems = problems
        rejected = [problem for problem in problems if problem.action == "rejected"]
        lines = [f"  {problem}" for problem in rejected[:_SHOWN_IN_ERRORS]]
        if len(rejected) > _SHOWN_IN_ERRORS:
            lines.append(f"  ... and {len(rejected) - _SHOWN_IN_ERRORS} more")
        super().__init__(
            f"The dataset has {len(rejected)} problem(s) that must be fixed before it can be used:\n"
            + "\n".join(lines)
            + "\nscripts/validate_dataset.py --data_dir DIR lists every problem of every split."
        )


def raise_if_rejected(problems: list[DataProblem]) -> None:
    """Raises :class:`DatasetError` when any of ``problems`` is ``rejected``."""
    if any(problem.action == "rejected" for problem in problems):
        raise DatasetError(problems)


def count_actions(problems: Iterable[DataProblem]) -> dict[str, int]:
    """How many problems have each action, e.g. ``{"clipped": 3, "dropped": 1}``."""
    return dict(Counter(problem.action for problem in problems))


def is_xywh(value: Any) -> bool:
    """Whether ``value`` is a COCO box: a list of 4 numbers (NaN and inf allowed; repair drops them)."""
    return (
        isinstance(value, (list, tuple))
        and len(value) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def describe_box(box: Iterable[float]) -> str:
    """A box's numbers as the annotation file wrote them, for messages: ``[1, 2.5, nan, 4]``."""
    return "[" + ", ".join(f"{float(v):g}" for v in box) + "]"
