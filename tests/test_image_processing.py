"""Tests for detr_lite/image_processing_detr_lite.py: DeTRLiteImageProcessor."""

import json
import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import PreTrainedConfig, PreTrainedModel, pipeline
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.utils import ModelOutput

from detr_lite.image_processing_detr_lite import DeTRLiteImageProcessor

MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)


@dataclass
class FakeDetectionOutput(ModelOutput):
    logits: torch.Tensor | None = None
    pred_boxes: torch.Tensor | None = None


def random_rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def raw_rgb(image, **kwargs) -> np.ndarray:
    """The uint8 RGB pixels the processor sees, read back from an un-normalised, un-resized run."""
    processor = DeTRLiteImageProcessor(size=32, do_normalize=False, **kwargs)
    out = processor(image)
    height, width = (out["pixel_mask"][0].sum(0).amax().item(), out["pixel_mask"][0].sum(1).amax().item())
    return (out["pixel_values"][0, :, :height, :width] * 255).round().byte().permute(1, 2, 0).numpy()


def coco_target(boxes, categories, image_id=1, iscrowd=None):
    iscrowd = iscrowd or [0] * len(boxes)
    objects = [
        {"bbox": list(box), "category_id": category, "area": float(box[2] * box[3]), "iscrowd": crowd}
        for box, category, crowd in zip(boxes, categories, iscrowd)
    ]
    return {"image_id": image_id, "annotations": objects}


def confident_outputs(labels: list[dict], num_classes: int) -> FakeDetectionOutput:
    """Predictions equal to the labels: one query per box with a huge logit on its class."""
    queries = max(len(target["boxes"]) for target in labels)
    logits = torch.zeros(len(labels), queries, num_classes + 1)
    logits[..., -1] = 50.0  # unused queries predict no-object
    pred_boxes = torch.full((len(labels), queries, 4), 0.5)
    for index, target in enumerate(labels):
        count = len(target["boxes"])
        logits[index, torch.arange(count), target["class_labels"]] = 100.0
        pred_boxes[index, :count] = target["boxes"]
    return FakeDetectionOutput(logits=logits, pred_boxes=pred_boxes)


# ---------------------------------------------------------------- geometry


@pytest.mark.parametrize("resize_mode", ["letterbox", "stretch"])
@pytest.mark.parametrize("width, height", [(300, 900), (900, 300), (17, 23), (1500, 1000), (640, 640)])
def test_boxes_round_trip_to_original_pixels(resize_mode, width, height):
    rng = np.random.default_rng(width * height)
    top_left = rng.uniform(0, 0.7, (6, 2)) * (width, height)
    extent = rng.uniform(0.05, 0.3, (6, 2)) * (width, height) + 1
    boxes = np.concatenate([top_left, extent], axis=1).tolist()
    categories = list(range(6))  # one class per box, so predictions can be matched back by label
    processor = DeTRLiteImageProcessor(resize_mode=resize_mode)
    image = Image.fromarray(random_rgb(width, height))
    labels = processor(image, annotations=coco_target(boxes, categories))["labels"]

    result = processor.post_process_object_detection(confident_outputs(labels, 6), target_sizes=[(height, width)])[0]
    predicted = result["boxes"][result["labels"].argsort()]
    expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes])
    assert result["labels"].sort().values.tolist() == categories
    assert torch.allclose(predicted, expected, atol=1.0)
    assert labels[0]["orig_size"].tolist() == [height, width]


@pytest.mark.parametrize(
    "width, height, resize_mode, mask_hw",
    [(900, 300, "letterbox", (213, 640)), (300, 900, "letterbox", (640, 213)), (900, 300, "stretch", (640, 640))],
)
def test_pixel_mask_marks_exactly_the_resized_region(width, height, resize_mode, mask_hw):
    image = Image.new("RGB", (width, height), (255, 255, 255))
    out = DeTRLiteImageProcessor(resize_mode=resize_mode)(image, annotations=coco_target([], []))
    mask, pixels = out["pixel_mask"][0], out["pixel_values"][0]
    expected_mask = torch.zeros(640, 640, dtype=torch.long)
    expected_mask[: mask_hw[0], : mask_hw[1]] = 1
    assert mask.dtype == torch.long and torch.equal(mask, expected_mask)
    assert out["labels"][0]["size"].tolist() == list(mask_hw)
    white = ((1 - MEAN) / STD).expand(3, *mask_hw)
    assert torch.allclose(pixels[:, : mask_hw[0], : mask_hw[1]], white, atol=1e-5)  # no bleed from the padding
    assert (pixels[:, mask == 0] == 0).all()


