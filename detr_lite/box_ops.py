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
    x0a, y0a, x1a, y1a = _coordinates(boxes1)
    x0b, y0b, x1b, y1b = _coordinates(boxes2)
    inter = _overlap(x0a, x1a, x0b, x1b) * _overlap(y0a, y1a, y0b, y1b)
    union = ((x1a - x0a) * (y1a - y0a) + (x1b - x0b) * (y1b - y0b)).sub_(inter)
    enclosing = _hull(x0a, x1a, x0b, x1b) * _hull(y0a, y1a, y0b, y1b)
    return inter, union, enclosing


# The pairwise matrices are large (the matcher's is layers x batch x queries x targets), and on the CPU a fresh
# large tensor costs page faults. So the helpers below update their own fresh results in place where autograd
# keeps nothing of them (min/max keep their inputs, subtraction keeps nothing): the same values and gradients,
# with about half the allocations.

def _coordinates(boxes: Tensor) -> tuple[Tensor, ...]:
    """x0, y0, x1, y1 of (..., 4) boxes as contiguous (...) tensors: broadcasting them is faster than strided."""
    return tuple(_upcast(boxes).movedim(-1, 0).contiguous())


def _overlap(low_a: Tensor, high_a: Tensor, low_b: Tensor, high_b: Tensor) -> Tensor:
    """Length of the overlap of the intervals [low_a, high_a] and [low_b, high_b]; 0 when they are disjoint."""
    return torch.minimum(high_a, high_b).sub_(torch.maximum(low_a, low_b)).clamp_(min=0)


def _hull(low_a: Tensor, high_a: Tensor, low_b: Tensor, high_b: Tensor) -> Tensor:
    """Length of the smallest interval containing [low_a, high_a] and [low_b, high_b]."""
    return torch.maximum(high_a, high_b).sub_(torch.minimum(low_a, low_b)).clamp_(min=0)


def _giou(inter: Tensor, union: Tensor, enclosing: Tensor) -> Tensor:
    """GIoU = IoU minus the share of the enclosing box covered by neither box."""
    return (inter / union.clamp(min=_TINY)).sub_((enclosing - union).div_(enclosing.clamp(min=_TINY)))


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


def box_iou_paired(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of matched pairs, boxes1[i] with boxes2[i] only: (N, 4) xyxy twice -> (N,)."""
    inter, union, _ = _areas(boxes1, boxes2)
    return inter / union.clamp(min=_TINY)


def paired_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU of matched pairs, boxes1[i] with boxes2[i] only (no N x N matrix).

    Args:
        boxes1: (N, 4) xyxy boxes.
        boxes2: (N, 4) xyxy boxes.

    Returns:
        (N,) GIoU of each pair.
    """
    return _giou(*_areas(boxes1, boxes2))
