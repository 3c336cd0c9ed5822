"""Batches internal samples for the model: a DataLoader ``collate_fn`` around the image processor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers.image_processing_utils import BatchFeature

from .base import Sample


def coco_target(sample: Sample) -> dict[str, Any]:
    """An internal sample's boxes as the processor's COCO detection target.

    ``category_id`` is the *contiguous* label: the training processor is built with
    ``label2id=None``, which uses ids as class indices. Crowd boxes are passed with their flag;
    the processor leaves them out of the training targets, as DETR does.
    """
    return {
        "image_id": int(sample["image_id"]),
        "annotations": [
            {
                "bbox": [float(v) for v in box],
                "category_id": int(label),
                "area": float(box[2] * box[3]),
                "iscrowd": int(crowd),
            }
            for box, label, crowd in zip(sample["boxes"], sample["class_labels"], sample["iscrowd"])
        ],
    }


class DetectionCollator:
    """``collate_fn`` turning a list of internal samples into the processor's batch.

    Samples from :class:`~detr_lite.data.bad_images.SkipBadImages` carry reports of unreadable images;
    the collator gathers them into ``bad_images`` and leaves out the samples that have no image.

    Args:
        image_processor: A ``DeTRLiteImageProcessor`` built with ``label2id=None``.

    Returns (when called): the processor's ``BatchFeature`` with ``pixel_values`` (B, 3, S, S),
    ``pixel_mask`` (B, S, S) and ``labels`` (B dicts with ``class_labels`` and normalised
    cxcywh ``boxes``), plus ``bad_images`` (a list of ``DataProblem``). When no sample has an image,
    the batch holds only ``bad_images``.
    """

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, samples: Sequence[Sample]) -> BatchFeature:
        readable = [sample for sample in samples if "image" in sample]
        batch = BatchFeature()
        if readable:
            batch = self.image_processor(
                images=[sample["image"] for sample in readable],
                annotations=[coco_target(sample) for sample in readable],
                return_tensors="pt",
            )
        batch["bad_images"] = [problem for sample in samples for problem in sample.get("bad_images", [])]
        return batch
