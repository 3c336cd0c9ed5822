"""Export a DeTR-Lite model to ONNX, optionally with its post-processing inside the graph, and quantise it to int8.

The exported graph takes the image processor's `pixel_values` (N, 3, S, S) and `pixel_mask` (N, S, S) and
returns `logits` and `pred_boxes` as the PyTorch model does. With post-processing it also returns, per image,
the `top_k` best `scores`, `labels` and `boxes` (x0, y0, x1, y1), sorted by score. The boxes are normalised to
each image's unpadded extent, which the model's own box convention already is: the pixel mask tells the graph
where the letterbox padding lies (position embedding and attention), so a consumer multiplies by the original
width and height and needs no Python. The file's metadata carries `id2label` and the image processor's settings.

onnx is imported when a function here runs, so the files that travel with a saved model never need it.
"""

import copy
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .box_ops import center_to_corners
from .image_processing_detr_lite import DeTRLiteImageProcessor
from .modeling_detr_lite import DeTRLiteForObjectDetection

DEFAULT_OPSET = 17
FORMAT_KEY = "detr_lite_format"  # metadata key that marks a file written by this exporter
FORMAT_VERSION = "1"
INPUT_NAMES = ["pixel_values", "pixel_mask"]
OUTPUT_NAMES = ["logits", "pred_boxes"]
POSTPROCESS_OUTPUT_NAMES = ["scores", "labels", "boxes"]


class _ExportedDetector(nn.Module):
    """The model as the graph sees it: tensors in, a tuple of tensors out."""

    def __init__(self, model: DeTRLiteForObjectDetection, top_k: int | None):
        super().__init__()
        self.model = model
        self.top_k = top_k

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        if self.top_k is None:
            return outputs.logits, outputs.pred_boxes
        return (outputs.logits, outputs.pred_boxes, *top_detections(outputs.logits, outputs.pred_boxes, self.top_k))


