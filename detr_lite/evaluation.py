"""Detection metrics: COCO AP/AR and Pascal VOC mAP@0.5.

Ground truth is a COCO-format dict (``images``, ``annotations``, ``categories``); predictions
are COCO result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` in
original-image pixels, as :func:`predictions_to_coco` makes them from post-processed outputs.
Neither input is modified.

The COCO numbers come from pycocotools' ``COCOeval`` (bbox), or from faster-coco-eval, whose
C++ ``COCOeval_faster`` gives the same numbers about four times faster
(``scripts/benchmark_coco_eval.py`` measures both). VOC's all-point AP is not in pycocotools,
so :func:`voc_map50` computes it here.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# pycocotools' summary order (``COCOeval.stats``), with what each number means.
COCO_METRICS = {
    "AP": "AP   IoU=0.50:0.95  area=all     maxDets=100",
    "AP50": "AP   IoU=0.50       area=all     maxDets=100",
    "AP75": "AP   IoU=0.75       area=all     maxDets=100",
    "APs": "AP   IoU=0.50:0.95  area=small   maxDets=100",
    "APm": "AP   IoU=0.50:0.95  area=medium  maxDets=100",
    "APl": "AP   IoU=0.50:0.95  area=large   maxDets=100",
    "AR1": "AR   IoU=0.50:0.95  area=all     maxDets=1",
    "AR10": "AR   IoU=0.50:0.95  area=all     maxDets=10",
    "AR100": "AR   IoU=0.50:0.95  area=all     maxDets=100",
    "ARs": "AR   IoU=0.50:0.95  area=small   maxDets=100",
    "ARm": "AR   IoU=0.50:0.95  area=medium  maxDets=100",
    "ARl": "AR   IoU=0.50:0.95  area=large   maxDets=100",
}
COCO_BACKENDS = ("auto", "pycocotools", "faster_coco_eval")


@dataclass
class _GroundTruth:
    """Annotations sorted by group (image index x categories + category index), input order within."""

    group: np.ndarray  # (g,)
    category: np.ndarray  # (g,) category index
    xywh: np.ndarray  # (g, 4)
    difficult: np.ndarray  # (g,) bool: VOC's difficult/ignore flags or crowd


@dataclass
class _Detections:
    """Detections sorted by group, then by decreasing score (input order breaks ties)."""

    group: np.ndarray  # (d,)
    category: np.ndarray  # (d,) category index
    xywh: np.ndarray  # (d, 4)
    score: np.ndarray  # (d,)


def coco_evaluate(
    coco_gt: dict,
    predictions: list[dict],
    per_class: bool = True,
    verbose: bool = False,
    backend: str = "auto",
) -> dict:
    """COCO bbox evaluation with pycocotools' ``COCOeval`` (or faster-coco-eval's, same numbers).

    Args:
        coco_gt: COCO-format ground truth. Annotations without ``area`` get their box area,
            without ``iscrowd`` get 0; crowd annotations are ignored regions, as in COCO.
        predictions: COCO result dicts; may be empty. Their ``image_id`` must be in ``coco_gt``.
        per_class: Also report AP@[.5:.95] per category.
        verbose: Let the library print its progress and summary, then print the metrics table.
        backend: ``"pycocotools"``, ``"faster_coco_eval"``, or ``"auto"``: faster-coco-eval
            when it is installed, pycocotools otherwise.

    Returns:
        The 12 COCO numbers as floats under the keys of :data:`COCO_METRICS`. As in
        pycocotools, a number whose area range holds no ground truth is -1 (with no detections
        at all, every range that has ground truth is 0). With ``per_class``,
        ``"per_class_AP"`` maps category name to AP, NaN for a category with no ground truth.
    """
    _check_image_ids(coco_gt, predictions)
    coco_api, coco_eval = _coco_backend(backend)
    with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
        gt = _indexed(coco_api(), _evaluated_ground_truth(coco_gt))
        evaluator = coco_eval(gt, _results_index(gt, coco_api, predictions), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics: dict[str, Any] = {key: float(value) for key, value in zip(COCO_METRICS, evaluator.stats)}
    if per_class:
        precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (T, R, K): area all, 100 detections
        names = [gt.cats[i]["name"] for i in evaluator.params.catIds]  # the K axis
        metrics["per_class_AP"] = {name: _mean_valid(precision[:, :, k]) for k, name in enumerate(names)}
    if verbose:
        print(format_metrics_table(metrics))
    return metrics


def voc_map50(coco_gt: dict, predictions: list[dict]) -> float:
    """Pascal VOC mAP@0.5: all-point interpolated AP per class, averaged over classes with GT.

    Follows the VOC devkit (VOC2010+ metric, but continuous box coordinates, without its +1
    pixel): detections of a class are taken by decreasing score; each is matched to the
    ground-truth box of its class in its image that it overlaps most; it is a true positive if
    that IoU is > 0.5 and the box is not yet matched, a false positive otherwise, and neither if
    the box is marked ``difficult``, ``ignore`` or ``iscrowd``.

    Returns:
        The mean AP over categories that have at least one non-ignored ground-truth box;
        NaN if there are none.
    """
    gt, dt, names = _flatten(coco_gt, predictions)
    pair_dt, pair_gt = _pairs(gt.group, dt.group)
    iou = _iou(dt.xywh[pair_dt], gt.xywh[pair_gt])
    starts = _segment_starts(pair_dt)
    best = _segment_first_argmax(iou, starts)  # per detection that has GT of its class
    dets, best_gt, hit = pair_dt[starts], pair_gt[best], iou[best] > 0.5
    counted = np.ones(len(dt.score), dtype=bool)
    counted[dets[hit & gt.difficult[best_gt]]] = False
    claims = np.flatnonzero(hit & ~gt.difficult[best_gt])
    _, first = np.unique(best_gt[claims], return_index=True)  # detections are in score order
    true_positive = np.zeros(len(dt.score), dtype=bool)
    true_positive[dets[claims[first]]] = True
    positives = np.bincount(gt.category[~gt.difficult], minlength=len(names))
    order = np.argsort(-dt.score, kind="stable")
    aps = []
    for k in np.flatnonzero(positives):
        rows = order[(dt.category[order] == k) & counted[order]]
        aps.append(_all_point_ap(true_positive[rows], positives[k]))
    return float(np.mean(aps)) if aps else math.nan


def predictions_to_coco(
    results: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int],
    label_to_category_id: Mapping[int, int] | Sequence[int],
) -> list[dict]:
    """Convert post-processed detections to COCO result dicts.

    Args:
        results: Per image ``{"scores": (n,), "labels": (n,), "boxes": (n, 4)}`` with boxes as
            absolute (x0, y0, x1, y1), as ``post_process_object_detection`` returns them
            (torch tensors, numpy arrays or lists).
        image_ids: The dataset image id of each result.
        label_to_category_id: The dataset category id of each contiguous model label.

    Returns:
        ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` per detection.
    """
    if len(results) != len(image_ids):
        raise ValueError(f"got {len(results)} results but {len(image_ids)} image ids; pass one id per result")
    coco_results = []
    for image_id, result in zip(image_ids, results):
        boxes = _numpy(result["boxes"]).astype(np.float64).reshape(-1, 4)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        categories = _category_ids(_numpy(result["labels"]).reshape(-1).tolist(), label_to_category_id)
        scores = _numpy(result["scores"]).astype(np.float64).reshape(-1).tolist()
        coco_results.extend(
            {"image_id": int(image_id), "category_id": c, "bbox": b, "score": s}
            for c, b, s in zip(categories, xywh.tolist(), scores)
        )
    return coco_results


def duplicate_statistics(predictions: Iterable[Mapping[str, Any]], score_threshold: float = 0.5,
                         iou_threshold: float = 0.7) -> dict:
    """How often a detector draws more than one box on one object (DETR should need no NMS).

    Among the detections scoring at least `score_threshold`, the *duplicates* are those that a class-wise
    NMS at `iou_threshold` would remove (torchvision's `batched_nms`): the extra boxes a user sees.

    Args:
        predictions: COCO result dicts (``image_id``, ``category_id``, ``bbox`` xywh, ``score``).

    Returns:
        ``detections`` (kept by the score threshold), ``duplicate_pairs`` (same-class pairs in one image
        with IoU above the threshold), ``duplicates`` and ``duplicate_rate`` (duplicates / detections).
    """
    import torch
    from torchvision.ops import batched_nms, box_iou

    kept = [p for p in predictions if p["score"] >= score_threshold]
    if not kept:
        return {"detections": 0, "duplicate_pairs": 0, "duplicates": 0, "duplicate_rate": 0.0}
    xywh = torch.as_tensor(_boxes(kept))
    boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)  # (n, 4) x0, y0, x1, y1
    scores = torch.tensor([p["score"] for p in kept], dtype=torch.float64)
    group = torch.as_tensor(np.unique(np.array([(p["image_id"], p["category_id"]) for p in kept]), axis=0,
                                      return_inverse=True)[1].reshape(-1))  # (n,) one id per image and class
    survivors = len(batched_nms(boxes, scores, group, iou_threshold))
    pairs = sum(int(torch.triu(box_iou(boxes[group == g], boxes[group == g]) > iou_threshold, diagonal=1).sum())
                for g in group.unique())
    return {"detections": len(kept), "duplicate_pairs": pairs, "duplicates": len(kept) - survivors,
            "duplicate_rate": (len(kept) - survivors) / len(kept)}


def format_metrics_table(metrics: dict) -> str:
    """A plain-text table of a metrics dict (COCO numbers, per-class AP, then any other numbers)."""
    lines = [f"{'metric':<10} {'value':>7}  meaning"]
    lines += [f"{k:<10} {_fmt(metrics[k]):>7}  {meaning}" for k, meaning in COCO_METRICS.items() if k in metrics]
    others = {k: v for k, v in metrics.items() if k not in COCO_METRICS and k != "per_class_AP"}
    lines += [f"{k:<10} {_fmt(v):>7}" for k, v in others.items()]
    per_class = metrics.get("per_class_AP") or {}
    if per_class:
        width = max(10, *(len(str(name)) for name in per_class))
        lines += ["", f"{'category':<{width}} {'AP':>7}  (IoU=0.50:0.95)"]
        lines += [f"{str(name):<{width}} {_fmt(ap):>7}" for name, ap in per_class.items()]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "n/a" if math.isnan(value) or value == -1 else f"{value:.4f}"
    return str(value)


def _check_image_ids(coco_gt: dict, predictions: Iterable[dict]) -> None:
    known = {image["id"] for image in coco_gt.get("images", [])}
    unknown = {p["image_id"] for p in predictions} - known
    if unknown:
        raise ValueError(
            f"predictions refer to {len(unknown)} image ids missing from the ground truth "
            f"(e.g. {sorted(unknown, key=str)[:5]}); evaluate against the split they were made on"
        )


def _categories(coco_gt: dict) -> list[dict]:
    """The evaluated categories in increasing id order, as pycocotools indexes them."""
    categories = sorted(coco_gt.get("categories", []), key=lambda c: c["id"])
    if not categories:
        raise ValueError("the ground truth lists no categories; add its 'categories' entries")
    return categories


def _coco_backend(backend: str) -> tuple[Callable, Callable]:
    """The ``COCO`` index class and the ``COCOeval(gt, dt, iou_type)`` constructor of a backend."""
    if backend not in COCO_BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {COCO_BACKENDS}")
    if backend != "pycocotools":
        try:
            from faster_coco_eval import COCO, COCOeval_faster
        except ImportError as error:
            if backend == "faster_coco_eval":
                raise ImportError("backend='faster_coco_eval' needs `pip install faster-coco-eval`") from error
        else:
            # Its messages go to a logger by default; print puts them under `verbose`, as pycocotools' are.
            return COCO, functools.partial(COCOeval_faster, print_function=print)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def _indexed(coco: Any, dataset: dict) -> Any:
    """A COCO index over a dict, without a file."""
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _evaluated_ground_truth(coco_gt: dict) -> dict:
    """A copy of what bbox evaluation reads from ``coco_gt``, with the defaults our docstring promises.

    A copy because pycocotools writes flags into the annotations; annotation ids are renumbered
    from 1 because the index is keyed by them (faster-coco-eval reads id 0 as "unmatched").
    """
    annotations = [
        {
            "id": n,
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": list(a["bbox"]),
            "area": a["area"] if "area" in a else a["bbox"][2] * a["bbox"][3],
            "iscrowd": int(a.get("iscrowd", 0)),
        }
        for n, a in enumerate(coco_gt.get("annotations", []), start=1)
    ]
    categories = [{"id": c["id"], "name": str(c.get("name", c["id"]))} for c in _categories(coco_gt)]
    images = [{"id": image["id"]} for image in coco_gt.get("images", [])]
    return {"images": images, "annotations": annotations, "categories": categories}


def _results_index(gt: Any, coco_api: Callable, predictions: list[dict]) -> Any:
    """``gt.loadRes`` of a copy of the predictions (it adds ``id``, ``area`` and a polygon to each).

    pycocotools' ``loadRes`` reads the first result, so no results is an empty index instead.
    """
    if not predictions:
        return _indexed(coco_api(), {**gt.dataset, "annotations": []})
    keys = ("image_id", "category_id", "score")
    return gt.loadRes([{**{k: p[k] for k in keys}, "bbox": list(p["bbox"])} for p in predictions])


def _mean_valid(values: np.ndarray) -> float:
    """Mean over entries that are not -1 (pycocotools' "absent"), as COCOeval.summarize; NaN when all are."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else math.nan


def _flatten(coco_gt: dict, predictions: list[dict]) -> tuple[_GroundTruth, _Detections, list[str]]:
    """Arrays of the evaluated annotations and detections, and the category names (by id).

    As pycocotools does, only categories listed in ``coco_gt`` are evaluated; images and
    categories are indexed in increasing id order.
    """
    _check_image_ids(coco_gt, predictions)
    categories = _categories(coco_gt)
    num_categories = len(categories)
    category_index = {c["id"]: k for k, c in enumerate(categories)}
    image_index = {i: n for n, i in enumerate(sorted({image["id"] for image in coco_gt.get("images", [])}))}

    def groups(items: list[dict]) -> np.ndarray:
        return np.array(
            [image_index[x["image_id"]] * num_categories + category_index[x["category_id"]] for x in items],
            dtype=np.int64,
        )

    anns = [a for a in coco_gt.get("annotations", []) if a["category_id"] in category_index]
    anns = [a for a in anns if a["image_id"] in image_index]
    group = groups(anns)
    order = np.argsort(group, kind="stable")
    difficult = np.array([bool(a.get("iscrowd") or a.get("difficult") or a.get("ignore")) for a in anns], dtype=bool)
    gt = _GroundTruth(
        group=group[order], category=group[order] % num_categories, xywh=_boxes(anns)[order], difficult=difficult[order]
    )
    preds = [p for p in predictions if p["category_id"] in category_index]
    score = np.array([p["score"] for p in preds], dtype=np.float64)
    order = np.lexsort((-score, groups(preds)))  # stable: equal scores keep their input order
    group = groups(preds)[order]
    dt = _Detections(group=group, category=group % num_categories, xywh=_boxes(preds)[order], score=score[order])
    return gt, dt, [str(c.get("name", c["id"])) for c in categories]


def _boxes(items: list[dict]) -> np.ndarray:
    return np.array([x["bbox"] for x in items], dtype=np.float64).reshape(-1, 4)


def _pairs(gt_group: np.ndarray, dt_group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (detection, ground truth) pair of the same group, by detection then ground truth."""
    start = np.searchsorted(gt_group, dt_group, side="left")
    counts = np.searchsorted(gt_group, dt_group, side="right") - start
    pair_dt = np.repeat(np.arange(len(dt_group)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return pair_dt, np.repeat(start, counts) + offsets


def _iou(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Row-wise IoU of xywh boxes (n, 4)."""
    w = np.minimum(dt[:, 0] + dt[:, 2], gt[:, 0] + gt[:, 2]) - np.maximum(dt[:, 0], gt[:, 0])
    h = np.minimum(dt[:, 1] + dt[:, 3], gt[:, 1] + gt[:, 3]) - np.maximum(dt[:, 1], gt[:, 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    union = dt[:, 2] * dt[:, 3] + gt[:, 2] * gt[:, 3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def _segment_starts(sorted_ids: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.diff(sorted_ids, prepend=-1) != 0) if len(sorted_ids) else np.zeros(0, dtype=np.int64)


def _segment_first_argmax(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per segment (rows ``starts[i]`` to ``starts[i + 1]``) of ``values`` (n,), the first row of its largest value."""
    if not len(starts):
        return np.zeros(0, dtype=np.int64)
    peak = np.maximum.reduceat(values, starts)
    at_peak = values == np.repeat(peak, np.diff(starts, append=len(values)))
    return np.minimum.reduceat(np.where(at_peak, np.arange(len(values)), len(values)), starts)


def _all_point_ap(true_positive: np.ndarray, positives: int) -> float:
    """Area under the precision envelope (VOC2010+), detections in decreasing score order."""
    tp = np.cumsum(true_positive)
    fp = np.cumsum(~true_positive)
    recall = np.concatenate([[0.0], tp / positives, [1.0]])
    precision = np.concatenate([[0.0], tp / np.maximum(tp + fp, 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(((recall[steps + 1] - recall[steps]) * precision[steps + 1]).sum())


def _numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor: bfloat16 has no numpy dtype
        values = values.detach().cpu()
        values = values.float() if values.is_floating_point() else values
        return values.numpy()
    return np.asarray(values)


def _category_ids(labels: list[int], label_to_category_id: Mapping[int, int] | Sequence[int]) -> list[int]:
    mapping = label_to_category_id
    if not isinstance(mapping, Mapping):
        mapping = dict(enumerate(mapping))
    missing = set(labels) - mapping.keys()
    if missing:
        raise ValueError(
            f"labels {sorted(missing)} have no category id in label_to_category_id; "
            "pass the mapping of every model label (e.g. the dataset's label_to_category_id)"
        )
    return [int(mapping[label]) for label in labels]
