"""Detection metrics: COCO AP/AR and Pascal VOC mAP@0.5.

Ground truth is a COCO-format dict (``images``, ``annotations``, ``categories``); predictions
are COCO result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` in
original-image pixels, as :func:`predictions_to_coco` makes them from post-processed outputs.
Neither input is modified.

The COCO numbers follow pycocotools' ``COCOeval`` (bbox) exactly (the tests compare against it),
but the per-image Python loops of ``evaluateImg``/``accumulate`` are replaced by array code
over all images and categories at once: 5000 images x 100 detections take seconds, not a minute.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

# pycocotools' summary order, with what each number means.
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
# pycocotools' Params for bbox evaluation, built the same way so the floats are identical.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # (T,)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # (R,)
AREA_RANGES = np.array([[0, 1e10], [0, 32**2], [32**2, 96**2], [96**2, 1e10]])  # (A, 2): all, s, m, l
MAX_DETECTIONS = (1, 10, 100)  # (M,) per image and category


@dataclass
class _GroundTruth:
    """Annotations sorted by group (image index x categories + category index), input order within."""

    group: np.ndarray  # (g,)
    category: np.ndarray  # (g,) category index
    xywh: np.ndarray  # (g, 4)
    area: np.ndarray  # (g,) the annotation's area: COCO's size ranges use it
    crowd: np.ndarray  # (g,) bool
    difficult: np.ndarray  # (g,) bool: VOC's difficult/ignore flags or crowd


@dataclass
class _Detections:
    """Detections sorted by group, then by decreasing score (input order breaks ties)."""

    group: np.ndarray  # (d,)
    image: np.ndarray  # (d,) image index
    category: np.ndarray  # (d,) category index
    xywh: np.ndarray  # (d, 4)
    score: np.ndarray  # (d,)
    rank: np.ndarray  # (d,) position within its group

    def subset(self, keep: np.ndarray) -> _Detections:
        return _Detections(*(getattr(self, f.name)[keep] for f in fields(self)))


def coco_evaluate(
    coco_gt: dict, predictions: list[dict], per_class: bool = True, verbose: bool = False
) -> dict:
    """COCO bbox evaluation, numerically the same as pycocotools' ``COCOeval``.

    Args:
        coco_gt: COCO-format ground truth. Annotations without ``area`` get their box area,
            without ``iscrowd`` get 0; crowd annotations are ignored regions, as in COCO.
        predictions: COCO result dicts; may be empty. Their ``image_id`` must be in ``coco_gt``.
        per_class: Also report AP@[.5:.95] per category.
        verbose: Print the metrics table.

    Returns:
        The 12 COCO numbers as floats under the keys of :data:`COCO_METRICS`. As in
        pycocotools, a number whose area range holds no ground truth is -1 (with no detections
        at all, every range that has ground truth is 0). With ``per_class``,
        ``"per_class_AP"`` maps category name to AP, NaN for a category with no ground truth.
    """
    gt, dt, names = _flatten(coco_gt, predictions)
    dt = dt.subset(dt.rank < MAX_DETECTIONS[-1])
    gt_ignored = gt.crowd[:, None] | _outside_area_ranges(gt.area)  # (g, A)
    matched_gt = _match_coco(gt, dt, gt_ignored)  # (d, A, T)
    matched = matched_gt >= 0
    ignored_match = gt_ignored[np.maximum(matched_gt, 0), np.arange(len(AREA_RANGES))[:, None]]
    outside = _outside_area_ranges(dt.xywh[:, 2] * dt.xywh[:, 3])[..., None]  # (d, A, 1)
    dt_ignored = np.where(matched, ignored_match, outside)  # (d, A, T)
    precision, recall = _accumulate(gt, gt_ignored, dt, matched, dt_ignored, len(names))
    metrics: dict[str, Any] = dict(zip(COCO_METRICS, _summarize(precision, recall)))
    if per_class:
        class_ap = (_mean_valid(precision[:, :, k, 0, -1]) for k in range(len(names)))  # area all, 100 dets
        metrics["per_class_AP"] = {name: math.nan if ap == -1 else ap for name, ap in zip(names, class_ap)}
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
    iou = _iou(dt.xywh[pair_dt], gt.xywh[pair_gt], np.zeros(len(pair_gt), dtype=bool))
    starts = _segment_starts(pair_dt)
    best = _segment_argmax(iou, starts, last=False)  # per detection that has GT of its class
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


def _flatten(coco_gt: dict, predictions: list[dict]) -> tuple[_GroundTruth, _Detections, list[str]]:
    """Arrays of the evaluated annotations and detections, and the category names (by id).

    As pycocotools does, only categories listed in ``coco_gt`` are evaluated; images and
    categories are indexed in increasing id order.
    """
    _check_image_ids(coco_gt, predictions)
    categories = sorted(coco_gt.get("categories", []), key=lambda c: c["id"])
    if not categories:
        raise ValueError("the ground truth lists no categories; add its 'categories' entries")
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
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)[order]
    flagged = np.array([bool(a.get("difficult") or a.get("ignore")) for a in anns], dtype=bool)[order]
    area = np.array([a["area"] if "area" in a else a["bbox"][2] * a["bbox"][3] for a in anns], dtype=np.float64)
    gt = _GroundTruth(
        group=group[order],
        category=group[order] % num_categories,
        xywh=_boxes(anns)[order],
        area=area[order],
        crowd=crowd,
        difficult=crowd | flagged,
    )
    preds = [p for p in predictions if p["category_id"] in category_index]
    score = np.array([p["score"] for p in preds], dtype=np.float64)
    order = np.lexsort((-score, groups(preds)))  # stable: equal scores keep their input order
    group = groups(preds)[order]
    dt = _Detections(
        group=group,
        image=group // num_categories,
        category=group % num_categories,
        xywh=_boxes(preds)[order],
        score=score[order],
        rank=np.arange(len(group)) - np.searchsorted(group, group),
    )
    return gt, dt, [str(c.get("name", c["id"])) for c in categories]


def _boxes(items: list[dict]) -> np.ndarray:
    return np.array([x["bbox"] for x in items], dtype=np.float64).reshape(-1, 4)


def _outside_area_ranges(area: np.ndarray) -> np.ndarray:
    """(n, A) whether each area falls outside each of COCO's size ranges (bounds inclusive)."""
    return (area[:, None] < AREA_RANGES[:, 0]) | (area[:, None] > AREA_RANGES[:, 1])


