"""detr_lite.onnx_export and scripts/export_onnx.py: the checker, the metadata, PyTorch parity for both presets
(padded and unpadded, batch 1 and 4, real photos and synthetic images), the post-processing graph, int8."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_MODEL, tiny_config
from scripts_helpers import load_script, run_script

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from detr_lite import DeTRLiteConfig, DeTRLiteForObjectDetection, DeTRLiteImageProcessor  # noqa: E402
from detr_lite.data.synthetic import render_sample  # noqa: E402
from detr_lite.onnx_export import calibration_files, export_onnx, quantize_int8  # noqa: E402
from detr_lite.onnx_runtime import ONNXDetector  # noqa: E402

BCCD = Path("/work/shared/datasets/bccd/JPEGImages")
QUICKSTART = Path(__file__).resolve().parents[1] / "configuration" / "detr_lite_quickstart.json"
SMALL_DATA = QUICKSTART.with_name("detr_lite_small_data.json")
TOLERANCE = 1e-4
TOP_K = 5


def photos(count: int) -> list[Image.Image]:
    """Real photos (BCCD blood smears, 640x480) where the data set is present, synthetic scenes in any case."""
    real = [Image.open(path).convert("RGB") for path in sorted(BCCD.glob("*.jpg"))[:count // 2]]
    synthetic = [Image.fromarray(render_sample(0, 1, index).image) for index in range(count - len(real))]
    return real + synthetic


def quickstart_model(preset_file: Path = QUICKSTART) -> tuple[DeTRLiteForObjectDetection, DeTRLiteImageProcessor]:
    """The quickstart preset (resnet10t, encoder queries with box refinement, trainable batch norms), or another
    preset's model, untrained."""
    preset = json.loads(preset_file.read_text())["model"]
    torch.manual_seed(0)
    model = DeTRLiteForObjectDetection(DeTRLiteConfig(**preset, id2label=TINY_MODEL["id2label"])).eval()
    return model, DeTRLiteImageProcessor(size=preset["image_size"])


@pytest.fixture(scope="module", params=["tiny_learned_queries", "quickstart_encoder_queries",
                                        "small_data_encoder_queries"])
def exported(request, tmp_path_factory):
    """(PyTorch model, processor, ONNX detector) for a dynamic-batch export with post-processing."""
    if request.param == "small_data_encoder_queries":  # its decoder moves its boxes, and with them the queries
        model, processor = quickstart_model(SMALL_DATA)
        torch.nn.init.normal_(model.bbox_predictor.layers[-1].weight, std=0.1)
    elif request.param == "quickstart_encoder_queries":
        model, processor = quickstart_model()
    else:
        torch.manual_seed(0)
        model, processor = DeTRLiteForObjectDetection(tiny_config()).eval(), DeTRLiteImageProcessor(size=128)
    path = export_onnx(model, processor, tmp_path_factory.mktemp("onnx") / "model.onnx", postprocess_top_k=TOP_K)
    return model, processor, ONNXDetector(path)


def run_both(model, processor, detector, images):
    inputs = processor(images, return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs)
    feed = {"pixel_values": inputs["pixel_values"].numpy(), "pixel_mask": inputs["pixel_mask"].numpy()}
    actual = dict(zip(["logits", "pred_boxes", "scores", "labels", "boxes"], detector.session.run(None, feed)))
    return inputs, expected, actual


