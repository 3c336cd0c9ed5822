"""detr_lite/denoising.py: noised target queries (positives and negatives), their pairing and their loss."""

import pytest
import torch

from conftest import random_labels, tiny_config
from detr_lite import DeTRLiteForObjectDetection
from detr_lite.box_ops import center_to_corners
from detr_lite.denoising import DenoisingQueries, jitter_boxes

DENOISING = dict(query_source="encoder", num_selected_queries=6, box_refinement=True, box_query_position=True)


@pytest.mark.parametrize(("low", "scale"), [(0.0, 0.4), (1.0, 0.4), (0.0, 1.0)])
def test_jitter_moves_each_corner_by_the_positive_or_negative_range(low, scale):
    torch.manual_seed(0)
    boxes = torch.tensor([0.5, 0.5, 0.2, 0.1]).repeat(500, 1)
    moved = (center_to_corners(jitter_boxes(boxes, torch.tensor(low), scale)) - center_to_corners(boxes)).abs()
    limit = torch.tensor([0.1, 0.05, 0.1, 0.05]) * scale  # half the side, per corner coordinate
    if low:
        assert (moved >= limit * low - 1e-6).all() and (moved <= limit * (low + 1) + 1e-6).all()
    else:
        assert (moved <= limit + 1e-6).all() and moved.max() > 0.9 * limit.max()  # the range is used, not less


def test_jittered_boxes_stay_valid_inside_the_image():
    torch.manual_seed(0)
    boxes = torch.tensor([[0.05, 0.95, 0.1, 0.1], [0.5, 0.5, 0.9, 0.9]]).repeat(200, 1)
    corners = center_to_corners(jitter_boxes(boxes, torch.tensor(1.0), 1.0))
    assert (corners >= 0).all() and (corners <= 1).all()
    assert (corners[:, 2:] >= corners[:, :2]).all()


def test_each_image_gets_positives_then_negatives_in_every_group():
    torch.manual_seed(0)
    config = tiny_config(**DENOISING, denoising_groups=2, denoising_box_noise=0.4, denoising_label_flip=0.0)
    queries = DenoisingQueries(config)
    labels = random_labels(3, generator=torch.Generator().manual_seed(1))
    labels[1] = {"class_labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
    labels[2] = {"class_labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    groups = queries(labels)
    slots = 2 * max(len(target["boxes"]) for target in labels)
    assert groups.content.shape == (2 * 3, slots, config.d_model) and groups.reference_boxes.shape == (6, slots, 4)
    # Label flip off: every slot of image 1 shows class 2, its only target, in both groups (rows 1 and 4).
    torch.testing.assert_close(groups.content[[1, 4]], queries.label_embedding.weight[2].expand(2, slots, -1))
    # Image 1: slot 0 is the positive (corners moved < 0.4 x half the side), the others negatives (0.4-0.8x).
    moved = (center_to_corners(groups.reference_boxes[1]) - center_to_corners(labels[1]["boxes"])).abs().amax(-1)
    assert moved[0] <= 0.04 + 1e-6 and (moved[1:] >= 0.04 - 1e-6).all()
    # The pairs: each target of each group once, in the image's own queries, against the targets repeated.
    image_one = groups.image == 1
    assert groups.query[image_one].tolist() == [0, slots] and groups.target[image_one].tolist() == [0, 1]
    assert (groups.image == 2).sum() == 0  # no targets: all negatives
    assert len(groups.image) == 2 * sum(len(target["boxes"]) for target in labels)
    per_image = groups.per_image(groups.reference_boxes)  # (B, G * S, 4)
    torch.testing.assert_close(per_image[1, slots:], groups.reference_boxes[4])


def test_no_targets_no_denoising_queries():
    config = tiny_config(**DENOISING, denoising_groups=1)
    empty = {"class_labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    assert DenoisingQueries(config)([empty, empty]) is None


def test_positives_are_trained_on_their_own_targets_and_leave_the_matched_queries_alone():
    torch.manual_seed(0)
    config = tiny_config(**DENOISING, one_to_many_copies=2, denoising_groups=2, denoising_box_noise=1e-6, dropout=0.0)
    model = DeTRLiteForObjectDetection(config).train()
    labels = random_labels(2, generator=torch.Generator().manual_seed(0))
    pixels = torch.randn(2, 3, 128, 128)
    outputs = model(pixels, labels=labels)
    # A fresh model predicts its reference boxes, here the targets themselves: the pairing is exact.
    assert outputs.loss_dict["loss_bbox_dn"] < 1e-4 and outputs.loss_dict["loss_giou_dn"] < 1e-3
    assert outputs.loss_dict["loss_bbox"] > 0.01  # the matched queries start on their anchors, not the targets
    outputs.loss.backward()
    assert model.model.denoising.label_embedding.weight.grad.abs().sum() > 0
    model.model.denoising = None  # the same weights without the denoising queries: same predictions
    with torch.no_grad():
        torch.testing.assert_close(model(pixels, labels=labels).logits, outputs.logits.detach())


def test_inference_makes_no_denoising_queries():
    config = tiny_config(**DENOISING, denoising_groups=1)
    model = DeTRLiteForObjectDetection(config).eval()
    with torch.no_grad():
        outputs = model.model(torch.randn(1, 3, 128, 128), labels=random_labels(1))
    assert outputs.denoising is None


@pytest.mark.parametrize(("overrides", "field"), [
    (dict(query_source="encoder", denoising_groups=1), "denoising_groups"),  # no box positions
    (dict(DENOISING, denoising_groups=-1), "denoising_groups"),
    (dict(DENOISING, denoising_groups=1, denoising_box_noise=0), "denoising_box_noise"),
    (dict(DENOISING, denoising_groups=1, denoising_label_flip=1.5), "denoising_label_flip"),
])
def test_invalid_denoising_fields_are_refused(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)
