"""Tests for detr_lite/evaluation.py, with pycocotools itself as the independent reference."""

import contextlib
import copy
import importlib.util
import io
import math
import sys

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detr_lite.evaluation import (
    COCO_METRICS,
    coco_evaluate,
    duplicate_statistics,
    format_metrics_table,
    predictions_to_coco,
    voc_map50,
)

BACKENDS = [
    "pycocotools",
    pytest.param("faster_coco_eval", marks=pytest.mark.skipif(
        importlib.util.find_spec("faster_coco_eval") is None, reason="faster-coco-eval is not installed")),
]


def _random_set(seed, num_images=40, num_classes=4, noise_boxes=30, crowd=0.1, tied_scores=False):
    """Ground truth of all sizes (sparse category ids, one category without boxes, some crowd
    boxes and empty images, the last one always) and detections: jittered copies of boxes, wrong
    classes, clutter."""
    rng = np.random.default_rng(seed)
    images = [{"id": 3 * i + 7, "width": 300, "height": 300} for i in range(num_images)]
    categories = [{"id": 2 * k, "name": f"class{k}"} for k in range(1, num_classes + 2)]
    annotations, predictions = [], []
    for image in images:
        for _ in range(rng.integers(0, 8) if image is not images[-1] else 0):
            box = np.r_[rng.uniform(0, 250, 2), np.exp(rng.uniform(np.log(4), np.log(200), 2))]
            category = 2 * int(rng.integers(1, num_classes + 1))
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": category,
                                "bbox": box.tolist(), "area": float(box[2] * box[3] * rng.uniform(0.5, 1)),
                                "iscrowd": int(rng.random() < crowd)})
            for _ in range(rng.integers(0, 4)):
                jitter = rng.normal(0, rng.uniform(0, 0.3), 4) * box[[2, 3, 2, 3]]
                label = category if rng.random() < 0.85 else 2 * int(rng.integers(1, num_classes + 1))
                predictions.append({"image_id": image["id"], "category_id": label,
                                    "bbox": (box + jitter).tolist(), "score": float(rng.random())})
        for _ in range(rng.integers(0, noise_boxes)):
            predictions.append({"image_id": image["id"], "category_id": 2 * int(rng.integers(1, num_classes + 1)),
                                "bbox": np.r_[rng.uniform(0, 250, 2), rng.uniform(2, 150, 2)].tolist(),
                                "score": float(rng.random())})
    if tied_scores:
        for prediction in predictions:
            prediction["score"] = round(prediction["score"], 1)
    return {"images": images, "annotations": annotations, "categories": categories}, predictions


def _pycocotools(coco_gt, predictions):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(coco_gt)
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(predictions)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "options",
    [{"seed": 0}, {"seed": 1, "tied_scores": True}, {"seed": 5, "num_classes": 1, "noise_boxes": 250, "num_images": 8}],
    ids=["random", "tied-scores", "over-100-detections-per-image"],
)
def test_matches_pycocotools(options, backend):
    coco_gt, predictions = _random_set(**options)
    assert any(a["iscrowd"] for a in coco_gt["annotations"])
    assert {i["id"] for i in coco_gt["images"]} - {a["image_id"] for a in coco_gt["annotations"]}  # an empty image
    before = copy.deepcopy((coco_gt, predictions))
    reference = _pycocotools(coco_gt, predictions)
    metrics = coco_evaluate(coco_gt, predictions, backend=backend)
    assert (coco_gt, predictions) == before
    np.testing.assert_allclose([metrics[k] for k in COCO_METRICS], reference.stats, rtol=0, atol=1e-6)
    assert metrics["AP"] > 0.005 and metrics["AR100"] > 0.1  # a comparison of non-trivial numbers
    precision = reference.eval["precision"][:, :, :, 0, -1]
    for k, category in enumerate(coco_gt["categories"]):
        valid = precision[:, :, k][precision[:, :, k] > -1]
        expected = valid.mean() if valid.size else math.nan
        np.testing.assert_allclose(metrics["per_class_AP"][category["name"]], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_predictions_score_one_and_classes_without_boxes_are_nan(backend):
    coco_gt, _ = _random_set(3, crowd=0.0)
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in coco_gt["annotations"]]
    metrics = coco_evaluate(coco_gt, perfect, backend=backend)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert metrics[key] == pytest.approx(1.0)
    per_class = metrics["per_class_AP"]
    assert [name for name, ap in per_class.items() if math.isnan(ap)] == ["class5"]  # no boxes of it
    assert all(ap == pytest.approx(1.0) for name, ap in per_class.items() if name != "class5")
    assert voc_map50(coco_gt, perfect) == pytest.approx(1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_predictions_give_zeros(backend):
    coco_gt, _ = _random_set(4)
    metrics = coco_evaluate(coco_gt, [], backend=backend)
    assert all(metrics[key] == 0.0 for key in COCO_METRICS)
    assert all(ap == 0.0 for name, ap in metrics["per_class_AP"].items() if name != "class5")
    assert voc_map50(coco_gt, []) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_predictions_leave_size_ranges_without_boxes_at_minus_one(backend):
    coco_gt = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50]}]}
    metrics = coco_evaluate(coco_gt, [], backend=backend)
    assert metrics["AP"] == metrics["APm"] == metrics["AR100"] == metrics["ARm"] == 0.0
    assert metrics["APs"] == metrics["APl"] == metrics["ARs"] == metrics["ARl"] == -1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_absent_size_range_is_minus_one_and_inputs_are_untouched(backend):
    coco_gt = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1, "name": "a"}, {"id": 5, "name": "b"}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50]}]}
    predictions = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9},
                   {"image_id": 2, "category_id": 5, "bbox": [0, 0, 20, 20], "score": 0.8}]
    before = copy.deepcopy((coco_gt, predictions))
    metrics = coco_evaluate(coco_gt, predictions, backend=backend)
    assert (coco_gt, predictions) == before
    assert metrics["AP"] == pytest.approx(1.0) and metrics["APm"] == pytest.approx(1.0)
    assert metrics["APs"] == metrics["APl"] == metrics["ARs"] == -1.0  # no ground truth of that size
    assert metrics["per_class_AP"]["a"] == pytest.approx(1.0) and math.isnan(metrics["per_class_AP"]["b"])