@pytest.mark.parametrize("batch", [1, 4])
def test_onnx_runtime_matches_pytorch_on_padded_and_unpadded_images(exported, batch):
    model, processor, detector = exported
    images = photos(batch) if batch > 1 else [Image.fromarray(render_sample(0, 1, 0).image).resize((90, 90))]
    inputs, expected, actual = run_both(model, processor, detector, images)
    padded = (inputs["pixel_mask"] == 0).flatten(1).any(1)
    assert padded.any() if batch > 1 else not padded.any()  # a square image has no padding, photos have
    np.testing.assert_allclose(actual["logits"], expected.logits.numpy(), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(actual["pred_boxes"], expected.pred_boxes.numpy(), atol=TOLERANCE, rtol=0)
    sizes = [(image.height, image.width) for image in images]
    ours = detector.detect(images, threshold=0.0)
    theirs = processor.post_process_object_detection(expected, threshold=0.0, target_sizes=sizes)
    for mine, reference in zip(ours, theirs):
        assert torch.equal(mine["labels"], reference["labels"])
        torch.testing.assert_close(mine["scores"], reference["scores"], atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(mine["boxes"], reference["boxes"], atol=0.1, rtol=0)  # pixels


def test_the_post_processing_graph_equals_the_processor(exported):
    model, processor, detector = exported
    _, expected, actual = run_both(model, processor, detector, photos(4))
    reference = processor.post_process_object_detection(expected, threshold=-1.0, top_k=TOP_K)
    np.testing.assert_allclose(actual["scores"], torch.stack([r["scores"] for r in reference]), atol=TOLERANCE)
    np.testing.assert_array_equal(actual["labels"], torch.stack([r["labels"] for r in reference]))
    np.testing.assert_allclose(actual["boxes"], torch.stack([r["boxes"] for r in reference]), atol=TOLERANCE)


def test_the_script_writes_a_checked_file_with_the_metadata(model_dir, tmp_path):
    output = tmp_path / "model.onnx"
    run_script("export_onnx.py", "--model", str(model_dir), "--output", str(output), "--batch_size", "2",
               "--postprocess", "--top_k", "3", "--quantize", "int8")
    graph = onnx.load(str(output))
    onnx.checker.check_model(graph, full_check=True)
    assert [i.name for i in graph.graph.input] == ["pixel_values", "pixel_mask"]
    assert [o.name for o in graph.graph.output] == ["logits", "pred_boxes", "scores", "labels", "boxes"]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    metadata = {prop.key: prop.value for prop in graph.metadata_props}
    assert json.loads(metadata["id2label"]) == {str(k): v for k, v in TINY_MODEL["id2label"].items()}
    settings = json.loads(metadata["image_processor"])
    assert settings["size"] == {"longest_edge": 128} and len(settings["image_mean"]) == 3  # the letterbox
    quantized = ONNXDetector(output.with_suffix(".int8.onnx"))  # the int8 copy keeps the metadata
    assert quantized.id2label == TINY_MODEL["id2label"] and quantized.image_processor.canvas_size == 128
    images = photos(2)
    for full, reduced in zip(ONNXDetector(output).detect(images, 0.0), quantized.detect(images, 0.0)):
        assert len(full["scores"]) == len(reduced["scores"]) == TINY_MODEL["num_queries"]
        assert (full["scores"].sort().values - reduced["scores"].sort().values).abs().max() < 0.05


def test_bad_inputs_are_named(tmp_path):
    script = load_script("export_onnx.py")
    with pytest.raises(ValueError, match=f"Cannot load a model and image processor from {tmp_path}"):
        script.load(str(tmp_path))
    with pytest.raises(ValueError, match="--batch_size must be a positive integer or 'dynamic', got '0'"):
        script.parse_batch_size("0")
    helper = onnx.helper
    value = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    identity = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [value],
                                 [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(identity), str(tmp_path / "bare.onnx"))
    with pytest.raises(ValueError, match="bare.onnx has no DeTR-Lite metadata.*export_onnx.py"):
        ONNXDetector(tmp_path / "bare.onnx")


@pytest.mark.slow
def test_r50_at_640_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    model = DeTRLiteForObjectDetection(DeTRLiteConfig(use_pretrained_backbone=False, num_labels=3)).eval()
    processor = DeTRLiteImageProcessor(size=640)
    detector = ONNXDetector(export_onnx(model, processor, tmp_path / "r50.onnx", batch_size=1))
    _, expected, actual = run_both(model, processor, detector, photos(2)[:1])
    np.testing.assert_allclose(actual["logits"], expected.logits.numpy(), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(actual["pred_boxes"], expected.pred_boxes.numpy(), atol=TOLERANCE, rtol=0)


def test_static_int8_runs_the_convolutions_in_int8_with_ranges_measured_on_calibration_images(tmp_path):
    torch.manual_seed(0)  # learned queries: an untrained encoder-query model may pick other tokens after rounding
    model, processor = DeTRLiteForObjectDetection(tiny_config()).eval(), DeTRLiteImageProcessor(size=128)
    path = export_onnx(model, processor, tmp_path / "model.onnx", batch_size=2)
    folder = tmp_path / "calibration"
    (folder / "nested").mkdir(parents=True)
    for index, image in enumerate(photos(6)):
        image.save(folder / ("nested" if index % 2 else "") / f"{index}.jpg")
    files = calibration_files(folder, limit=5)
    assert len(files) == 5 and all(file.suffix == ".jpg" for file in files)
    quantized = quantize_int8(path, tmp_path / "model.int8.onnx", calibration_images=files)

    graph = onnx.load(str(quantized)).graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    convolutions = [node for node in graph.node if node.op_type == "Conv"]
    assert convolutions
    for conv in convolutions:  # QDQ: int8 weights, uint8 activations, dequantised into each convolution
        weight, activation = producers[conv.input[1]], producers[conv.input[0]]
        assert weight.op_type == activation.op_type == "DequantizeLinear"
        stored = weight.input[0]  # an int8 initializer, or quantised in the graph (a weight shared by the export)
        assert stored in initializers and initializers[stored].data_type == onnx.TensorProto.INT8 or \
            producers[stored].op_type == "QuantizeLinear"
    detector, reference = ONNXDetector(quantized), ONNXDetector(path)  # metadata kept
    assert detector.id2label == reference.id2label
    inputs = processor(photos(2), return_tensors="pt")
    actual = detector.forward(inputs["pixel_values"], inputs["pixel_mask"])
    expected = reference.forward(inputs["pixel_values"], inputs["pixel_mask"])
    assert (actual.pred_boxes - expected.pred_boxes).abs().mean() < 0.01
    assert (actual.logits - expected.logits).abs().mean() < 0.1 * expected.logits.std()


def test_calibration_needs_a_folder_with_images(tmp_path):
    with pytest.raises(ValueError, match="Calibration folder not found"):
        calibration_files(tmp_path / "missing")
    with pytest.raises(ValueError, match="No images"):
        calibration_files(tmp_path)
