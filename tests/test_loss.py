"""DeTRLiteLoss: same numbers as transformers' DETR loss, robust to empty targets, float32 under autocast."""

import pytest
import torch
import torch.distributed as dist
import transformers
from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss

from conftest import labels_with_counts
from detr_lite.configuration_detr_lite import DeTRLiteConfig
from detr_lite.loss_detr_lite import DeTRLiteLoss

LAYERS, BATCH, QUERIES, CLASSES = 3, 4, 20, 5
# Non-default values, so that a field read from the wrong place changes the result.
OBJECTIVE = dict(class_cost=2, bbox_cost=3, giou_cost=1, bbox_loss_coefficient=4,
                 giou_loss_coefficient=3, eos_coefficient=0.2)


def make_config(auxiliary_loss: bool = True) -> DeTRLiteConfig:
    return DeTRLiteConfig(num_labels=CLASSES, decoder_layers=LAYERS, auxiliary_loss=auxiliary_loss, **OBJECTIVE)


def random_outputs(seed: int, requires_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (L, B, Q, C + 1) and sigmoid boxes (L, B, Q, 4) of all decoder layers, last layer last."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(LAYERS, BATCH, QUERIES, CLASSES + 1, generator=generator) * 2
    boxes = torch.randn(LAYERS, BATCH, QUERIES, 4, generator=generator).sigmoid()
    return logits.requires_grad_(requires_grad), boxes.requires_grad_(requires_grad)


def random_labels(seed: int, counts: list[int]) -> list[dict[str, torch.Tensor]]:
    return labels_with_counts(seed, counts, CLASSES)


def our_loss(config, logits, boxes, labels):
    return DeTRLiteLoss(config)(logits[-1], boxes[-1], labels, logits[:-1], boxes[:-1])


@pytest.mark.parametrize(
    ("seed", "counts", "auxiliary_loss"),
    [(0, [3, 0, 7, 12], True), (1, [1, 5, 20, 2], True), (2, [9, 4, 0, 6], True), (3, [0, 0, 0, 0], True),
     (4, [6, 2, 0, 11], False)],
)
def test_matches_transformers_detr_loss(seed, counts, auxiliary_loss):
    logits, boxes = random_outputs(seed)
    labels = random_labels(seed, counts)
    detr_config = transformers.DetrConfig(num_labels=CLASSES, decoder_layers=LAYERS, auxiliary_loss=auxiliary_loss,
                                          use_pretrained_backbone=False, **OBJECTIVE)
    # transformers takes the stacked outputs of ALL layers and drops the last one itself (_set_aux_loss).
    expected_total, expected, _ = ForObjectDetectionLoss(logits[-1], labels, "cpu", boxes[-1], detr_config,
                                                         outputs_class=logits, outputs_coord=boxes)
    total, loss_dict = our_loss(make_config(auxiliary_loss), logits, boxes, labels)
    assert set(loss_dict) == set(expected)
    assert len(loss_dict) == 4 * (LAYERS if auxiliary_loss else 1)
    for name, value in expected.items():
        torch.testing.assert_close(loss_dict[name], value.float(), atol=1e-5, rtol=1e-5, msg=name)
    torch.testing.assert_close(total, expected_total, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("counts", [[0, 4, 0, 2], [0, 0, 0, 0]])
def test_empty_targets_give_finite_loss_and_gradients(counts):
    logits, boxes = random_outputs(5, requires_grad=True)
    total, loss_dict = our_loss(make_config(), logits, boxes, random_labels(5, counts))
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(boxes.grad).all()
    if sum(counts) == 0:
        assert all(loss_dict[f"loss_{term}{suffix}"] == 0 for term in ("bbox", "giou") for suffix in ("", "_0", "_1"))
        assert total > 0  # the no-object cross-entropy still trains the classifier
        assert (boxes.grad == 0).all()


def test_gradient_reaches_every_layer_logits_and_boxes():
    logits, boxes = random_outputs(6, requires_grad=True)
    total, loss_dict = our_loss(make_config(), logits, boxes, random_labels(6, [4, 3, 0, 8]))
    assert total.requires_grad and not any(value.requires_grad for value in loss_dict.values())
    total.backward()
    for layer in range(LAYERS):
        assert logits.grad[layer].abs().sum() > 0 and boxes.grad[layer].abs().sum() > 0


def test_auxiliary_outputs_ignored_when_auxiliary_loss_off():
    logits, boxes = random_outputs(7)
    labels = random_labels(7, [2, 2, 2, 2])
    total, loss_dict = our_loss(make_config(auxiliary_loss=False), logits, boxes, labels)
    expected, _ = DeTRLiteLoss(make_config())(logits[-1], boxes[-1], labels)
    assert set(loss_dict) == {"loss_ce", "loss_bbox", "loss_giou", "cardinality_error"}
    torch.testing.assert_close(total, expected)


@pytest.mark.parametrize("autocast", [True, False])
def test_bfloat16_outputs_give_the_float32_loss(autocast):
    logits, boxes = random_outputs(8)
    labels = random_labels(8, [5, 0, 3, 9])
    logits, boxes = logits.bfloat16(), boxes.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        total, loss_dict = our_loss(make_config(), logits, boxes, labels)
    assert total.dtype == torch.float32 and all(value.dtype == torch.float32 for value in loss_dict.values())
    expected, _ = our_loss(make_config(), logits.float(), boxes.float(), labels)
    torch.testing.assert_close(total, expected, atol=1e-5, rtol=1e-5)


def test_no_host_sync_besides_the_matcher_transfer(monkeypatch):
    def forbidden(self, *args, **kwargs):
        raise AssertionError("host sync inside the loss")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    transfers = []
    original_cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: transfers.append(1) or original_cpu(self, *a, **k))
    logits, boxes = random_outputs(9)
    our_loss(make_config(), logits, boxes, random_labels(9, [3, 0, 2, 6]))
    assert len(transfers) == 1


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda labels: labels[1].pop("class_labels"), r"labels\[1\] lacks \['class_labels'\]"),
        (lambda labels: labels[0].update(boxes=torch.rand(3)), r"labels\[0\]\['boxes'\]"),
        (lambda labels: labels[3]["class_labels"].__setitem__(1, CLASSES), r"labels\[3\]\['class_labels'\]\[1\]"),
    ],
)
def test_invalid_labels_raise_naming_the_field(corrupt, match):
    logits, boxes = random_outputs(10)
    labels = random_labels(10, [3, 3, 0, 2])
    corrupt(labels)
    with pytest.raises(ValueError, match=match):
        our_loss(make_config(), logits, boxes, labels)