def top_detections(
    logits: torch.Tensor, pred_boxes: torch.Tensor, top_k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k best queries per image, scored as `DeTRLiteImageProcessor.post_process_object_detection` scores them.

    Args:
        logits: (B, Q, C + 1) class logits, the last class being no-object.
        pred_boxes: (B, Q, 4) boxes (cx, cy, w, h) normalised to the unpadded image.
        top_k: detections kept per image; at most Q.

    Returns:
        scores (B, k) float, labels (B, k) int64, boxes (B, k, 4) as normalised (x0, y0, x1, y1) in [0, 1],
        sorted by descending score.
    """
    scores, labels = logits.softmax(-1)[..., :-1].max(-1)  # (B, Q) each
    top_scores, order = scores.topk(min(top_k, scores.shape[1]), dim=1)  # (B, k)
    boxes = center_to_corners(pred_boxes).clamp(0.0, 1.0)  # (B, Q, 4)
    top_boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))  # (B, k, 4)
    return top_scores, labels.gather(1, order), top_boxes


def export_onnx(
    model: DeTRLiteForObjectDetection,
    image_processor: DeTRLiteImageProcessor,
    output: str | Path,
    opset: int = DEFAULT_OPSET,
    batch_size: int | None = None,
    postprocess_top_k: int | None = None,
) -> Path:
    """Write `model` as an ONNX file that passes `onnx.checker` with full shape inference.

    The model is exported in eval mode with its batch norms folded into the convolutions (a copy; `model` is
    left as it is). The pixel mask always enters the graph, so padded and unpadded images take the same path.

    Args:
        model: a DeTR-Lite detector (learned or encoder queries, any backbone).
        image_processor: its processor; the canvas size comes from here and its settings go into the metadata.
        output: the .onnx file to write.
        opset: ONNX opset version (at least 14, for attention).
        batch_size: a fixed batch size, or None for a dynamic batch axis.
        postprocess_top_k: also return the top-k `scores`, `labels` and `boxes` per image; None for
            `logits` and `pred_boxes` only.

    Returns:
        The path written.
    """
    if opset < 14:
        raise ValueError(f"opset must be at least 14 (scaled dot-product attention), got {opset}.")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None (dynamic), got {batch_size}.")
    if postprocess_top_k is not None and postprocess_top_k < 1:
        raise ValueError(f"postprocess_top_k must be a positive integer or None, got {postprocess_top_k}.")
    frozen = copy.deepcopy(model).eval()
    frozen.fold_batch_norm()
    detector = _ExportedDetector(frozen, postprocess_top_k).eval()
    output_names = OUTPUT_NAMES + (POSTPROCESS_OUTPUT_NAMES if postprocess_top_k else [])
    dynamic_axes = None if batch_size else {name: {0: "batch"} for name in INPUT_NAMES + output_names}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            detector, example_inputs(image_processor.canvas_size, batch_size or 2), str(output), dynamo=False,
            opset_version=opset, input_names=INPUT_NAMES, output_names=output_names, dynamic_axes=dynamic_axes,
        )
    _write_metadata(output, model.config.id2label, image_processor)
    return output


def example_inputs(size: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tracing inputs: random pixels, the last image letterboxed (padding bottom and right) when batch > 1."""
    pixel_values = torch.randn(batch_size, 3, size, size)
    pixel_mask = torch.ones(batch_size, size, size, dtype=torch.long)
    if batch_size > 1:
        pixel_mask[-1, size * 3 // 4 :] = 0
        pixel_mask[-1, :, size // 2 :] = 0
    return pixel_values, pixel_mask


def _write_metadata(path: Path, id2label: dict, image_processor: DeTRLiteImageProcessor) -> None:
    """Adds id2label and the processor's settings to the file's metadata_props, then runs the full checker."""
    import onnx

    graph = onnx.load(str(path))
    metadata = {
        FORMAT_KEY: FORMAT_VERSION,
        "id2label": json.dumps({str(key): value for key, value in id2label.items()}),
        "image_processor": image_processor.to_json_string(),
    }
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(path))


def processor_from_metadata(metadata: dict[str, str], path: str | Path) -> DeTRLiteImageProcessor:
    """The image processor that `export_onnx` stored in a file's metadata; a ValueError naming `path` if the file
    was not written by it."""
    if metadata.get(FORMAT_KEY) is None:
        raise ValueError(
            f"{path} has no DeTR-Lite metadata ({FORMAT_KEY}, id2label, image_processor): it was not written "
            "by detr_lite's exporter. Export the model again with scripts/export_onnx.py.")
    return DeTRLiteImageProcessor.from_dict(json.loads(metadata["image_processor"]))


def quantize_int8(
    source: str | Path,
    output: str | Path,
    calibration_images: Sequence[str | Path] | None = None,
    op_types: Sequence[str] | None = None,
) -> Path:
    """An int8 copy of a file written by `export_onnx`, its metadata kept.

    Without calibration images, dynamic quantisation: the weights of the matrix products (MatMul/Gemm, the
    transformer) become int8 and their activations are quantised per batch at run time. No data is needed, but the
    backbone's convolutions, most of the time, stay in float.

    With calibration images, static quantisation (QDQ) of the convolutions too, which ONNX Runtime then runs with
    int8 kernels: weights int8 per output channel, activations uint8 over the range (min to max) that those
    images, run through the file's own image processor, produce. Weights and activations use 7 of their 8 bits
    (`reduce_range`): without it the int8 kernels of CPUs without VNNI (AVX2) can saturate, which cost 3.5 points
    of AP50 on BCCD val against 1.0 with it. Use a few dozen images like the ones the model will see (training
    images, not the ones you evaluate on).

    Args:
        source: an fp32 file written by `export_onnx`.
        output: the int8 file to write.
        calibration_images: image files for static quantisation; None for dynamic.
        op_types: the operator types quantised, everything else staying in float; None for the default of the
            mode (dynamic: MatMul, Gemm; static: Conv).

    Returns:
        The path written.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, output = Path(source), Path(output)
    if calibration_images is None:
        quantize_dynamic(str(source), str(output), op_types_to_quantize=list(op_types or DYNAMIC_INT8_OPS),
                         weight_type=QuantType.QInt8)
    else:
        reader = _CalibrationImages(source, calibration_images)
        with tempfile.TemporaryDirectory() as folder:
            # Shape inference and graph optimisation first: without them ONNX Runtime cannot fuse the quantised
            # convolutions into its int8 kernels, and the file runs no faster than fp32.
            prepared = Path(folder) / "prepared.onnx"
            quant_pre_process(str(source), str(prepared))
            quantize_static(str(prepared), str(output), reader,
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types or STATIC_INT8_OPS),
                            per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            extra_options={"CalibStridedMinMax": reader.batches_per_measurement})
    quantized, metadata = onnx.load(str(output)), onnx.load(str(source), load_external_data=False).metadata_props
    if {prop.key for prop in quantized.metadata_props} != {prop.key for prop in metadata}:
        del quantized.metadata_props[:]
        quantized.metadata_props.extend(metadata)
        onnx.save(quantized, str(output))
    return output


DYNAMIC_INT8_OPS = ("MatMul", "Gemm")
STATIC_INT8_OPS = ("Conv",)
IMAGES_PER_MEASUREMENT = 8  # calibration images measured at once (the quantiser keeps all their activations)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def calibration_files(folder: str | Path, limit: int = 64) -> list[Path]:
    """Up to `limit` image files under `folder` (searched recursively), spread evenly over its sorted listing.

    Raises:
        ValueError: `folder` is not a folder or holds no images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"Calibration folder not found: {folder} (pass a folder of training images).")
    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"No images ({', '.join(IMAGE_SUFFIXES)}) under {folder}: static int8 needs a few dozen "
                         "images like the ones the model will see to measure its activation ranges.")
    step = max(1, len(files) / limit)
    return [files[int(i * step)] for i in range(min(limit, len(files)))]


