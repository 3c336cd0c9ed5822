"""Time pycocotools against faster-coco-eval on a synthetic COCO bbox evaluation and compare their numbers.

    python scripts/benchmark_coco_eval.py --num_images 5000 --dets_per_image 100 --output coco_eval_benchmark.json

The ground truth has COCO-like boxes (all three size ranges, ~1% crowd, some empty images, one
class without boxes); the detections are jittered copies of boxes, some with the wrong class,
padded with clutter to ``--dets_per_image`` per image. Each library gets its own copy of the
inputs (both write into them) and runs ``COCO`` -> ``loadRes`` -> ``evaluate`` -> ``accumulate``
-> ``summarize`` on the same data; faster-coco-eval does its accumulation inside ``evaluate``.
"""

import argparse
import contextlib
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from detr_lite.evaluation import COCO_METRICS

IMAGE_SIZE = 640


def synthetic_set(num_images: int, dets_per_image: int, num_classes: int, seed: int) -> tuple[dict, list[dict]]:
    """COCO ground truth and ``dets_per_image`` detections per image (needs ``num_classes >= 2``)."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "width": IMAGE_SIZE, "height": IMAGE_SIZE} for i in range(num_images)]
    categories = [{"id": k + 1, "name": f"class{k + 1}"} for k in range(num_classes)]
    annotations, predictions = [], []
    for image in images:
        count = rng.poisson(7)
        sizes = np.exp(rng.uniform(np.log(8), np.log(400), (count, 2)))  # (n, 2) w, h: small to large
        boxes = np.c_[rng.uniform(0, IMAGE_SIZE - sizes), sizes]  # (n, 4) xywh
        labels = rng.integers(1, num_classes, count)  # the last class never has a box
        for box, label in zip(boxes.tolist(), labels.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": label,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": int(rng.random() < 0.01)})
        copies = np.repeat(np.arange(count), rng.integers(0, 4, count))[:dets_per_image]
        spread = rng.uniform(0, 0.25, (len(copies), 1))  # per copy: from near-perfect to a poor fit
        jitter = rng.normal(0, spread, (len(copies), 4)) * boxes[copies][:, [2, 3, 2, 3]]
        wrong = rng.random(len(copies)) < 0.15
        clutter = dets_per_image - len(copies)
        clutter_sizes = np.exp(rng.uniform(np.log(8), np.log(300), (clutter, 2)))
        det_boxes = np.r_[boxes[copies] + jitter, np.c_[rng.uniform(0, IMAGE_SIZE - clutter_sizes), clutter_sizes]]
        det_labels = np.r_[np.where(wrong, rng.integers(1, num_classes + 1, len(copies)), labels[copies]),
                           rng.integers(1, num_classes + 1, clutter)]
        scores = np.r_[rng.uniform(0.3, 1.0, len(copies)), rng.uniform(0.0, 0.7, clutter)]
        predictions.extend(
            {"image_id": image["id"], "category_id": c, "bbox": b, "score": s}
            for c, b, s in zip(det_labels.tolist(), det_boxes.tolist(), scores.tolist())
        )
    return {"images": images, "annotations": annotations, "categories": categories}, predictions


def backends() -> dict:
    """Name -> (COCO class, COCOeval constructor) of each installed library."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    found = {"pycocotools": (COCO, COCOeval)}
    try:
        from faster_coco_eval import COCO as FasterCOCO
        from faster_coco_eval import COCOeval_faster
    except ImportError:
        print("faster-coco-eval is not installed (pip install faster-coco-eval); timing pycocotools only.",
              file=sys.stderr)
    else:
        found["faster_coco_eval"] = (FasterCOCO, COCOeval_faster)
    return found


def run(coco_api, coco_eval, coco_gt: dict, predictions: list[dict]) -> dict:
    """Wall times of each step, the 12 stats and per-class AP@[.5:.95] (None without ground truth)."""
    coco_gt, predictions = json.loads(json.dumps(coco_gt)), json.loads(json.dumps(predictions))  # own copies
    times = {}
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        gt = coco_api()
        gt.dataset = coco_gt
        gt.createIndex()
        evaluator = coco_eval(gt, gt.loadRes(predictions), "bbox")
        times["load"] = time.perf_counter() - start
        for step in ("evaluate", "accumulate", "summarize"):
            start = time.perf_counter()
            getattr(evaluator, step)()
            times[step] = time.perf_counter() - start
    times["total"] = sum(times.values())
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (T, R, K): area all, 100 detections
    per_class = [precision[..., k][precision[..., k] > -1] for k in range(precision.shape[2])]
    return {"seconds": times, "stats": [float(v) for v in evaluator.stats[:len(COCO_METRICS)]],
            "per_class_AP": [float(ap.mean()) if ap.size else None for ap in per_class]}


def max_abs_difference(a: list[float | None], b: list[float | None]) -> float:
    """Largest |a - b|, where None (no ground truth) must be None in both."""
    a, b = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return math.inf
    return float(np.abs(a - b)[~np.isnan(a)].max(initial=0.0))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_images", type=int, default=5000)
    parser.add_argument("--dets_per_image", type=int, default=100)
    parser.add_argument("--num_classes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="write the timings and numbers as JSON here")
    args = parser.parse_args(argv)
    if args.num_classes < 2 or args.num_images < 1 or args.dets_per_image < 1:
        parser.error("--num_classes must be >= 2 (one class is left without boxes); image and detection counts >= 1")
    coco_gt, predictions = synthetic_set(args.num_images, args.dets_per_image, args.num_classes, args.seed)
    print(f"{len(coco_gt['images'])} images, {len(coco_gt['annotations'])} boxes, {len(predictions)} detections, "
          f"{args.num_classes} classes")
    results = {name: run(*classes, coco_gt, predictions) for name, classes in backends().items()}
    print(f"\n{'library':<18}" + "".join(f"{step:>12}" for step in ("load", "evaluate", "accumulate", "total")))
    for name, result in results.items():
        seconds = result["seconds"]
        print(f"{name:<18}" + "".join(f"{seconds[s]:>11.2f}s" for s in ("load", "evaluate", "accumulate", "total")))
    report = {"args": {k: v for k, v in vars(args).items() if k != "output"}, "results": results}
    reference = results["pycocotools"]
    print("\n" + "  ".join(f"{k}={v:.4f}" for k, v in zip(COCO_METRICS, reference["stats"])))
    if "faster_coco_eval" in results:
        faster = results["faster_coco_eval"]
        report["max_abs_difference"] = {
            "stats": max_abs_difference(reference["stats"], faster["stats"]),
            "per_class_AP": max_abs_difference(reference["per_class_AP"], faster["per_class_AP"]),
        }
        report["speedup"] = reference["seconds"]["total"] / faster["seconds"]["total"]
        print(f"max |pycocotools - faster_coco_eval|: 12 stats {report['max_abs_difference']['stats']:.3g}, "
              f"per-class AP {report['max_abs_difference']['per_class_AP']:.3g}; "
              f"faster_coco_eval is {report['speedup']:.1f}x faster in total")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2))
        print(f"Written to {args.output}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
