"""`pipeline("object-detection")` on a saved DeTR-Lite folder: structure, pixels, labels, and a quiet start."""

import builtins
import logging

import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForObjectDetection, pipeline

from conftest import TINY_MODEL
from detr_lite import DeTRLiteForObjectDetection, DeTRLiteImageProcessor

NAMES = set(TINY_MODEL["id2label"].values())


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def built(model_dir):
    """The pipeline, the warnings/errors transformers logged while building it, and any console prompts."""
    records, prompts = _Records(), []
    logger = logging.getLogger("transformers")  # transformers' loggers do not propagate to the root logger
    logger.addHandler(records)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(builtins, "input", lambda *args: prompts.append(args) or "")
            detector = pipeline("object-detection", model=str(model_dir))
    finally:
        logger.removeHandler(records)
    return detector, records.messages, prompts


@pytest.fixture(scope="module")
def detector(built):
    return built[0]


@pytest.fixture(scope="module")
def wide_image():
    torch.manual_seed(1)
    return Image.fromarray((torch.rand(120, 200, 3) * 255).to(torch.uint8).numpy())


def check_detections(detections, width, height):
    assert isinstance(detections, list) and detections
    for detection in detections:
        assert set(detection) == {"score", "label", "box"}
        assert isinstance(detection["score"], float) and 0.0 <= detection["score"] <= 1.0
        assert detection["label"] in NAMES
        box = detection["box"]
        assert set(box) == {"xmin", "ymin", "xmax", "ymax"} and all(isinstance(v, int) for v in box.values())
        assert 0 <= box["xmin"] <= box["xmax"] <= width and 0 <= box["ymin"] <= box["ymax"] <= height
    scores = [d["score"] for d in detections]
    assert scores == sorted(scores, reverse=True)


def test_pipeline_loads_the_detr_lite_classes(detector):
    assert isinstance(detector.model, DeTRLiteForObjectDetection)
    assert isinstance(detector.image_processor, DeTRLiteImageProcessor)


def test_pipeline_logs_no_model_not_supported_error(built):
    unsupported = [message[:120] for message in built[1] if "not supported" in message]
    assert not unsupported, unsupported


def test_pipeline_does_not_ask_about_custom_code(built):
    prompts = built[2]
    assert not prompts, f"pipeline() stopped to ask on the console: {prompts[0][0][:200]!r}"


def test_single_image_gives_one_detection_per_query_above_threshold(detector, wide_image):
    detections = detector(wide_image, threshold=0.0)
    check_detections(detections, width=200, height=120)
    assert len(detections) == TINY_MODEL["num_queries"]


def test_boxes_are_the_processors_boxes_in_original_pixels(detector, model_dir, wide_image):
    model = AutoModelForObjectDetection.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        outputs = model(**processor(wide_image))
    expected = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[(120, 200)])[0]
    detections = detector(wide_image, threshold=0.0)
    torch.testing.assert_close(torch.tensor([d["score"] for d in detections]), expected["scores"])
    got = sorted(tuple(d["box"].values()) for d in detections)
    assert got == sorted(tuple(box) for box in expected["boxes"].int().tolist())


def test_threshold_filters_detections(detector, wide_image):
    scores = [d["score"] for d in detector(wide_image, threshold=0.0)]
    middle = (max(scores) + min(scores)) / 2
    kept = detector(wide_image, threshold=middle)
    assert 0 < len(kept) < len(scores) and all(d["score"] > middle for d in kept)
    assert detector(wide_image, threshold=0.999) == []


def test_list_of_paths_and_images_gives_a_list_per_image(detector, wide_image, tmp_path):
    tall = wide_image.transpose(Image.Transpose.TRANSPOSE)  # 120 wide, 200 high
    path = tmp_path / "wide.png"
    wide_image.save(path)
    results = detector([str(path), tall], threshold=0.0)
    assert isinstance(results, list) and len(results) == 2
    check_detections(results[0], width=200, height=120)
    check_detections(results[1], width=120, height=200)
    assert results[0] == detector(wide_image, threshold=0.0)  # a path reads the same pixels as the image