def test_tiny_and_exact_size_images_fill_the_canvas_correctly():
    processor = DeTRLiteImageProcessor(size=64)
    out = processor([Image.fromarray(random_rgb(3, 5)), Image.fromarray(random_rgb(64, 64))])
    assert out["pixel_mask"][0].sum().item() == 38 * 64  # width 3, height 5 → width 38 (38.4), height 64
    exact = torch.from_numpy(random_rgb(64, 64)).permute(2, 0, 1) / 255
    assert torch.allclose(out["pixel_values"][1], (exact - MEAN) / STD, atol=1e-5)  # no resize at all


def test_an_image_does_not_depend_on_its_batch():
    processor = DeTRLiteImageProcessor(size=96)
    images = [Image.fromarray(random_rgb(w, h, seed)) for seed, (w, h) in enumerate([(50, 120), (200, 90), (96, 96)])]
    batch = processor(images)
    for index, image in enumerate(images):
        alone = processor(image)
        assert torch.equal(batch["pixel_values"][index], alone["pixel_values"][0])
        assert torch.equal(batch["pixel_mask"][index], alone["pixel_mask"][0])


# ---------------------------------------------------------------- input types


def _gray(width=32, height=20) -> np.ndarray:
    return random_rgb(width, height)[..., 0]


@pytest.mark.parametrize(
    "mode, build, expected",
    [
        ("1", lambda g: Image.fromarray(g > 127), lambda g: np.where(g > 127, 255, 0)),
        ("L", lambda g: Image.fromarray(g), lambda g: g),
        ("LA", lambda g: Image.fromarray(np.stack([g, 255 - g], -1), "LA"), lambda g: g),  # alpha dropped
        ("I;16", lambda g: Image.fromarray(g.astype(np.uint16) * 257), lambda g: g),
        ("I;16B", lambda g: Image.frombytes("I;16B", (32, 20), (g.astype(">u2") * 257).tobytes()), lambda g: g),
        ("I", lambda g: Image.fromarray(g.astype(np.int32) * 257), lambda g: g),  # 16-bit data in mode I
        ("I", lambda g: Image.fromarray(g.astype(np.int32) << 23), lambda g: np.round(g * (2**23 * 255 / 2**31))),
        ("F", lambda g: Image.fromarray(g.astype(np.float32)), lambda g: g),  # PIL's 0..255 convention
    ],
)
def test_gray_pil_modes_become_rgb_without_clipping(mode, build, expected):
    gray = _gray()
    image = build(gray)
    assert image.mode == mode
    rgb = raw_rgb(image)
    assert rgb.shape == (20, 32, 3)
    assert np.array_equal(rgb, np.repeat(expected(gray)[..., None], 3, axis=-1).astype(np.uint8))


def _with_alpha(rgb: np.ndarray, mode: str = "RGBA") -> Image.Image:
    image = Image.fromarray(rgb)
    image.putalpha(Image.fromarray(_gray()))
    return image.convert(mode)


def _palette(rgb: np.ndarray) -> Image.Image:
    image = Image.fromarray(rgb).quantize(64)
    image.info["transparency"] = bytes(range(64))  # per-entry alpha: PIL warns unless read via RGBA
    return image


def _opaque(rgb: np.ndarray, mode: str) -> Image.Image:
    """Premultiplied modes are exact only at full opacity."""
    image = Image.fromarray(rgb).convert(mode.upper() if mode == "RGBa" else "LA")
    image.putalpha(255)
    return image.convert(mode)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(Image.fromarray(rgb).convert("L"))[..., None], 3, axis=-1)


@pytest.mark.parametrize(
    "mode, build, expected",
    [
        ("RGB", Image.fromarray, lambda rgb: rgb),
        ("RGBA", _with_alpha, lambda rgb: rgb),  # alpha dropped, not composited
        ("RGBa", lambda rgb: _opaque(rgb, "RGBa"), lambda rgb: rgb),
        ("La", lambda rgb: _opaque(rgb, "La"), _luma),
        ("P", _palette, lambda rgb: np.asarray(Image.fromarray(rgb).quantize(64).convert("RGB"))),
        ("PA", lambda rgb: _with_alpha(rgb, "PA"), lambda rgb: np.asarray(_with_alpha(rgb, "PA").convert("RGB"))),
        ("CMYK", lambda rgb: Image.fromarray(rgb).convert("CMYK"), lambda rgb: rgb),
        ("YCbCr", lambda rgb: Image.fromarray(rgb).convert("YCbCr"), lambda rgb: rgb),
    ],
)
def test_colour_pil_modes_become_rgb(mode, build, expected, recwarn):
    rgb = random_rgb(32, 20)
    image = build(rgb)
    assert image.mode == mode
    tolerance = 3 if mode == "YCbCr" else 0  # YCbCr is a lossy colour space at 8 bits
    assert np.abs(raw_rgb(image).astype(int) - expected(rgb).astype(int)).max() <= tolerance
    assert not [w for w in recwarn if "Palette" in str(w.message)]