def test_wrong_number_of_classes_raises():
    logits, boxes = random_outputs(11)
    with pytest.raises(ValueError, match="num_labels \\+ 1"):
        DeTRLiteLoss(make_config())(logits[-1, ..., :-1], boxes[-1], random_labels(11, [1, 1, 1, 1]))


def test_num_boxes_is_averaged_across_processes(monkeypatch):
    # Simulates a second process holding 19 boxes; a real process group is torch's to test.
    reduced = []

    def all_reduce(tensor):
        reduced.append(tensor.device)
        tensor += 19

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    logits, boxes = random_outputs(12)
    labels = random_labels(12, [1, 0, 2, 0])
    _, shared = our_loss(make_config(), logits, boxes, labels)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    _, alone = our_loss(make_config(), logits, boxes, labels)
    assert reduced == [logits.device]
    # Alone this process divides by its own 3 boxes; together, by the mean count (3 + 19) / 2 = 11.
    for name in ("loss_bbox", "loss_giou", "loss_bbox_0", "loss_giou_1"):
        torch.testing.assert_close(shared[name], alone[name] * 3 / 11)


def test_mismatched_auxiliary_outputs_raise():
    logits, boxes = random_outputs(13)
    labels = random_labels(13, [1, 1, 1, 1])
    with pytest.raises(ValueError, match="together"):
        DeTRLiteLoss(make_config())(logits[-1], boxes[-1], labels, logits[:-1], None)
    with pytest.raises(ValueError, match=r"\(L - 1, \*\(4, 20, 4\)\)"):
        DeTRLiteLoss(make_config())(logits[-1], boxes[-1], labels, logits[:-1], boxes[:-1, :2])


