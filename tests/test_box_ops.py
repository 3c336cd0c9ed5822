"""detr_lite.box_ops against torchvision.ops, including zero-size boxes."""

import pytest
import torch
from torchvision import ops

from detr_lite.box_ops import (
    box_area,
    box_iou,
    center_to_corners,
    corners_to_center,
    generalized_box_iou,
    paired_generalized_box_iou,
)


def random_corners(count: int, seed: int, degenerate: bool = True) -> torch.Tensor:
    """(count, 4) xyxy boxes in [0, 1]; with `degenerate`, a third have zero width or height or both."""
    generator = torch.Generator().manual_seed(seed)
    top_left = torch.rand(count, 2, generator=generator) * 0.7
    size = torch.rand(count, 2, generator=generator) * 0.3
    if degenerate:
        size[0::6, 0] = 0  # zero width
        size[1::6, 1] = 0  # zero height
        size[2::6] = 0  # a point
    return torch.cat([top_left, top_left + size], dim=-1)


def assert_matches_torchvision(result: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal wherever torchvision is defined; where it divides 0 by 0 (two zero-area boxes) we stay finite."""
    undefined = torch.isnan(expected)
    torch.testing.assert_close(result[~undefined], expected[~undefined])
    assert torch.isfinite(result).all()
    assert ((result[undefined] >= -1) & (result[undefined] <= 1)).all()


def test_center_corners_round_trip_matches_torchvision():
    corners = random_corners(50, seed=0)
    center = corners_to_center(corners)
    torch.testing.assert_close(center, ops.box_convert(corners, "xyxy", "cxcywh"))
    torch.testing.assert_close(center_to_corners(center), corners)
    batched = center.view(5, 10, 4)
    torch.testing.assert_close(center_to_corners(batched), ops.box_convert(center, "cxcywh", "xyxy").view(5, 10, 4))


def test_box_area_matches_torchvision():
    corners = random_corners(50, seed=1)
    torch.testing.assert_close(box_area(corners), ops.box_area(corners))
    assert (box_area(corners)[2::6] == 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_iou_matches_torchvision(seed):
    boxes1, boxes2 = random_corners(30, seed), random_corners(17, seed + 100)
    iou, union = box_iou(boxes1, boxes2)
    assert iou.shape == union.shape == (30, 17)
    expected = ops.box_iou(boxes1, boxes2)
    assert torch.isnan(expected).any()  # the zero-size boxes are exercised
    assert_matches_torchvision(iou, expected)
    assert (iou[torch.isnan(expected)] == 0).all()
    torch.testing.assert_close(union, ops.box_area(boxes1)[:, None] + ops.box_area(boxes2) - iou * union)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generalized_box_iou_matches_torchvision(seed):
    boxes1, boxes2 = random_corners(30, seed), random_corners(17, seed + 100)
    expected = ops.generalized_box_iou(boxes1, boxes2)
    assert torch.isnan(expected).any()
    assert_matches_torchvision(generalized_box_iou(boxes1, boxes2), expected)


def test_two_aligned_zero_area_boxes_give_zero_not_nan():
    # torchvision divides 0 by 0 here; a NaN would poison the whole Hungarian cost matrix.
    point = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    vertical = torch.tensor([[0.2, 0.1, 0.2, 0.6]])
    assert torch.isnan(ops.generalized_box_iou(point, point)).all()
    assert generalized_box_iou(point, point).item() == 0
    assert paired_generalized_box_iou(vertical, vertical).item() == 0
    assert box_iou(point, point)[0].item() == 0


def test_generalized_box_iou_broadcasts_leading_dims():
    boxes1 = random_corners(2 * 3 * 7, seed=3).view(2, 3, 7, 4)
    boxes2 = random_corners(5, seed=4)
    result = generalized_box_iou(boxes1, boxes2)
    assert result.shape == (2, 3, 7, 5)
    expected = torch.stack([ops.generalized_box_iou(b, boxes2) for b in boxes1.view(6, 7, 4)]).view(2, 3, 7, 5)
    assert_matches_torchvision(result, expected)
    per_batch = random_corners(3 * 5, seed=5).view(3, 5, 4)
    expected = torch.stack([ops.generalized_box_iou(a, b) for a, b in zip(boxes1[0], per_batch)])
    assert_matches_torchvision(generalized_box_iou(boxes1[0], per_batch), expected)


def test_paired_generalized_box_iou_is_the_diagonal():
    boxes1, boxes2 = random_corners(40, seed=6), random_corners(40, seed=7)
    boxes2[:5] = boxes1[:5]  # identical pairs, GIoU 1 unless degenerate
    result = paired_generalized_box_iou(boxes1, boxes2)
    assert result.shape == (40,)
    assert_matches_torchvision(result, torch.diagonal(ops.generalized_box_iou(boxes1, boxes2)))
    assert result[3].item() == pytest.approx(1.0)


def test_low_precision_inputs_are_computed_in_float32():
    boxes1, boxes2 = random_corners(10, seed=8, degenerate=False), random_corners(9, seed=9, degenerate=False)
    low1, low2 = boxes1.bfloat16(), boxes2.bfloat16()
    for result in (generalized_box_iou(low1, low2), box_iou(low1, low2)[0], box_area(low1),
                   paired_generalized_box_iou(low1[:9], low2), center_to_corners(low1)):
        assert result.dtype == torch.float32
    torch.testing.assert_close(generalized_box_iou(low1, low2), ops.generalized_box_iou(low1.float(), low2.float()))
    assert generalized_box_iou(boxes1.double(), boxes2.double()).dtype == torch.float64
