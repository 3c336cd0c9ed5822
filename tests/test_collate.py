"""DetectionCollator (detr_lite/data/collate.py): internal samples → the image processor's batch."""

import numpy as np
import torch
from PIL import Image

from detr_lite.data import DetectionCollator
from detr_lite.image_processing_detr_lite import DeTRLiteImageProcessor


def sample(image_id: int, size: tuple[int, int], boxes: list, labels: list, iscrowd: list) -> dict:
    return {
        "image_id": image_id,
        "image": Image.new("RGB", size, (90, 120, 150)),
        "boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4),
        "class_labels": np.array(labels, dtype=np.int64),
        "iscrowd": np.array(iscrowd, dtype=np.int64),
        "difficult": np.zeros(len(labels), dtype=bool),
    }


def test_collator_batches_images_and_contiguous_labels_through_the_processor():
    collate = DetectionCollator(DeTRLiteImageProcessor(size=64, label2id=None))
    batch = collate(
        [
            sample(7, (100, 50), [[0, 0, 50, 25], [50, 10, 10, 10]], [2, 0], [0, 1]),
            sample(9, (40, 80), [], [], []),
        ]
    )

    assert batch["pixel_values"].shape == (2, 3, 64, 64) and batch["pixel_mask"].shape == (2, 64, 64)
    first, second = batch["labels"]
    assert first["class_labels"].tolist() == [2]  # the crowd box is no training target
    torch.testing.assert_close(first["boxes"], torch.tensor([[0.25, 0.25, 0.5, 0.5]]))
    assert int(first["image_id"]) == 7 and int(second["image_id"]) == 9
    assert second["boxes"].shape == (0, 4) and second["class_labels"].shape == (0,)