def _pairs(gt_group: np.ndarray, dt_group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (detection, ground truth) pair of the same group, by detection then ground truth."""
    start = np.searchsorted(gt_group, dt_group, side="left")
    counts = np.searchsorted(gt_group, dt_group, side="right") - start
    pair_dt = np.repeat(np.arange(len(dt_group)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return pair_dt, np.repeat(start, counts) + offsets


def _iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """Row-wise IoU of xywh boxes (n, 4); for a crowd box, intersection over the detection's area."""
    w = np.minimum(dt[:, 0] + dt[:, 2], gt[:, 0] + gt[:, 2]) - np.maximum(dt[:, 0], gt[:, 0])
    h = np.minimum(dt[:, 1] + dt[:, 3], gt[:, 1] + gt[:, 3]) - np.maximum(dt[:, 1], gt[:, 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    dt_area, gt_area = dt[:, 2] * dt[:, 3], gt[:, 2] * gt[:, 3]
    union = np.where(crowd, dt_area, dt_area + gt_area - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def _segment_starts(sorted_ids: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.diff(sorted_ids, prepend=-1) != 0) if len(sorted_ids) else np.zeros(0, dtype=np.int64)


def _segment_argmax(values: np.ndarray, starts: np.ndarray, last: bool) -> np.ndarray:
    """Per segment (rows ``starts[i]`` to ``starts[i + 1]``), the row of its largest value among
    values >= 0 (the last or the first of equal ones), -1 where there is none."""
    if not len(starts):
        return np.zeros((0, *values.shape[1:]), dtype=np.int64)
    peak = np.maximum.reduceat(values, starts, axis=0)
    at_peak = (values == np.repeat(peak, np.diff(starts, append=len(values)), axis=0)) & (values >= 0)
    rows = np.arange(len(values)).reshape(-1, *(1,) * (values.ndim - 1))
    if last:
        return np.maximum.reduceat(np.where(at_peak, rows, -1), starts, axis=0)
    first = np.minimum.reduceat(np.where(at_peak, rows, len(values)), starts, axis=0)
    return np.where(first < len(values), first, -1)


def _match_coco(gt: _GroundTruth, dt: _Detections, gt_ignored: np.ndarray) -> np.ndarray:
    """(d, A, T) the ground truth each detection matches, -1 for none (pycocotools' evaluateImg).

    At every IoU threshold and area range, the detections of one image and category take, in
    decreasing score order, the free box they overlap most with IoU >= threshold, regular boxes
    before ignored ones (crowd, or outside the area range), the later box on a tie; crowd boxes
    are never used up. The r-th detections of different (image, category) groups never compete
    for a box, so all detections of rank r are matched in one step.
    """
    pair_dt, pair_gt = _pairs(gt.group, dt.group)
    iou = _iou(dt.xywh[pair_dt], gt.xywh[pair_gt], gt.crowd[pair_gt])[:, None, None]  # (p, 1, 1)
    preference = np.where(gt_ignored, 2.0, 4.0)[..., None]  # (g, A, 1): an offset larger than any IoU
    taken = np.zeros((len(gt.group), len(AREA_RANGES), len(IOU_THRESHOLDS)), dtype=bool)
    matched = np.full((len(dt.group), len(AREA_RANGES), len(IOU_THRESHOLDS)), -1, dtype=np.int64)
    pair_rank = dt.rank[pair_dt]
    by_rank = np.argsort(pair_rank, kind="stable")
    bounds = np.searchsorted(pair_rank[by_rank], np.arange(pair_rank.max(initial=-1) + 2))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        pairs = by_rank[lo:hi]
        dets, gts = pair_dt[pairs], pair_gt[pairs]
        free = ~taken[gts] | gt.crowd[gts, None, None]
        key = np.where(free & (iou[pairs] >= IOU_THRESHOLDS), iou[pairs] + preference[gts], -1.0)  # (p, A, T)
        starts = _segment_starts(dets)
        best = _segment_argmax(key, starts, last=True)  # (s, A, T)
        s, a, t = np.nonzero(best >= 0)
        taken[gts[best[s, a, t]], a, t] = True
        matched[dets[starts[s]], a, t] = gts[best[s, a, t]]
    return matched


def _accumulate(
    gt: _GroundTruth,
    gt_ignored: np.ndarray,
    dt: _Detections,
    matched: np.ndarray,
    dt_ignored: np.ndarray,
    num_categories: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Precision (T, R, K, A, M) at the recall thresholds and final recall (T, K, A, M), as
    pycocotools' accumulate; -1 where a category has no regular ground truth in an area range."""
    shape = (len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), num_categories, len(AREA_RANGES), len(MAX_DETECTIONS))
    precision, recall = -np.ones(shape), -np.ones(shape[:1] + shape[2:])
    positives = np.zeros((num_categories, len(AREA_RANGES)), dtype=np.int64)  # (K, A)
    np.add.at(positives, gt.category, ~gt_ignored)
    true_positive, false_positive = matched & ~dt_ignored, ~matched & ~dt_ignored  # (d, A, T)
    order = np.lexsort((dt.rank, dt.image, -dt.score))  # pycocotools' tie order: image, then rank
    for k in range(num_categories):
        rows_k = order[dt.category[order] == k]
        for m, max_detections in enumerate(MAX_DETECTIONS):
            rows = rows_k[dt.rank[rows_k] < max_detections]
            tp = np.cumsum(true_positive[rows], axis=0, dtype=np.float64)  # (n, A, T)
            fp = np.cumsum(false_positive[rows], axis=0, dtype=np.float64)
            for a in np.flatnonzero(positives[k]):
                precision[:, :, k, a, m], recall[:, k, a, m] = _precision_recall(tp[:, a], fp[:, a], positives[k, a])
    return precision, recall


def _precision_recall(tp: np.ndarray, fp: np.ndarray, positives: int) -> tuple[np.ndarray, np.ndarray]:
    """From cumulative (n, T) counts: precision (T, R) at the recall thresholds, recall (T,)."""
    if not len(tp):
        return np.zeros((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS))), np.zeros(len(IOU_THRESHOLDS))
    recall = tp / positives
    precision = tp / (fp + tp + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1], axis=0)[::-1]  # best precision at >= this recall
    sampled = np.zeros((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)))
    for t in range(len(IOU_THRESHOLDS)):
        rows = np.searchsorted(recall[:, t], RECALL_THRESHOLDS, side="left")
        reached = rows < len(recall)
        sampled[t, reached] = precision[rows[reached], t]
    return sampled, recall[-1]


def _summarize(precision: np.ndarray, recall: np.ndarray) -> list[float]:
    """The 12 numbers of :data:`COCO_METRICS` (pycocotools' summarize)."""
    all_areas, hundred = 0, len(MAX_DETECTIONS) - 1
    iou_50, iou_75 = np.flatnonzero(IOU_THRESHOLDS == 0.5)[0], np.flatnonzero(IOU_THRESHOLDS == 0.75)[0]
    return [
        _mean_valid(precision[:, :, :, all_areas, hundred]),
        _mean_valid(precision[iou_50, :, :, all_areas, hundred]),
        _mean_valid(precision[iou_75, :, :, all_areas, hundred]),
        *(_mean_valid(precision[:, :, :, a, hundred]) for a in (1, 2, 3)),
        *(_mean_valid(recall[:, :, all_areas, m]) for m in range(len(MAX_DETECTIONS))),
        *(_mean_valid(recall[:, :, a, hundred]) for a in (1, 2, 3)),
    ]


def _mean_valid(values: np.ndarray) -> float:
    """Mean over entries that are not -1 (pycocotools' "absent"); -1 when all are."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


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
