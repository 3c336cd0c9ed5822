"""Detect objects with a trained DeTR-Lite model: one detections.json and an annotated image per input.

    python scripts/predict.py --model out/best street.jpg photos/ --output_dir predictions
    python scripts/predict.py --model out/best photos/ --attention    # + decoder attention of the top detections
    python scripts/predict.py --onnx model.onnx photos/               # ONNX Runtime (scripts/export_onnx.py)

Folders are searched recursively for .jpg/.jpeg/.png/.bmp/.webp files. Unreadable images are skipped
with a warning. Outputs: `detections.json` ({image path: [{label, label_id, score, box [x0, y0, x1, y1]
in pixels}]}), `<stem>_pred.jpg` per image (sub-folders of an input folder are mirrored) and, with
--attention, `<stem>_attn_<k>.jpg`: where the last decoder layer looks for the k-th best detection.
"""

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps
from tqdm import tqdm
from transformers import AutoImageProcessor, AutoModelForObjectDetection

import detr_lite  # noqa: F401  (registers DeTR-Lite with the Auto classes)
from detr_lite.visualization import attention_overlay, draw_detections, query_attention_map

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class ImageJob:
    path: Path  # the image file, as found
    stem: Path  # output name without suffix, relative to --output_dir


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        jobs = find_images(args.inputs)
        device = pick_device(args.device)
        if not 0.0 <= args.threshold < 1.0:
            raise ValueError(f"--threshold must be in [0, 1), got {args.threshold}.")
        if args.batch_size < 1 or args.attention_top_k < 1:
            raise ValueError("--batch_size and --attention_top_k must be at least 1.")
        if (args.model is None) == (args.onnx is None):
            raise ValueError("Pass exactly one of --model (a saved folder) and --onnx (an exported file).")
        if args.onnx and args.attention:
            raise ValueError("--attention needs the PyTorch model (--model): an ONNX file has no attention maps.")
        model, processor = load_onnx(args.onnx) if args.onnx else load_model(args.model, device)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    output_dir = Path(args.output_dir)
    attention_top_k = args.attention_top_k if args.attention else 0
    detections, skipped = predict(model, processor, jobs, output_dir, args.threshold, args.batch_size, attention_top_k)
    (output_dir / "detections.json").write_text(json.dumps(detections, indent=2))
    attention = " and attention maps (<stem>_attn_<k>.jpg)" if args.attention else ""
    print(f"Detections for {len(detections)} image(s): {output_dir / 'detections.json'}")
    print(f"Annotated images (<stem>_pred.jpg){attention}: {output_dir}")
    if skipped:
        print(f"Skipped {len(skipped)} unreadable image(s): {', '.join(skipped)}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder written by save_pretrained (with its processor)")
    parser.add_argument("--onnx", help="instead of --model: a file written by scripts/export_onnx.py")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    parser.add_argument("--threshold", type=float, default=0.5, help="keep detections scoring above this")
    parser.add_argument("--output_dir", default="predictions")
    parser.add_argument("--attention", action="store_true", help="also write decoder attention maps")
    parser.add_argument("--attention_top_k", type=int, default=5, help="attention maps per image (best first)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    return parser


def find_images(inputs: list[str]) -> list[ImageJob]:
    """Files as given, plus every image under each folder; output names mirror the folder's tree."""
    jobs, seen = [], set()
    for name in inputs:
        root = Path(name)
        if root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise FileNotFoundError(f"No images ({', '.join(IMAGE_SUFFIXES)}) found under folder {root}.")
            found = [(path, path.relative_to(root).with_suffix("")) for path in files]
        elif root.is_file():
            found = [(root, Path(root.stem))]
        else:
            raise FileNotFoundError(f"Input not found: {root}")
        for path, stem in found:
            if path.resolve() not in seen:
                seen.add(path.resolve())
                jobs.append(ImageJob(path, stem))
    return _unique_stems(jobs)


def _unique_stems(jobs: list[ImageJob]) -> list[ImageJob]:
    """Suffix _2, _3, ... to repeated output names (a.jpg next to a.png, same names in two folders)."""
    taken = set()
    for job in jobs:
        stem, count = job.stem, 1
        while stem in taken:
            count += 1
            stem = job.stem.with_name(f"{job.stem.name}_{count}")
        taken.add(stem)
        job.stem = stem
    return jobs


def pick_device(name: str | None) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA GPU; use --device cpu.")
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_model(folder: str, device: torch.device) -> tuple[Any, Any]:
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"Model folder not found: {folder} (pass the folder written by save_pretrained).")
    try:
        model = AutoModelForObjectDetection.from_pretrained(folder)
        processor = AutoImageProcessor.from_pretrained(folder)
    except OSError as error:
        raise FileNotFoundError(f"Cannot load a model and image processor from {folder}: {error}") from None
    model.eval().fold_batch_norm()  # inference only: the same outputs, a faster backbone
    return model.to(device), processor