def test_predictions_for_unknown_images_raise():
    coco_gt, _ = _random_set(5)
    with pytest.raises(ValueError, match="image ids missing"):
        coco_evaluate(coco_gt, [{"image_id": 12345, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 1.0}])
    with pytest.raises(ValueError, match="backend="):
        coco_evaluate(coco_gt, [], backend="detectron2")


def test_without_faster_coco_eval_auto_falls_back_to_pycocotools(monkeypatch):
    coco_gt, predictions = _random_set(7, num_images=10)
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # makes `import faster_coco_eval` fail
    metrics = coco_evaluate(coco_gt, predictions, per_class=False)
    np.testing.assert_allclose([metrics[k] for k in COCO_METRICS], _pycocotools(coco_gt, predictions).stats, atol=1e-12)
    with pytest.raises(ImportError, match="pip install faster-coco-eval"):
        coco_evaluate(coco_gt, predictions, backend="faster_coco_eval")


@pytest.mark.parametrize("backend", BACKENDS)
def test_library_output_only_when_verbose(backend, capsys):
    coco_gt, predictions = _random_set(8, num_images=5)
    coco_evaluate(coco_gt, predictions, backend=backend)
    assert capsys.readouterr().out == ""
    coco_evaluate(coco_gt, predictions, verbose=True, backend=backend)
    printed = capsys.readouterr().out
    assert "Average Precision" in printed  # the library's own summary
    assert "class1" in printed and "AR100" in printed  # then our table, with per-class AP


def test_voc_map50_hand_computed():
    gt = {
        "images": [{"id": 1}, {"id": 2}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10]},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "difficult": 1},
            {"id": 4, "image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10]},
        ],
    }

    def det(image, category, box, score):
        return {"image_id": image, "category_id": category, "bbox": box, "score": score}

    predictions = [
        det(1, 1, [0, 0, 10, 10], 0.9),  # a: true positive
        det(1, 1, [1, 0, 10, 10], 0.8),  # a: duplicate of the same box -> false positive
        det(2, 1, [0, 0, 10, 10], 0.7),  # a: on a difficult box -> ignored
        det(2, 1, [80, 80, 5, 5], 0.6),  # a: nothing there -> false positive
        det(1, 1, [50, 50, 10, 10], 0.5),  # a: true positive
        det(2, 2, [0, 0, 10, 20], 0.9),  # b: IoU exactly 0.5 is not > 0.5 -> false positive
        det(1, 3, [0, 0, 10, 10], 0.9),  # c: no ground truth, class not averaged
    ]
    # a, by score, counted: TP FP FP TP with 2 positives -> recall .5 .5 .5 1, precision 1 .5 .33 .5
    # all-point AP = 0.5 * 1 + 0.5 * 0.5 = 0.75; b: AP 0; mean over a and b.
    assert voc_map50(gt, predictions) == pytest.approx((0.75 + 0.0) / 2)


