"""COCO evaluation of a DeTR-Lite model (or of a COCO results file made elsewhere) on a dataset split.

    python scripts/evaluate.py --model out/best --data_dir data/coco --split val2017 --output metrics.json
    python scripts/evaluate.py --predictions results.json --data_dir data/coco --split val2017
    python scripts/evaluate.py --onnx model.int8.onnx --data_dir data/coco --split val2017   # ONNX Runtime, CPU
"""

import argparse
import json
import sys
from pathlib import Path

import torch

import detr_lite  # noqa: F401  (registers the Auto classes)
from detr_lite.data import load_detection_dataset
from detr_lite.evaluation import format_metrics_table
from detr_lite.inference import predict_dataset, score_predictions


def load_predictions(path: Path) -> list[dict]:
    try:
        predictions = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"--predictions {path}: cannot read a COCO results JSON ({error}).") from error
    required = {"image_id", "category_id", "bbox", "score"}
    if not isinstance(predictions, list) or any(not required <= set(p) for p in predictions[:1000]):
        raise SystemExit(f"--predictions {path}: expected a list of {{{', '.join(sorted(required))}}} objects.")
    return predictions


def model_predictions(model_dir: str, dataset, batch_size: int, device: str) -> list[dict]:
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    if not (Path(model_dir) / "config.json").is_file():
        raise SystemExit(f"--model {model_dir}: not a saved model folder (no config.json).")
    model = AutoModelForObjectDetection.from_pretrained(model_dir).to(device).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    match_classes(f"--model {model_dir}", model.config.id2label, dataset)
    return predict_dataset(model, processor, dataset, batch_size=batch_size, device=device)


def onnx_predictions(path: str, dataset, batch_size: int) -> list[dict]:
    from detr_lite.onnx_runtime import ONNXDetector, ONNXModule

    try:
        detector = ONNXDetector(path)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"--onnx {path}: {error}") from error
    match_classes(f"--onnx {path}", detector.id2label, dataset)
    return predict_dataset(ONNXModule(detector), detector.image_processor, dataset, batch_size=batch_size,
                           device="cpu")


def match_classes(source: str, id2label: dict[int, str], dataset) -> None:
    """Maps the model's labels to the dataset's category ids by class name (the two may number classes differently)."""
    model_labels = {name: index for index, name in id2label.items()}
    if set(model_labels) != set(dataset.id2label.values()):
        raise SystemExit(f"{source} predicts classes {sorted(model_labels)} but the dataset has "
                         f"{sorted(dataset.id2label.values())}: evaluate on data with the model's classes.")
    by_name = {name: dataset.label_to_category_id[label] for label, name in dataset.id2label.items()}
    dataset.label_to_category_id = {model_labels[name]: category for name, category in by_name.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a saved DeTR-Lite model folder")
    source.add_argument("--predictions", type=Path, help="a COCO results JSON made elsewhere")
    source.add_argument("--onnx", help="a file written by scripts/export_onnx.py (run with ONNX Runtime on the CPU)")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--output", type=Path, help="write the metrics as JSON here")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    try:
        dataset = load_detection_dataset(args.data_dir, args.split)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    if args.predictions:
        predictions = load_predictions(args.predictions)
    elif args.onnx:
        predictions = onnx_predictions(args.onnx, dataset, args.batch_size)
    else:
        predictions = model_predictions(args.model, dataset, args.batch_size, args.device)
    try:
        metrics = score_predictions(dataset, predictions, args.data_dir)
    except ValueError as error:
        raise SystemExit(f"{args.predictions or args.onnx or args.model}: {error}") from error
    print(format_metrics_table(metrics))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(metrics, indent=2))
        print(f"Metrics written to {args.output}", file=sys.stderr)
    return metrics


if __name__ == "__main__":
    main()