@pytest.mark.parametrize("orientation, top_colour", [(6, (255, 0, 0)), (8, (0, 0, 255))])
def test_exif_orientation_is_applied_first(tmp_path, orientation, top_colour):
    raw = np.zeros((24, 40, 3), dtype=np.uint8)
    raw[:, :20] = (255, 0, 0)  # left half red, right half blue as stored
    raw[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "rotated.jpg"
    Image.fromarray(raw).save(path, exif=exif.tobytes(), quality=95)
    out = DeTRLiteImageProcessor(size=40, do_normalize=False)(Image.open(path), annotations=coco_target([], []))
    assert out["labels"][0]["orig_size"].tolist() == [40, 24]  # upright: 24 wide, 40 tall
    top = out["pixel_values"][0, :, 2:18, 2:22].mean((1, 2)) * 255
    assert torch.allclose(top, torch.tensor(top_colour, dtype=torch.float), atol=12)


def test_numpy_and_tensor_inputs_match_the_pil_path():
    rgb = random_rgb(80, 48)
    processor = DeTRLiteImageProcessor(size=64)  # 80x48 → 64x38: the resize path is exercised
    reference = processor(Image.fromarray(rgb))["pixel_values"]
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    variants = {
        "numpy HWC uint8": rgb,
        "numpy CHW uint8": rgb.transpose(2, 0, 1),
        "numpy HWC float": rgb / 255.0,
        "numpy HWC float32 RGBA": np.concatenate([rgb / 255.0, np.ones((48, 80, 1))], -1).astype(np.float32),
        "numpy HWC uint16": rgb.astype(np.uint16) * 257,
        "tensor CHW uint8": chw,
        "tensor HWC uint8": torch.from_numpy(rgb),
        "tensor CHW float": chw.float() / 255,
        "tensor CHW bfloat16": (chw.float() / 255).bfloat16(),
    }
    for name, image in variants.items():
        tolerance = 0.03 if name.endswith("bfloat16") else 1e-6  # bf16 cannot hold every k/255
        assert torch.allclose(processor(image)["pixel_values"], reference, atol=tolerance), name
    batch = processor(np.stack([rgb, rgb]))["pixel_values"]
    assert batch.shape == (2, 3, 64, 64) and torch.equal(batch[1], reference[0])
    gray = _gray(80, 48)
    assert torch.equal(processor(gray)["pixel_values"], processor(Image.fromarray(gray))["pixel_values"])


def test_unreadable_images_raise_value_error():
    processor = DeTRLiteImageProcessor(size=32)
    with pytest.raises(ValueError, match="shape"):
        processor(np.zeros((10, 10, 7), dtype=np.uint8))
    with pytest.raises(ValueError, match="PIL images, numpy arrays, torch tensors, file paths or URLs"):
        processor(b"street.jpg")


# ---------------------------------------------------------------- normalisation and config


def test_mean_coloured_image_normalises_to_zero_in_every_path(tmp_path):
    mean_colour = np.array(IMAGENET_DEFAULT_MEAN)
    uniform = np.broadcast_to(mean_colour, (40, 60, 3))
    processor = DeTRLiteImageProcessor(size=64)
    processor.save_pretrained(tmp_path)
    reloaded = DeTRLiteImageProcessor.from_pretrained(tmp_path)
    inputs = [
        Image.fromarray(np.round(uniform * 255).astype(np.uint8)),
        np.round(uniform * 255).astype(np.uint8),
        uniform.astype(np.float32),
        torch.from_numpy(uniform.copy()).permute(2, 0, 1),
    ]
    for p in (processor, reloaded):
        assert p.image_mean == IMAGENET_DEFAULT_MEAN and p.image_std == IMAGENET_DEFAULT_STD
        for image in inputs:
            out = p(image)
            real = out["pixel_values"][0][:, out["pixel_mask"][0] == 1]
            assert real.abs().max() < 0.01  # reversed mean/std would give 0.35 in red and blue
    white = processor(Image.new("RGB", (8, 8), (255, 255, 255)))["pixel_values"][0, :, 0, 0]
    assert torch.allclose(white, torch.tensor([2.2489, 2.4286, 2.64]), atol=1e-3)  # R, G, B in that order


def test_save_and_load_round_trip(tmp_path):
    processor = DeTRLiteImageProcessor(
        size=320, resize_mode="stretch", label2id={1: 0, 3: 1, 90: 2}, image_mean=(0.5, 0.5, 0.5), resample=3
    )
    processor.save_pretrained(tmp_path)
    reloaded = DeTRLiteImageProcessor.from_pretrained(tmp_path)
    assert reloaded.to_dict() == processor.to_dict()
    assert reloaded.label2id == {1: 0, 3: 1, 90: 2} and reloaded.resize_mode == "stretch"
    assert reloaded.size == {"height": 320, "width": 320} and reloaded.resample == 3 and reloaded.image_mean == [0.5, 0.5, 0.5]
    image, target = Image.fromarray(random_rgb(50, 30)), coco_target([[5, 5, 10, 10]], [90])
    before, after = processor(image, annotations=target), reloaded(image, annotations=target)
    assert torch.equal(before["pixel_values"], after["pixel_values"])
    assert after["labels"][0]["class_labels"].tolist() == [2]
    assert DeTRLiteImageProcessor.from_pretrained(tmp_path, size=128).size == {"longest_edge": 128}

    named = DeTRLiteImageProcessor(label2id={"dog": 0, "cat": 1})
    named.save_pretrained(tmp_path / "named")
    assert DeTRLiteImageProcessor.from_pretrained(tmp_path / "named").label2id == {"dog": 0, "cat": 1}


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"resize_mode": "crop"}, "resize_mode"),
        ({"size": 16}, "size"),
        ({"size": 640.0}, "size"),
        ({"image_std": (0.2, 0.0, 0.2)}, "image_std"),
        ({"image_std": (1, 1, 1, 1)}, "image_std"),
        ({"image_mean": (0.5, 0.5)}, "image_mean"),
        ({"label2id": {1: 1, 2: 2}}, "label2id"),
        ({"resample": Image.Resampling.LANCZOS}, "resample"),
        ({"pad_value": float("nan")}, "pad_value"),
    ],
)
def test_invalid_settings_raise_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DeTRLiteImageProcessor(**kwargs)


