"""Run an exported DeTR-Lite ONNX file with ONNX Runtime, through the same image processor as the PyTorch model.

    detector = ONNXDetector("model.onnx")
    detector("street.jpg", threshold=0.5)   # [{"score", "label", "box": {xmin, ymin, xmax, ymax}}, ...]

The processor and the class names come from the file's metadata (written by `detr_lite.onnx_export`), so the
file alone is enough. onnxruntime is imported when a detector is built, not when this module is.
"""

import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from PIL import Image, ImageOps

from .onnx_export import INPUT_NAMES, OUTPUT_NAMES, processor_from_metadata


class ONNXDetector:
    """An ONNX Runtime session over an exported DeTR-Lite file, with its image processor and class names.

    Args:
        path: a file written by `detr_lite.onnx_export.export_onnx` (or `quantize_int8`).
        threads: intra-op threads; None for one per CPU core.
        providers: ONNX Runtime execution providers; None for the CPU.
    """

    def __init__(self, path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None):
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {path} (write one with scripts/export_onnx.py).")
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=list(providers or ["CPUExecutionProvider"]))
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.image_processor = processor_from_metadata(metadata, path)
        self.id2label = {int(key): value for key, value in json.loads(metadata["id2label"]).items()}
        self.batch_size = self.session.get_inputs()[0].shape[0]  # an int, or a name for a dynamic axis

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> SimpleNamespace:
        """The model's `logits` (B, Q, C + 1) and `pred_boxes` (B, Q, 4) for processed inputs, as torch tensors."""
        if isinstance(self.batch_size, int) and len(pixel_values) != self.batch_size:
            raise ValueError(
                f"This ONNX file was exported for batch size {self.batch_size}, got {len(pixel_values)} images. "
                "Pass that many, or export with --batch_size dynamic.")
        feed = {INPUT_NAMES[0]: pixel_values.numpy(), INPUT_NAMES[1]: pixel_mask.numpy()}
        logits, pred_boxes = self.session.run(OUTPUT_NAMES, feed)
        return SimpleNamespace(logits=torch.from_numpy(logits), pred_boxes=torch.from_numpy(pred_boxes))

    def detect(self, images: Sequence[Image.Image], threshold: float = 0.5) -> list[dict[str, torch.Tensor]]:
        """Per image, the processor's post-processed `scores`, `labels` and `boxes` in original-image pixels."""
        inputs = self.image_processor(list(images), return_tensors="pt")
        outputs = self.forward(inputs["pixel_values"], inputs["pixel_mask"])
        sizes = [(image.height, image.width) for image in images]
        return self.image_processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes)

    def __call__(self, images: Any, threshold: float = 0.5) -> list[dict] | list[list[dict]]:
        """Detections in the object-detection pipeline's format.

        Args:
            images: one image (PIL image or file path) or a list of them.
            threshold: keep detections scoring above this.

        Returns:
            For one image, a list of {"score", "label", "box": {xmin, ymin, xmax, ymax}} (integer pixels);
            for a list of images, one such list per image.
        """
        single = not isinstance(images, (list, tuple))
        loaded = [_load_image(image) for image in ([images] if single else images)]
        results = [self._as_pipeline(result) for result in self.detect(loaded, threshold)]
        return results[0] if single else results

    def _as_pipeline(self, result: dict[str, torch.Tensor]) -> list[dict]:
        rows = zip(result["scores"].tolist(), result["labels"].tolist(), result["boxes"].int().tolist())
        return [
            {"score": score, "label": self.id2label.get(label, str(label)),
             "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), box))}
            for score, label, box in rows
        ]


def _load_image(image: Image.Image | str | Path) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    with Image.open(image) as opened:
        return ImageOps.exif_transpose(opened).convert("RGB")


class ONNXModule(torch.nn.Module):
    """An `ONNXDetector` called like the PyTorch model, `model(pixel_values=..., pixel_mask=...)`, for code
    written for that model (e.g. `detr_lite.inference.predict_dataset`, with `device="cpu"`)."""

    def __init__(self, detector: ONNXDetector):
        super().__init__()
        self.detector = detector

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None, **kwargs) -> SimpleNamespace:
        if pixel_mask is None:  # no padding
            pixel_mask = torch.ones(pixel_values.shape[0], *pixel_values.shape[2:], dtype=torch.long)
        return self.detector.forward(pixel_values, pixel_mask)