class _CalibrationImages:
    """Feeds calibration images to ONNX Runtime's quantiser as the exported graph's inputs, one batch at a time.

    The images go through the image processor stored in the file's metadata, in batches of the file's fixed batch
    size (of `IMAGES_PER_MEASUREMENT` for a dynamic batch axis), each batch read when the quantiser asks for it.
    The quantiser measures about `IMAGES_PER_MEASUREMENT` images at a time (`set_range`) and merges their ranges,
    so its memory does not grow with the number of images.
    """

    def __init__(self, path: Path, images: Sequence[str | Path]):
        import onnx

        files = list(images)
        if not files:
            raise ValueError("calibration_images is empty: static int8 needs images to measure activation ranges.")
        graph = onnx.load(str(path), load_external_data=False)
        self.processor = processor_from_metadata({prop.key: prop.value for prop in graph.metadata_props}, path)
        fixed_batch = graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value  # 0 for a dynamic axis
        batch = fixed_batch or IMAGES_PER_MEASUREMENT
        self.batches_per_measurement = max(1, IMAGES_PER_MEASUREMENT // fixed_batch) if fixed_batch else 1
        unit = batch * self.batches_per_measurement if fixed_batch else 1  # fixed batches, whole measurements
        files += [files[index % len(files)] for index in range(-len(files) % unit)]
        self.batches = [files[start:start + batch] for start in range(0, len(files), batch)]
        self.position, self.end = 0, len(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.position, self.end = start_index, min(end_index, len(self.batches))

    def get_next(self) -> dict | None:
        if self.position >= self.end:
            return None
        files = [str(file) for file in self.batches[self.position]]  # the processor reads files (EXIF upright)
        self.position += 1
        inputs = self.processor(files, return_tensors="pt")
        return {INPUT_NAMES[0]: inputs["pixel_values"].numpy(), INPUT_NAMES[1]: inputs["pixel_mask"].numpy()}