# ---------------------------------------------------------------- annotations


def test_annotations_become_detr_labels():
    processor = DeTRLiteImageProcessor(size=64, label2id={7: 0, 9: 1})  # 100x50 → 64x32
    boxes = [[10, 10, 20, 10], [0, 0, 50, 50], [-10, 40, 30, 20], [120, 10, 5, 5], [30, 30, 0, 10]]
    target = coco_target(boxes, [9, 7, 7, 9, 9], image_id=42, iscrowd=[0, 1, 0, 0, 0])
    labels = processor(Image.fromarray(random_rgb(100, 50)), annotations=[target])["labels"][0]
    # kept: the plain box and the box clipped to [0, 40, 20, 50]; dropped: crowd, outside, zero width
    assert labels["class_labels"].tolist() == [1, 0]
    expected = torch.tensor([[20 / 100, 15 / 50, 20 / 100, 10 / 50], [10 / 100, 45 / 50, 20 / 100, 10 / 50]])
    assert torch.allclose(labels["boxes"], expected)
    assert labels["image_id"].tolist() == [42]
    assert labels["orig_size"].tolist() == [50, 100] and labels["size"].tolist() == [32, 64]
    assert torch.allclose(labels["area"], torch.tensor([200.0, 600.0]) * (64 * 32) / (100 * 50))
    assert labels["iscrowd"].tolist() == [0, 0]
    assert labels["boxes"].dtype == torch.float32 and labels["class_labels"].dtype == torch.long


def test_image_without_objects_gives_empty_labels():
    labels = DeTRLiteImageProcessor(size=32)(np.zeros((20, 30, 3), np.uint8), annotations=coco_target([], []))["labels"]
    assert labels[0]["boxes"].shape == (0, 4) and labels[0]["class_labels"].shape == (0,)


