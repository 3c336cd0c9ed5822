"""Bounding-box utilities: format conversion, IoU and generalized IoU.

Plain tensor functions after DETR's `util/box_ops.py` (Carion et al. 2020) and the GIoU paper
(Rezatofighi et al. 2019), written afresh. `cxcywh` is (center x, center y, width, height) and
`xyxy` is (x0, y0, x1, y1). Everything is computed in at least float32: in bf16 the areas of
small normalised boxes lose most of their precision.

Hub rule: imported by `loss_detr_lite.py`, so torch only.
"""

import torch
from torch import Tensor

# Clamping denominators at the smallest normal float32 leaves every defined IoU/GIoU unchanged
# and turns the 0/0 of two aligned zero-area boxes into 0 instead of NaN, so one degenerate pair
# cannot poison a whole Hungarian cost matrix or the gradients.
_TINY = torch.finfo(torch.float32).tiny


def _upcast(boxes: Tensor) -> Tensor:
    """Half and bfloat16 go to float32; float32 and float64 are kept."""
    return boxes if boxes.dtype in (torch.float32, torch.float64) else boxes.float()


def center_to_corners(boxes: Tensor) -> Tensor:
    """Convert (..., 4) cxcywh boxes to (..., 4) xyxy."""
    center, size = _upcast(boxes).split(2, dim=-1)
    return torch.cat([center - 0.5 * size, center + 0.5 * size], dim=-1)


def corners_to_center(boxes: Tensor) -> Tensor:
    """Convert (..., 4) xyxy boxes to (..., 4) cxcywh."""
    top_left, bottom_right = _upcast(boxes).split(2, dim=-1)
    return torch.cat([0.5 * (top_left + bottom_right), bottom_right - top_left], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of (..., 4) xyxy boxes, shape (...)."""
    boxes = _upcast(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _areas(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Intersection, union and enclosing-box area of broadcast (..., 4) xyxy boxes, each (...).

    Elementwise: the pairwise functions broadcast (N, 1, 4) against (1, M, 4), the paired one
    passes (N, 4) twice, so both share this single implementation.
    """
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    overlap = torch.minimum(boxes1[..., 2:], boxes2[..., 2:]) - torch.maximum(boxes1[..., :2], boxes2[..., :2])
    inter = overlap.clamp(min=0).prod(dim=-1)
    union = box_area(boxes1) + box_area(boxes2) - inter
    extent = torch.maximum(boxes1[..., 2:], boxes2[..., 2:]) - torch.minimum(boxes1[..., :2], boxes2[..., :2])
    return inter, union, extent.clamp(min=0).prod(dim=-1)


def _giou(inter: Tensor, union: Tensor, enclosing: Tensor) -> Tensor:
    """GIoU = IoU minus the share of the enclosing box covered by neither box."""
    return inter / union.clamp(min=_TINY) - (enclosing - union) / enclosing.clamp(min=_TINY)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of xyxy boxes, also returning the union.

    Args:
        boxes1: (N, 4) xyxy boxes.
        boxes2: (M, 4) xyxy boxes.

    Returns:
        `(iou, union)`, both (N, M).
    """
    inter, union, _ = _areas(boxes1[:, None, :], boxes2[None, :, :])
    return inter / union.clamp(min=_TINY), union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU of xyxy boxes.

    Args:
        boxes1: (..., N, 4) xyxy boxes.
        boxes2: (..., M, 4) xyxy boxes; leading dimensions broadcast against those of `boxes1`.

    Returns:
        (..., N, M) GIoU in [-1, 1].
    """
    return _giou(*_areas(boxes1[..., :, None, :], boxes2[..., None, :, :]))


def paired_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU of matched pairs, boxes1[i] with boxes2[i] only (no N x N matrix).

    Args:
        boxes1: (N, 4) xyxy boxes.
        boxes2: (N, 4) xyxy boxes.

    Returns:
        (N,) GIoU of each pair.
    """
    return _giou(*_areas(boxes1, boxes2))