def test_voc_map50_close_to_coco_ap50():
    """Both are AP at IoU 0.5; they differ only in interpolation (all points vs 101) and in IoU > vs >=."""
    coco_gt, predictions = _random_set(6, num_images=60, noise_boxes=5, crowd=0.0)
    voc, coco = voc_map50(coco_gt, predictions), coco_evaluate(coco_gt, predictions, per_class=False)["AP50"]
    assert 0.2 < coco < 0.9 and voc == pytest.approx(coco, abs=0.01)


def test_predictions_to_coco_converts_boxes_and_labels():
    results = [
        {"scores": torch.tensor([0.9, 0.4]), "labels": torch.tensor([0, 2]),
         "boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 5.0, 5.0]], dtype=torch.bfloat16)},
        {"scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
    ]
    for mapping in ({0: 1, 1: 3, 2: 7}, [1, 3, 7]):
        coco = predictions_to_coco(results, [42, 43], mapping)
        assert coco == [
            {"image_id": 42, "category_id": 1, "bbox": [10.0, 20.0, 20.0, 40.0], "score": pytest.approx(0.9)},
            {"image_id": 42, "category_id": 7, "bbox": [0.0, 0.0, 5.0, 5.0], "score": pytest.approx(0.4)},
        ]
    with pytest.raises(ValueError, match=r"labels \[2\]"):
        predictions_to_coco(results, [42, 43], {0: 1})
    with pytest.raises(ValueError, match="one id per result"):
        predictions_to_coco(results, [42], [1, 3, 7])


def test_format_metrics_table_lists_every_number():
    metrics = {**dict.fromkeys(COCO_METRICS, 0.5), "APs": -1.0, "VOC_mAP50": 0.625,
               "per_class_AP": {"circle": 0.25, "ring": math.nan}}
    table = format_metrics_table(metrics)
    assert len(table.splitlines()) == 1 + 12 + 1 + 2 + 2
    assert "AP50" in table and "0.5000" in table and "VOC_mAP50" in table and "0.6250" in table
    assert [line.split()[1] for line in table.splitlines() if line.startswith(("APs", "ring"))] == ["n/a", "n/a"]
    assert "circle" in table and "0.2500" in table


def _detection(image_id: int, category_id: int, bbox: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def test_duplicate_statistics_count_the_boxes_class_wise_nms_would_remove():
    predictions = [
        _detection(1, 1, [0, 0, 10, 10], 0.9),
        _detection(1, 1, [0, 0, 10, 11], 0.8),  # IoU 0.91 with the first: a duplicate
        _detection(1, 1, [0, 2, 10, 10], 0.7),  # IoU 0.67 with the first (kept), 0.75 with the removed second
        _detection(1, 2, [0, 0, 10, 10], 0.9),  # another class on the same spot: not a duplicate
        _detection(2, 1, [0, 0, 10, 10], 0.9),
        _detection(2, 1, [0, 0, 10, 10], 0.6),  # the same box again: a duplicate
        _detection(2, 1, [0, 0, 10, 10], 0.3),  # below the score threshold: ignored
        _detection(3, 1, [0, 0, 10, 10], 0.9),  # a third image, same box as image 2's: not a duplicate
    ]
    stats = duplicate_statistics(predictions)
    assert stats == {"detections": 7, "duplicate_pairs": 3, "duplicates": 2, "duplicate_rate": 2 / 7}
    assert duplicate_statistics(predictions, score_threshold=0.95)["detections"] == 0
    assert duplicate_statistics(predictions, iou_threshold=0.6)["duplicates"] == 3  # now the third overlaps too


def test_a_chain_of_overlaps_counts_only_what_nms_removes():
    # b overlaps a and c overlaps b, but c does not overlap a: NMS keeps a, removes b, then keeps c.
    predictions = [_detection(1, 1, [0, 0, 10, 10], 0.9), _detection(1, 1, [1, 0, 10, 10], 0.8),
                   _detection(1, 1, [2, 0, 10, 10], 0.7)]
    stats = duplicate_statistics(predictions, iou_threshold=0.75)
    assert stats["duplicate_pairs"] == 2 and stats["duplicates"] == 1