@pytest.mark.parametrize(
    "label2id, bbox, category, message",
    [
        ({1: 0}, [1, 1, 5, 5], 42, r"category_id 42.*label2id"),
        (None, [1, 1, 5, 5], -1, r"category_id -1.*label2id"),
        (None, [1, 1, 5, 5], "dog", r"category_id 'dog'.*label2id"),
        (None, [1, 1, 5], 0, "bbox"),
        (None, [1, 1, float("nan"), 5], 0, "bbox"),
        (None, "1 1 5 5", 0, "bbox"),
    ],
)
def test_bad_annotations_raise_value_error_naming_the_image(label2id, bbox, category, message):
    processor = DeTRLiteImageProcessor(size=32, label2id=label2id)
    target = {"image_id": 1234, "annotations": [{"bbox": bbox, "category_id": category, "iscrowd": 0}]}
    with pytest.raises(ValueError, match=message) as error:
        processor(np.zeros((20, 30, 3), np.uint8), annotations=[target])
    assert "1234" in str(error.value)


def test_annotation_count_must_match_images():
    with pytest.raises(ValueError, match="one per image"):
        DeTRLiteImageProcessor(size=32)([np.zeros((8, 8, 3), np.uint8)] * 2, annotations=[coco_target([], [])])


# ---------------------------------------------------------------- post-processing


def _outputs_with_probabilities(probabilities, boxes) -> FakeDetectionOutput:
    """logits = log(p), so the softmax recovers p exactly (last column = no-object)."""
    return FakeDetectionOutput(logits=torch.tensor(probabilities).log(), pred_boxes=torch.tensor(boxes))


def test_post_process_threshold_and_top_k():
    probabilities = [
        [
            [0.70, 0.20, 0.10],  # class 0, 0.70
            [0.05, 0.05, 0.90],  # no-object: score 0.05
            [0.10, 0.85, 0.05],  # class 1, 0.85
            [0.45, 0.10, 0.45],  # no-object ties, but the best real class still scores 0.45
            [0.30, 0.60, 0.10],  # class 1, 0.60
        ]
    ]
    boxes = [[[0.5, 0.5, 0.2, 0.2]] * 5]
    outputs = _outputs_with_probabilities(probabilities, boxes)
    processor = DeTRLiteImageProcessor()
    result = processor.post_process_object_detection(outputs, threshold=0.5)[0]
    assert torch.allclose(result["scores"], torch.tensor([0.85, 0.70, 0.60]))
    assert result["labels"].tolist() == [1, 0, 1] and result["labels"].dtype == torch.long
    assert torch.allclose(result["boxes"], torch.tensor([[0.4, 0.4, 0.6, 0.6]] * 3))  # normalised without sizes
    low = processor.post_process_object_detection(outputs, threshold=0.4)[0]
    assert torch.allclose(low["scores"], torch.tensor([0.85, 0.70, 0.60, 0.45]))
    top = processor.post_process_object_detection(outputs, threshold=0.5, top_k=2)[0]
    assert torch.allclose(top["scores"], torch.tensor([0.85, 0.70]))
    assert processor.post_process_object_detection(outputs, threshold=0.9)[0]["boxes"].shape == (0, 4)


def test_post_process_target_sizes_give_original_pixels():
    probabilities = [[[0.9, 0.1]], [[0.9, 0.1]]]
    boxes = [[[0.5, 0.5, 0.2, 0.4]], [[0.95, 0.5, 0.2, 0.2]]]  # the second crosses the right edge
    outputs = _outputs_with_probabilities(probabilities, boxes)
    processor = DeTRLiteImageProcessor()
    expected = [torch.tensor([[80.0, 30.0, 120.0, 70.0]]), torch.tensor([[255.0, 320.0, 300.0, 480.0]])]
    as_tensors = [torch.tensor([100, 200]), torch.tensor([800, 300])]
    for sizes in ([(100, 200), (800, 300)], torch.tensor([[100, 200], [800, 300]]), as_tensors):
        results = processor.post_process_object_detection(outputs, threshold=0.5, target_sizes=sizes)
        for result, box in zip(results, expected):
            assert torch.allclose(result["boxes"], box, atol=1e-3)  # clipped to the 300-pixel width
    with pytest.raises(ValueError, match="target_sizes"):
        processor.post_process_object_detection(outputs, target_sizes=[(100, 200)])