def load_onnx(path: str) -> tuple[Any, Any]:
    """An ONNX Runtime detector and the image processor stored in its file."""
    from detr_lite.onnx_runtime import ONNXDetector

    detector = ONNXDetector(path)
    return detector, detector.image_processor


def predict(
    model: Any,
    processor: Any,
    jobs: list[ImageJob],
    output_dir: Path,
    threshold: float,
    batch_size: int,
    attention_top_k: int,
) -> tuple[dict[str, list[dict]], list[str]]:
    """Run batched inference and write the pictures; returns the JSON content and the skipped paths."""
    detections, skipped = {}, []
    with tqdm(total=len(jobs), unit="image", disable=len(jobs) < 2) as progress:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            batch = []
            for job in chunk:
                image = read_image(job.path)
                if image is None:
                    skipped.append(str(job.path))
                else:
                    batch.append((job, image))
            if batch:
                detections.update(predict_batch(model, processor, batch, output_dir, threshold, attention_top_k))
            progress.update(len(chunk))
    return detections, skipped


def read_image(path: Path) -> Image.Image | None:
    """The upright (EXIF-rotated) image, or None with a warning naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        tqdm.write(f"warning: skipping {path}: not a readable image ({error})", file=sys.stderr)
        return None


@torch.inference_mode()
def predict_batch(
    model: Any,
    processor: Any,
    batch: list[tuple[ImageJob, Image.Image]],
    output_dir: Path,
    threshold: float,
    attention_top_k: int,
) -> dict[str, list[dict]]:
    """Detections of one batch, keyed by image path; writes its annotated (and attention) images."""
    images = [image for _, image in batch]
    inputs = processor(images, return_tensors="pt")
    if isinstance(model, torch.nn.Module):
        outputs = model(**inputs.to(model.device), output_attentions=attention_top_k > 0)
        id2label = model.config.id2label
    else:  # an ONNXDetector
        outputs = model.forward(inputs["pixel_values"], inputs["pixel_mask"])
        id2label = model.id2label
    sizes = [(image.height, image.width) for image in images]
    results = processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes)
    detections = {}
    for index, ((job, image), result) in enumerate(zip(batch, results)):
        result = _to_cpu(result)
        detections[str(job.path)] = json_entries(result, id2label)
        save(draw_detections(image, result, id2label), output_dir / f"{job.stem}_pred.jpg")
        queries = top_queries(processor, outputs, index, sizes[index], threshold, attention_top_k)
        for rank, (query, detection) in enumerate(queries):
            heat = attention_overlay(
                image, query_attention_map(outputs, index, query), feature_mask=outputs.feature_mask[index]
            )
            save(draw_detections(heat, detection, id2label), output_dir / f"{job.stem}_attn_{rank}.jpg")
    return detections


def top_queries(
    processor: Any, outputs: Any, index: int, size: tuple[int, int], threshold: float, k: int
) -> list[tuple[int, dict]]:
    """The k best detections of image `index` as (query index, one-detection result), best first.

    Each query is post-processed as its own one-query "image", so the processor's own scoring and
    threshold decide, and we learn which query made which detection.
    """
    if k == 0:
        return []
    logits, boxes = outputs.logits[index, :, None], outputs.pred_boxes[index, :, None]  # (Q, 1, C + 1), (Q, 1, 4)
    per_query = processor.post_process_object_detection(
        {"logits": logits, "pred_boxes": boxes}, threshold=threshold, target_sizes=[size] * len(logits)
    )
    found = [(query, _to_cpu(result)) for query, result in enumerate(per_query) if len(result["scores"])]
    found.sort(key=lambda item: -float(item[1]["scores"][0]))
    return found[:k]


def json_entries(result: dict[str, torch.Tensor], id2label: dict[int, str]) -> list[dict]:
    """One post-processed result → [{label, label_id, score, box [x0, y0, x1, y1]}], rounded for reading."""
    rows = zip(result["scores"].tolist(), result["labels"].tolist(), result["boxes"].tolist())
    return [
        {"label": id2label.get(label, str(label)), "label_id": label, "score": round(score, 4),
         "box": [round(v, 2) for v in box]}
        for score, label, box in rows
    ]


def _to_cpu(result: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.cpu() for key, value in result.items()}


def save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=92)


if __name__ == "__main__":
    main()
