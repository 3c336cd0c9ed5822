"""HungarianMatcher: optimal, one-to-one, batched over layers and images, with clear errors."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert
from torchvision.ops import generalized_box_iou as tv_generalized_box_iou

from conftest import labels_with_counts
from detr_lite.loss_detr_lite import HungarianMatcher

LAYERS, BATCH, QUERIES, CLASSES = 2, 4, 20, 7


def random_outputs(seed: int, layers: int = LAYERS) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (L, B, Q, C + 1) and sigmoid boxes (L, B, Q, 4)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(layers, BATCH, QUERIES, CLASSES + 1, generator=generator) * 3
    boxes = torch.randn(layers, BATCH, QUERIES, 4, generator=generator).sigmoid()
    return logits, boxes


def random_labels(seed: int, counts: list[int]) -> list[dict[str, torch.Tensor]]:
    return labels_with_counts(seed, counts, CLASSES)


def random_counts(seed: int) -> list[int]:
    """Target counts in 0..Q, with one image empty and one full."""
    counts = torch.randint(1, QUERIES + 1, (BATCH,), generator=torch.Generator().manual_seed(seed)).tolist()
    counts[seed % BATCH] = 0
    counts[(seed + 1) % BATCH] = QUERIES
    return counts


def reference_cost(logits, boxes, target, weights) -> np.ndarray:
    """(Q, n) DETR matching cost of one image and layer, built independently with torchvision."""
    class_weight, bbox_weight, giou_weight = weights
    class_cost = -logits.softmax(-1)[:, target["class_labels"]]
    bbox_cost = torch.cdist(boxes, target["boxes"], p=1)
    giou = tv_generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"), box_convert(target["boxes"], "cxcywh", "xyxy"))
    return (class_weight * class_cost + bbox_weight * bbox_cost - giou_weight * giou).double().numpy()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("weights", [(1.0, 5.0, 2.0), (2.0, 1.0, 0.0), (0.0, 0.0, 1.0)])
def test_assignment_is_optimal_and_one_to_one(seed, weights):
    logits, boxes = random_outputs(seed)
    counts = random_counts(seed)
    labels = random_labels(seed, counts)
    matching = HungarianMatcher(*weights)(logits, boxes, labels)
    assert matching.query.shape == matching.target.shape == (LAYERS, len(matching.image))
    assert torch.equal(matching.image, matching.image.sort().values)
    for layer in range(LAYERS):
        for image in range(BATCH):
            queries, targets = matching.pairs(layer, image)
            assert queries.dtype == targets.dtype == torch.int64 and queries.device.type == "cpu"
            assert len(queries) == len(targets) == min(QUERIES, counts[image])
            assert len(set(queries.tolist())) == len(queries) and len(set(targets.tolist())) == len(targets)
            assert torch.equal(queries, queries.sort().values)
            cost = reference_cost(logits[layer, image], boxes[layer, image], labels[image], weights)
            rows, cols = linear_sum_assignment(cost)
            assert cost[queries.numpy(), targets.numpy()].sum() == pytest.approx(cost[rows, cols].sum(), abs=1e-4)


def test_batch_without_targets_gives_empty_indices():
    logits, boxes = random_outputs(0)
    matching = HungarianMatcher()(logits, boxes, random_labels(0, [0] * BATCH))
    assert matching.image.shape == (0,) and matching.query.shape == matching.target.shape == (LAYERS, 0)


def test_cost_weights_change_the_assignment():
    # Query 0 is confident in the right class but its box is far off; query 1 has the right box
    # but a low class probability. Which one wins must depend on the weights.
    logits = torch.tensor([[[[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]]]])  # (1, 1, 2, 3)
    boxes = torch.tensor([[[[0.8, 0.8, 0.1, 0.1], [0.3, 0.3, 0.2, 0.2]]]])
    labels = [{"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]])}]
    winner = {
        weights: HungarianMatcher(*weights)(logits, boxes, labels).query[0, 0].item()
        for weights in [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (10.0, 1.0, 1.0), (1.0, 5.0, 2.0)]
    }
    assert winner == {(1.0, 0.0, 0.0): 0, (0.0, 1.0, 0.0): 1, (0.0, 0.0, 1.0): 1, (10.0, 1.0, 1.0): 0,
                      (1.0, 5.0, 2.0): 1}


def test_all_layers_are_moved_to_the_host_in_one_transfer(monkeypatch):
    calls = []
    original = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: calls.append(self.shape) or original(self, *a, **k))
    logits, boxes = random_outputs(1, layers=3)
    HungarianMatcher()(logits, boxes, random_labels(1, random_counts(1)))
    assert len(calls) == 1


@pytest.mark.parametrize("field", ["logits", "boxes"])
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_predictions_raise(field, bad_value):
    logits, boxes = random_outputs(2)
    (logits if field == "logits" else boxes)[1, 2, 3, 0] = bad_value
    labels = random_labels(2, [3, 0, 5, 2])
    with pytest.raises(ValueError, match="non-finite") as error:
        HungarianMatcher()(logits, boxes, labels)
    assert "format" not in str(error.value)


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda labels: labels[2].pop("boxes"), r"labels\[2\] lacks \['boxes'\]"),
        (lambda labels: labels[1].update(boxes=torch.rand(3, 5)), r"labels\[1\]\['boxes'\].*\(n, 4\)"),
        (lambda labels: labels[0].update(class_labels=torch.rand(3)), r"labels\[0\]\['class_labels'\].*integer"),
        (lambda labels: labels[2]["class_labels"].__setitem__(1, CLASSES),
         r"labels\[2\]\['class_labels'\]\[1\] = 7 is outside 0..6"),
        (lambda labels: labels[3]["class_labels"].__setitem__(0, -1), r"labels\[3\]\['class_labels'\]\[0\] = -1"),
        (lambda labels: labels[2]["boxes"].__setitem__((0, 2), float("nan")), r"labels\[2\]\['boxes'\]\[0\]"),
        (lambda labels: labels[2]["boxes"].__setitem__((1, 3), -0.1), r"labels\[2\]\['boxes'\]\[1\].*negative"),
        (lambda labels: labels.pop(), r"list of 4 dicts"),
    ],
)
def test_invalid_labels_raise_naming_image_and_field(corrupt, match):
    logits, boxes = random_outputs(3)
    labels = random_labels(3, [3, 3, 4, 2])
    corrupt(labels)
    with pytest.raises(ValueError, match=match):
        HungarianMatcher()(logits, boxes, labels)


def test_invalid_costs_raise():
    with pytest.raises(ValueError, match="not all 0"):
        HungarianMatcher(0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="non-negative"):
        HungarianMatcher(1.0, -1.0, 2.0)
