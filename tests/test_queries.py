"""detr_lite/queries.py: encoder queries, anchor boxes, top-k selection, box refinement, one-to-many matching."""

import pytest
import torch

from conftest import random_labels, tiny_config
from detr_lite import DeTRLiteConfig, DeTRLiteForObjectDetection
from detr_lite.loss_detr_lite import DeTRLiteLoss, PredictionSet
from detr_lite.queries import token_anchor_boxes

ENCODER = dict(query_source="encoder", anchor_size=0.25)
TOKENS = (128 // 32) ** 2  # tiny config: 128-pixel canvas, stride-32 features


def test_anchor_centres_follow_the_unpadded_extent():
    mask = torch.zeros(1, 2, 4, dtype=torch.bool)
    mask[0, :, :2] = True  # the right half of the feature map is padding
    anchors = token_anchor_boxes(mask, 0.3).view(2, 4, 4)
    torch.testing.assert_close(anchors[0, :2, 0], torch.tensor([0.25, 0.75]))  # x over the 2 real columns
    torch.testing.assert_close(anchors[:, 0, 1], torch.tensor([0.25, 0.75]))  # y over the 2 real rows
    assert (anchors[:, 2:, 0] == 0.75).all()  # padding: the centre of the last real column
    assert (anchors[..., 2:] == 0.3).all()


@pytest.mark.parametrize("box_refinement", [False, True])
def test_one_query_per_token_starting_on_its_anchor(box_refinement):
    torch.manual_seed(0)
    model = DeTRLiteForObjectDetection(tiny_config(**ENCODER, box_refinement=box_refinement)).eval()
    assert not hasattr(model.model, "query_position_embeddings")  # num_queries plays no part
    pixels = torch.randn(2, 3, 128, 128)
    mask = torch.ones(2, 128, 128, dtype=torch.long)
    mask[1, :, 64:] = 0
    with torch.no_grad():
        outputs = model(pixels, pixel_mask=mask)
        anchors = token_anchor_boxes(outputs.feature_mask, 0.25)
        assert outputs.logits.shape == (2, TOKENS, 4) and outputs.pred_boxes.shape == (2, TOKENS, 4)
        # A fresh model predicts every anchor exactly (the box heads' last layers start at zero) ...
        torch.testing.assert_close(outputs.pred_boxes, anchors, atol=1e-5, rtol=0)
        torch.testing.assert_close(outputs.proposal_boxes, anchors, atol=1e-5, rtol=0)
        # ... and its boxes move with what the heads output, relative to the proposal.
        model.bbox_predictor.layers[-1].bias.fill_(1.0)
        model.model.queries.proposal_box[-1].bias.fill_(0.5)
        moved = model(pixels, pixel_mask=mask).pred_boxes
    steps = 0.5 + (3 if box_refinement else 1)  # the proposal's offset, then one per refining decoder layer
    expected = (torch.logit(anchors, eps=1e-5) + steps).sigmoid()
    torch.testing.assert_close(moved, expected, atol=1e-5, rtol=1e-5)


def test_training_learns_the_token_proposals_as_their_own_set():
    torch.manual_seed(0)
    model = DeTRLiteForObjectDetection(tiny_config(**ENCODER, box_refinement=True)).train()
    outputs = model(torch.randn(2, 3, 128, 128), labels=random_labels(2, generator=torch.Generator().manual_seed(0)))
    assert len(outputs.auxiliary_outputs) == 2  # decoder layers 1 and 2
    assert {"loss_giou_0", "loss_giou_1", "loss_giou", "loss_giou_enc", "loss_ce_enc"} <= set(outputs.loss_dict)
    outputs.loss.backward()
    queries = model.model.queries
    for weight in (queries.query_projection[0].weight, queries.proposal_class.weight, queries.proposal_box[-1].weight):
        assert weight.grad.abs().sum() > 0
    assert model.model.backbone.body.layer4[0].downsample[0].weight.grad.abs().sum() > 0  # timm: see test_modeling


def test_save_and_reload_give_the_same_detections(tmp_path):
    torch.manual_seed(0)
    model = DeTRLiteForObjectDetection(tiny_config(**ENCODER, box_refinement=True)).eval()
    torch.nn.init.normal_(model.bbox_predictor.layers[-1].weight, std=0.1)  # off the anchors
    model.save_pretrained(tmp_path)
    reloaded = DeTRLiteForObjectDetection.from_pretrained(tmp_path).eval()
    pixels = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        expected, got = model(pixels), reloaded(pixels)
    assert torch.equal(expected.pred_boxes, got.pred_boxes) and torch.equal(expected.logits, got.logits)


def _criterion(copies: int) -> DeTRLiteLoss:
    return DeTRLiteLoss(DeTRLiteConfig(num_labels=3, decoder_layers=3, auxiliary_matching_copies=copies))


def test_auxiliary_layers_match_each_target_several_times_and_the_last_layer_once():
    target = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    labels = [{"class_labels": torch.tensor([1]), "boxes": target}]
    boxes = torch.tensor([0.1, 0.1, 0.05, 0.05]).repeat(3, 1, 8, 1)  # (layers, batch, queries, 4): far away
    boxes[:, 0, :3] = target  # three queries sit exactly on the object in every layer
    logits = torch.zeros(3, 1, 8, 4)
    for copies, expected_aux_l1 in ((3, 0.0), (4, None)):
        _, losses = _criterion(copies)(logits[-1], boxes[-1], labels, logits[:-1], boxes[:-1])
        assert losses["loss_bbox"] == 0  # last layer: one-to-one, matched to an exact query
        if expected_aux_l1 is not None:
            # Three copies are matched to the three exact queries: nothing to learn.
            assert losses["loss_bbox_0"] == 0 and losses["loss_bbox_1"] == 0
        else:
            # A fourth copy must take a far query: the auxiliary layers now pay for it, a quarter of the boxes.
            far_l1 = (boxes[0, 0, 3] - target[0]).abs().sum()
            torch.testing.assert_close(losses["loss_bbox_0"], far_l1 / 4)
            assert losses["cardinality_error_0"] == losses["cardinality_error"] - 3  # 4 targets vs 1


def test_the_best_real_token_proposals_become_the_queries():
    torch.manual_seed(0)
    model = DeTRLiteForObjectDetection(tiny_config(**ENCODER, num_selected_queries=5)).eval()
    mask = torch.ones(2, 128, 128, dtype=torch.long)
    mask[1, :, 64:] = 0  # image 1: the right half of the tokens is padding
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 128, 128), pixel_mask=mask)
    assert outputs.logits.shape == (2, 5, 4)
    scores = outputs.proposal_logits[..., :-1].amax(-1)  # (B, HW)
    real = outputs.feature_mask.flatten(1)
    assert (scores[1, ~real[1]].max() > scores[1, real[1]].topk(5).values[-1])  # padding would win unmasked
    for image in range(2):
        chosen = scores[image].masked_fill(~real[image], float("-inf")).topk(5).indices
        expected = outputs.proposal_boxes[image, chosen]
        torch.testing.assert_close(outputs.pred_boxes[image], expected, atol=1e-5, rtol=0)  # fresh decoder: no offset


