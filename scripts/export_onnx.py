"""Export a trained DeTR-Lite model to ONNX, for ONNX Runtime (no PyTorch needed to run it).

    python scripts/export_onnx.py --model out/best --output model.onnx --postprocess
    python scripts/export_onnx.py --model out/best --output model.onnx --batch_size 1 --quantize int8

Inputs `pixel_values` (N, 3, S, S) and `pixel_mask` (N, S, S), as the image processor makes them; outputs
`logits` and `pred_boxes`, and with --postprocess also the top-k `scores`, `labels` and normalised `boxes`
(x0, y0, x1, y1) per image. The file's metadata holds id2label and the image processor's settings.
--quantize int8 also writes `<output stem>.int8.onnx`: dynamic int8 quantisation of the matrix products, or with
--calibration_images DIR static int8 of the convolutions too, calibrated on up to --calibration_size images from
DIR (training images, not the ones you evaluate on).

    python scripts/export_onnx.py --model out/best --output model.onnx --quantize int8 --calibration_images data/train
"""

import argparse
import sys
from pathlib import Path

from transformers import AutoImageProcessor, AutoModelForObjectDetection

import detr_lite
from detr_lite.onnx_export import DEFAULT_OPSET, calibration_files, export_onnx, quantize_int8


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder written by save_pretrained (with its processor)")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--batch_size", default="dynamic", help="a fixed batch size, or 'dynamic' (default)")
    parser.add_argument("--postprocess", action="store_true", help="also output the top-k scores, labels, boxes")
    parser.add_argument("--top_k", type=int, default=100, help="detections per image with --postprocess")
    parser.add_argument("--quantize", choices=["int8"], help="also write an int8 copy next to --output")
    parser.add_argument("--calibration_images", help="with --quantize int8: a folder of images for static int8 "
                        "(convolutions too; much faster on a CPU); without it, dynamic int8 of the matrix products")
    parser.add_argument("--calibration_size", type=int, default=64, help="images used from --calibration_images")
    return parser


def parse_batch_size(value: str) -> int | None:
    if value == "dynamic":
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--batch_size must be a positive integer or 'dynamic', got {value!r}.")
    return int(value)


def load(folder: str):
    """The model and processor of a saved DeTR-Lite folder, with an error that says what is wrong."""
    if not Path(folder).is_dir():
        raise ValueError(f"Model folder not found: {folder} (pass the folder written by save_pretrained).")
    try:
        model = AutoModelForObjectDetection.from_pretrained(folder)
        processor = AutoImageProcessor.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"Cannot load a model and image processor from {folder}: {error}") from None
    if not isinstance(model, detr_lite.DeTRLiteForObjectDetection):
        raise ValueError(f"{folder} holds a {type(model).__name__}, not a DeTR-Lite model; convert it first "
                         "(scripts/convert_detr_checkpoint.py).")
    return model, processor


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        calibration = None
        if args.calibration_images:
            if not args.quantize:
                raise ValueError("--calibration_images is for static int8: add --quantize int8.")
            calibration = calibration_files(args.calibration_images, args.calibration_size)
        batch_size = parse_batch_size(args.batch_size)
        model, processor = load(args.model)
        path = export_onnx(model, processor, args.output, opset=args.opset, batch_size=batch_size,
                           postprocess_top_k=args.top_k if args.postprocess else None)
    except ValueError as error:
        parser.error(str(error))
    print(f"Wrote {path}")
    if args.quantize:
        quantized = quantize_int8(path, path.with_suffix(".int8.onnx"), calibration_images=calibration)
        print(f"Wrote {quantized}")


if __name__ == "__main__":
    sys.exit(main())
