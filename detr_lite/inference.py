"""Run a detector over a dataset split and collect COCO-format results (shared by training and evaluate.py)."""

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .data import BadImageReport, DetectionCollator, DetectionDataset, SkipBadImages, detect_layout
from .data.voc import VOC_LAYOUT
from .evaluation import coco_evaluate, duplicate_statistics, predictions_to_coco, voc_map50
from .modeling_detr_lite import mask_if_padded


@torch.inference_mode()
def predict_dataset(
    model: torch.nn.Module,
    image_processor,
    dataset: DetectionDataset,
    batch_size: int = 8,
    num_workers: int = 0,
    indices: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    show_progress: bool = True,
    bad_images: BadImageReport | None = None,
) -> list[dict]:
    """COCO result dicts (`image_id`, dataset `category_id`, `bbox` xywh, `score`) for every query of every image.

    Args:
        model: a `DeTRLiteForObjectDetection` (unwrapped; evaluation needs no gradient synchronisation).
        image_processor: the model's `DeTRLiteImageProcessor`; boxes come back in original-image pixels.
        dataset: the split, without training augmentation.
        indices: the subset of images to run (e.g. this process's shard); None for all.
        autocast_dtype: run the forward pass under autocast (bf16/fp16) on the model's device.
        bad_images: what to do with unreadable images (default: skip each with one warning); they get no
            predictions, so their objects count as missed.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    bad_images = bad_images or BadImageReport()
    subset = SkipBadImages(dataset if indices is None else Subset(dataset, list(indices)), replace=False)
    loader = DataLoader(subset, batch_size=batch_size, num_workers=num_workers,
                        collate_fn=DetectionCollator(image_processor))
    was_training = model.training
    model.eval()
    results = []
    for batch in tqdm(loader, desc="evaluating", disable=not show_progress, leave=False):
        bad_images.record(batch["bad_images"])
        if "pixel_values" not in batch:
            continue  # every image of the batch was unreadable
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            pixel_mask = mask_if_padded(batch["pixel_mask"])  # checked on the host, before the transfer
            outputs = model(pixel_values=batch["pixel_values"].to(device),
                            pixel_mask=None if pixel_mask is None else pixel_mask.to(device))
        sizes = torch.stack([label["orig_size"] for label in batch["labels"]])
        detections = image_processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)
        image_ids = [int(label["image_id"]) for label in batch["labels"]]
        results.extend(predictions_to_coco(detections, image_ids, dataset.label_to_category_id))
    model.train(was_training)
    return results


def score_predictions(dataset: DetectionDataset, predictions: list[dict], data_dir: str | Path | None) -> dict:
    """The 12 COCO numbers and per-class AP, the duplicate statistics of the detections scoring 0.5 or more
    (`duplicate_rate`: see `duplicate_statistics`); for Pascal VOC data (or any with `difficult` objects) also
    VOC's mAP@0.5 under `VOC_mAP50`. `data_dir` is None for a dataset that has no folder (a Hub dataset)."""
    ground_truth = dataset.to_coco_dict()
    metrics = coco_evaluate(ground_truth, predictions)
    metrics.update(duplicate_statistics(predictions))
    is_voc = ((data_dir is not None and detect_layout(data_dir) is VOC_LAYOUT)
              or any(record.difficult.any() for record in dataset.records))
    if is_voc:
        metrics["VOC_mAP50"] = voc_map50(ground_truth, predictions)
    return metrics