def _duplicate_scene(overlap_eos_coefficient, logits=None, **options):
    """One target; query 0 on it, query 1 a second box on it (IoU 0.8), query 2 elsewhere; equal logits unless
    given. Returns the loss and the logits."""
    config = DeTRLiteConfig(num_labels=CLASSES, decoder_layers=1, eos_coefficient=0.2,
                            overlap_eos_coefficient=overlap_eos_coefficient, **options)
    target = torch.tensor([[0.5, 0.5, 0.4, 0.4]])
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.4], [0.5, 0.5, 0.4, 0.4 * 0.8], [0.1, 0.1, 0.1, 0.1]]])
    logits = torch.zeros(1, 3, CLASSES + 1) if logits is None else logits
    labels = [{"class_labels": torch.tensor([2]), "boxes": target}]
    return DeTRLiteLoss(config)(logits, boxes, labels)[1]["loss_ce"], logits


def test_a_second_box_on_an_object_gets_its_own_no_object_weight():
    ce = torch.log(torch.tensor(CLASSES + 1.0))  # every query's cross-entropy with equal logits
    assert torch.isclose(_duplicate_scene(None)[0], ce)  # a weighted mean of equal terms
    assert torch.isclose(_duplicate_scene(0.2)[0], _duplicate_scene(None)[0])  # the same weight: the plain loss
    # Query 1 (IoU 0.8, unmatched) weighs 3: make its term differ to see the weight.
    logits = torch.zeros(1, 3, CLASSES + 1)
    logits[0, 1, -1] = 2.0  # query 1 already leans to no-object: a lower loss, now weighted 3
    loss, logits = _duplicate_scene(3.0, logits)
    terms = torch.nn.functional.cross_entropy(logits[0], torch.tensor([2, CLASSES, CLASSES]), reduction="none")
    expected = (terms[0] * 1 + terms[1] * 3.0 + terms[2] * 0.2) / (1 + 3.0 + 0.2)
    torch.testing.assert_close(loss, expected)


def test_overlap_weight_equal_to_eos_reproduces_the_plain_loss_on_random_batches():
    logits, boxes = random_outputs(3)
    labels = random_labels(3, [0, 3, 7, 1])
    plain = our_loss(make_config(), logits, boxes, labels)[1]
    overlap = our_loss(DeTRLiteConfig(num_labels=CLASSES, decoder_layers=LAYERS, overlap_eos_coefficient=0.2,
                                      **OBJECTIVE), logits, boxes, labels)[1]
    for name in ("loss_ce", "loss_ce_0", "loss_ce_1"):
        torch.testing.assert_close(overlap[name], plain[name])


def test_iou_aware_classification_targets_the_fit_of_the_matched_box():
    """The matched query's target: its class with the IoU of its box (0.64 here), no-object with the rest."""
    config = DeTRLiteConfig(num_labels=CLASSES, decoder_layers=1, eos_coefficient=0.2, iou_aware_classification=True,
                            bbox_loss_coefficient=0, giou_loss_coefficient=0)
    labels = [{"class_labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]
    boxes = torch.tensor([[[0.5, 0.5, 0.32, 0.32], [0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.1, 0.1]]], requires_grad=True)
    logits = torch.randn(1, 3, CLASSES + 1, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss, terms = DeTRLiteLoss(config)(logits, boxes, labels)
    log_p = logits[0].detach().log_softmax(-1)
    expected = (-(0.64 * log_p[0, 2] + 0.36 * log_p[0, -1]) - 0.2 * log_p[1, -1] - 0.2 * log_p[2, -1]) / 1.4
    torch.testing.assert_close(terms["loss_ce"], expected)
    # The IoU is a target, not a path for gradients: the boxes learn from the box losses only (weighted 0 here).
    assert not torch.autograd.grad(loss, boxes)[0].any()


@pytest.mark.parametrize("overlap_eos_coefficient", [None, 3.0])
def test_iou_aware_classification_with_a_perfect_box_is_the_plain_loss(overlap_eos_coefficient):
    logits = torch.randn(1, 3, CLASSES + 1, generator=torch.Generator().manual_seed(1))
    plain, _ = _duplicate_scene(overlap_eos_coefficient, logits)
    aware, _ = _duplicate_scene(overlap_eos_coefficient, logits, iou_aware_classification=True)
    torch.testing.assert_close(aware, plain)  # query 0 sits exactly on the target: IoU 1, a one-hot target