def test_object_detection_pipeline_uses_the_processor():
    """The transformers pipeline passes one PIL image and an IntTensor [[h, w]] as target sizes."""

    class ConstantDetector(PreTrainedModel):
        config_class = PreTrainedConfig

        def __init__(self, config):
            super().__init__(config)
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.post_init()

        def forward(self, pixel_values, pixel_mask):
            self.seen = (tuple(pixel_values.shape), tuple(pixel_mask.shape))
            return _outputs_with_probabilities([[[0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]], [[[0.5, 0.5, 0.5, 0.5]] * 2])

    model = ConstantDetector(PreTrainedConfig(id2label={0: "cat", 1: "dog"}))
    detector = pipeline("object-detection", model=model, image_processor=DeTRLiteImageProcessor(size=64))
    detections = detector(Image.new("RGB", (200, 100)), threshold=0.5)
    assert model.seen == ((1, 3, 64, 64), (1, 64, 64))
    assert len(detections) == 1 and detections[0]["label"] == "dog"
    assert detections[0]["box"] == {"xmin": 50, "ymin": 25, "xmax": 150, "ymax": 75}


# ---------------------------------------------------------------- transformers' settings


def test_size_forms_letterbox_and_stretch_and_an_old_int_size_loads_as_letterbox(tmp_path):
    image = Image.fromarray(random_rgb(100, 50))  # 100 wide, 50 high
    letterbox = DeTRLiteImageProcessor(size={"longest_edge": 64})(image)
    same = DeTRLiteImageProcessor(size={"max_height": 64, "max_width": 64}, do_pad=True)(image)
    assert torch.equal(letterbox["pixel_values"], same["pixel_values"])
    assert letterbox["pixel_mask"][0].sum(0).amax() == 32 and letterbox["pixel_mask"][0].sum(1).amax() == 64
    stretch = DeTRLiteImageProcessor(size={"height": 64, "width": 64})(image)
    assert bool(stretch["pixel_mask"].all())
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "DeTRLiteImageProcessor", "size": 64, "resize_mode": "letterbox"}))
    old = DeTRLiteImageProcessor.from_pretrained(tmp_path)
    assert old.size == {"longest_edge": 64} and torch.equal(old(image)["pixel_values"], letterbox["pixel_values"])


def test_saved_config_uses_transformers_key_names(tmp_path):
    DeTRLiteImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["size"] == {"height": 64, "width": 64} and "resize_mode" not in saved
    for key in ("do_resize", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std", "do_pad",
                "pad_size", "resample"):
        assert key in saved, key
    assert saved["rescale_factor"] == pytest.approx(1 / 255)


@pytest.mark.parametrize("where", ["construction", "call"])
def test_do_flags_at_construction_and_per_call(where):
    image = random_rgb(40, 20)
    flags = {"do_normalize": False, "do_rescale": False, "do_resize": False, "do_pad": False}
    processor = DeTRLiteImageProcessor(size=32, **flags) if where == "construction" else DeTRLiteImageProcessor(size=32)
    out = processor(image) if where == "construction" else processor(image, **flags)
    assert out["pixel_values"].shape == (1, 3, 20, 40)  # neither resized nor padded
    assert torch.equal(out["pixel_values"][0], torch.from_numpy(image).permute(2, 0, 1).float())  # 0..255, raw


def test_do_pad_pads_to_pad_size_and_images_that_do_not_fit_are_refused():
    processor = DeTRLiteImageProcessor(size=32, pad_size={"height": 48, "width": 64})
    out = processor(random_rgb(40, 20))
    assert out["pixel_values"].shape == (1, 3, 48, 64) and out["pixel_mask"].sum() == 16 * 32
    with pytest.raises(ValueError, match="do not fit"):
        processor(random_rgb(80, 20), do_resize=False)
    with pytest.raises(ValueError, match="do_pad=True"):
        processor([random_rgb(40, 20), random_rgb(20, 40)], do_pad=False)


def test_unknown_per_call_setting_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="do_normalise"):
        DeTRLiteImageProcessor(size=32)(random_rgb(8, 8), do_normalise=False)


def test_file_paths_are_read_and_a_missing_file_or_url_is_named(tmp_path):
    path = tmp_path / "image.png"
    Image.fromarray(random_rgb(30, 20)).save(path)
    processor = DeTRLiteImageProcessor(size=32)
    from_path = processor(str(path))["pixel_values"]
    assert torch.equal(from_path, processor(Image.open(path))["pixel_values"])
    assert torch.equal(processor(path)["pixel_values"], from_path)  # a pathlib.Path too
    with pytest.raises(ValueError, match="missing.png"):
        processor(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match=re.escape("http://127.0.0.1:9/x.jpg")):
        processor("http://127.0.0.1:9/x.jpg")