def test_proposals_match_each_target_the_requested_number_of_times():
    target = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    labels = [{"class_labels": torch.tensor([1]), "boxes": target}]
    boxes = torch.tensor([0.1, 0.1, 0.05, 0.05]).repeat(1, 1, 8, 1)
    boxes[0, 0, :2] = target  # two proposals sit exactly on the object
    logits = torch.zeros(1, 1, 8, 4)
    for copies, exact in ((2, True), (3, False)):
        _, losses = _criterion(1)(logits[-1], boxes[-1], labels, extra_sets=[PredictionSet("enc", logits, boxes, copies)])
        assert (losses["loss_bbox_enc"] == 0) == exact
        assert losses["cardinality_error_enc"] == 8 - copies  # every query predicts an object: 8 against copies


@pytest.mark.parametrize(("field", "value"), [("query_source", "grid"), ("anchor_size", 0.0),
                                              ("anchor_size", 1.5), ("auxiliary_matching_copies", 0),
                                              ("proposal_matching_copies", 0), ("num_selected_queries", -1),
                                              ("box_refinement", "yes"), ("box_query_position", 1)])
def test_invalid_recipe_fields_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        tiny_config(**{field: value})


def test_box_query_position_needs_boxes():
    with pytest.raises(ValueError, match="box_query_position.*encoder"):
        tiny_config(box_query_position=True)  # learned queries


@pytest.mark.parametrize("box_refinement", [False, True])
def test_each_decoder_layer_embeds_its_current_box_as_the_query_position(box_refinement):
    """box_query_position: layer l's query position is the embedding of the box layer l - 1 predicted (with
    refinement; else the proposal's), for the inference queries and the one-to-many group alike."""
    torch.manual_seed(0)
    config = tiny_config(**ENCODER, num_selected_queries=6, one_to_many_copies=2, box_refinement=box_refinement,
                         box_query_position=True)
    model = DeTRLiteForObjectDetection(config).train()
    torch.nn.init.normal_(model.bbox_predictor.layers[-1].weight, std=0.5)  # boxes move at every layer
    seen = []
    for layer in model.model.decoder.layers:
        layer.register_forward_pre_hook(lambda module, args: seen.append(args[3].detach().clone()))
    outputs = model(torch.randn(2, 3, 128, 128), labels=random_labels(2, generator=torch.Generator().manual_seed(0)))
    layers = len(model.model.decoder.layers)
    assert len(seen) == 2 * layers  # the queries, then the one-to-many group
    embed = model.model.decoder.box_position
    scores = outputs.proposal_logits[..., :-1].amax(-1)  # the selected proposals: the 6 best tokens
    chosen = scores.topk(6, dim=1).indices
    first = outputs.proposal_boxes.gather(1, chosen[..., None].expand(-1, -1, 4))
    boxes = [first] + [aux["pred_boxes"] for aux in outputs.auxiliary_outputs]
    with torch.no_grad():
        for index in range(layers):
            reference = boxes[index] if box_refinement else first
            torch.testing.assert_close(seen[index], embed(reference), atol=1e-5, rtol=1e-5)
    moved = not torch.allclose(seen[0], seen[layers - 1])
    assert moved == box_refinement  # the boxes, and so the positions, move only with refinement
    outputs.loss.backward()
    assert embed.mlp[0].weight.grad.abs().sum() > 0
