"""detr_lite.onnx_runtime: the pipeline's output format, and predict.py --onnx writing what the PyTorch path writes."""

import json

import pytest
import torch
from PIL import Image
from transformers import pipeline

from scripts_helpers import run_script

pytest.importorskip("onnxruntime")

from detr_lite.onnx_runtime import ONNXDetector  # noqa: E402


@pytest.fixture(scope="module")
def onnx_file(model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    run_script("export_onnx.py", "--model", str(model_dir), "--output", str(path))
    return path


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """Two images of different shapes, so that a batch of both is padded."""
    root = tmp_path_factory.mktemp("photos")
    torch.manual_seed(3)
    Image.fromarray((torch.rand(90, 160, 3) * 255).to(torch.uint8).numpy()).save(root / "wide.png")
    Image.fromarray((torch.rand(150, 70, 3) * 255).to(torch.uint8).numpy()).save(root / "tall.png")
    return root


def test_detections_have_the_pipelines_format_and_values(model_dir, onnx_file, photo_dir):
    detector = ONNXDetector(onnx_file)
    paths = [str(photo_dir / "wide.png"), str(photo_dir / "tall.png")]
    expected = pipeline("object-detection", model=str(model_dir))(paths, threshold=0.0)
    actual = detector(paths, threshold=0.0)
    assert len(actual) == 2 and actual[0] and detector(paths[0], threshold=0.0) == actual[0]
    for mine, theirs in zip(actual, expected):
        assert [d["label"] for d in mine] == [d["label"] for d in theirs]
        assert [set(d["box"]) for d in mine] == [{"xmin", "ymin", "xmax", "ymax"}] * len(mine)
        for ours, reference in zip(mine, theirs):
            assert ours["score"] == pytest.approx(reference["score"], abs=1e-4)
            assert all(abs(ours["box"][k] - reference["box"][k]) <= 1 for k in ours["box"])  # integer pixels


def test_predict_with_onnx_writes_what_the_pytorch_path_writes(model_dir, onnx_file, photo_dir, tmp_path):
    common = [str(photo_dir), "--threshold", "0.0", "--batch_size", "2", "--device", "cpu"]
    run_script("predict.py", "--model", str(model_dir), *common, "--output_dir", str(tmp_path / "torch"))
    run_script("predict.py", "--onnx", str(onnx_file), *common, "--output_dir", str(tmp_path / "onnx"))
    expected = json.loads((tmp_path / "torch" / "detections.json").read_text())
    actual = json.loads((tmp_path / "onnx" / "detections.json").read_text())
    assert actual.keys() == expected.keys()
    for path, entries in expected.items():
        assert [e["label"] for e in actual[path]] == [e["label"] for e in entries]
        for ours, theirs in zip(actual[path], entries):
            assert ours["score"] == pytest.approx(theirs["score"], abs=2e-4)  # both rounded to 4 places
            assert ours["box"] == pytest.approx(theirs["box"], abs=0.02)  # pixels, rounded to 2 places
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == sorted(p.name for p in (tmp_path / "torch").iterdir())


def test_predict_needs_exactly_one_model_source(onnx_file, photo_dir, model_dir):
    result = run_script("predict.py", str(photo_dir), check=False)
    assert result.returncode == 2 and "Pass exactly one of --model" in result.stderr
    result = run_script("predict.py", "--onnx", str(onnx_file), "--attention", str(photo_dir), check=False)
    assert result.returncode == 2 and "--attention needs the PyTorch model" in result.stderr


def test_evaluate_with_onnx_scores_what_the_pytorch_model_scores(tmp_path):
    from conftest import tiny_config
    from detr_lite import DeTRLiteForObjectDetection, DeTRLiteImageProcessor
    from detr_lite.data import load_detection_dataset
    from detr_lite.data.synthetic import make_synthetic_dataset

    data_dir = make_synthetic_dataset(tmp_path / "synthetic", num_train=1, num_val=4, seed=5)
    id2label = load_detection_dataset(data_dir, "val").id2label
    torch.manual_seed(0)
    model = DeTRLiteForObjectDetection(tiny_config(id2label=dict(enumerate(id2label.values()))))
    model.save_pretrained(tmp_path / "model")
    DeTRLiteImageProcessor(size=128).save_pretrained(tmp_path / "model")
    run_script("export_onnx.py", "--model", str(tmp_path / "model"), "--output", str(tmp_path / "model.onnx"))
    common = ["--data_dir", str(data_dir), "--split", "val", "--device", "cpu"]
    run_script("evaluate.py", "--model", str(tmp_path / "model"), *common, "--output", str(tmp_path / "torch.json"))
    run_script("evaluate.py", "--onnx", str(tmp_path / "model.onnx"), *common, "--output", str(tmp_path / "onnx.json"))
    expected = json.loads((tmp_path / "torch.json").read_text())
    actual = json.loads((tmp_path / "onnx.json").read_text())
    for key in ("AP", "AP50", "AR100"):
        assert actual[key] == pytest.approx(expected[key], abs=1e-3), key
