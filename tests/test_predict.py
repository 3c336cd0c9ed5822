"""scripts/predict.py: one run writes detections.json, annotated and attention images; bad input is named."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForObjectDetection

from conftest import TINY_MODEL
from scripts_helpers import load_script, run_script

ID2LABEL = TINY_MODEL["id2label"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder tree: a wide JPEG, a tall PNG in a sub-folder, an unreadable .jpg and a text file."""
    root = tmp_path_factory.mktemp("photos")
    torch.manual_seed(2)
    (root / "sub").mkdir()
    Image.fromarray((torch.rand(90, 160, 3) * 255).to(torch.uint8).numpy()).save(root / "wide.jpg")
    Image.fromarray((torch.rand(150, 70, 3) * 255).to(torch.uint8).numpy()).save(root / "sub" / "tall.png")
    (root / "broken.jpg").write_bytes(b"this is not a JPEG")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def run(model_dir, images, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("predictions")
    result = run_script(
        "predict.py", "--model", str(model_dir), str(images), "--threshold", "0.0", "--attention",
        "--batch_size", "2", "--output_dir", str(output_dir), "--device", "cpu",
    )
    return result, output_dir


def test_writes_one_json_for_the_readable_images(run, images):
    result, output_dir = run
    detections = json.loads((output_dir / "detections.json").read_text())
    assert set(detections) == {str(images / "wide.jpg"), str(images / "sub" / "tall.png")}
    sizes = {str(images / "wide.jpg"): (160, 90), str(images / "sub" / "tall.png"): (70, 150)}
    for path, entries in detections.items():
        assert len(entries) == TINY_MODEL["num_queries"]  # threshold 0: every query
        width, height = sizes[path]
        for entry in entries:
            assert set(entry) == {"label", "label_id", "score", "box"}
            assert entry["label"] == ID2LABEL[entry["label_id"]]
            x0, y0, x1, y1 = entry["box"]
            assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height
    assert str(output_dir) in result.stdout


def test_skips_the_unreadable_image_with_a_warning_naming_it(run, images):
    result, _ = run
    assert f"skipping {images / 'broken.jpg'}" in result.stderr
    assert "notes.txt" not in result.stderr + result.stdout  # not an image suffix: never opened


def test_writes_annotated_and_attention_images_of_the_input_size(run):
    _, output_dir = run
    for stem, size in (("wide", (160, 90)), ("sub/tall", (70, 150))):
        assert Image.open(output_dir / f"{stem}_pred.jpg").size == size
        attention = sorted(output_dir.glob(f"{stem}_attn_*.jpg"))
        assert [p.name for p in attention] == [f"{Path(stem).name}_attn_{k}.jpg" for k in range(5)]
        assert all(Image.open(p).size == size for p in attention)


def test_json_equals_the_processors_post_processing(run, model_dir, images):
    _, output_dir = run
    detections = json.loads((output_dir / "detections.json").read_text())
    model = AutoModelForObjectDetection.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    for path in (images / "wide.jpg", images / "sub" / "tall.png"):
        image = Image.open(path)
        with torch.no_grad():
            outputs = model(**processor(image))
        expected = processor.post_process_object_detection(outputs, 0.0, target_sizes=[image.size[::-1]])[0]
        got = detections[str(path)]
        assert len(got) == len(expected["scores"])
        for score, label, box in zip(expected["scores"].tolist(), expected["labels"].tolist(), expected["boxes"]):
            # ranks may swap between near-equal scores: find the matching entry
            match = [e for e in got if abs(e["score"] - score) < 1e-4 and e["label_id"] == label
                     and torch.allclose(torch.tensor(e["box"]), box, atol=0.01)]
            assert match, f"{path}: no JSON detection for score {score:.4f}, box {box.tolist()}"


def test_missing_model_folder_and_missing_input_are_named(tmp_path, model_dir, images, capsys):
    predict = load_script("predict.py")
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--model", str(tmp_path / "nope"), str(images)])
    assert exit_info.value.code == 2
    assert f"Model folder not found: {tmp_path / 'nope'}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict.main(["--model", str(model_dir), str(images / "missing.jpg")])
    assert f"Input not found: {images / 'missing.jpg'}" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit):
        predict.main(["--model", str(model_dir), str(empty)])
    assert f"No images (.jpg, .jpeg, .png, .bmp, .webp) found under folder {empty}" in capsys.readouterr().err


def test_output_names_mirror_folders_and_never_collide(tmp_path):
    predict = load_script("predict.py")
    for name in ("photos/a.jpg", "photos/a.png", "photos/x/a.JPG", "photos/x/y/b.webp", "other/a.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    photos = tmp_path / "photos"
    jobs = predict.find_images([str(photos), str(tmp_path / "other" / "a.jpg"), str(photos / "x")])
    assert [str(job.stem) for job in jobs] == ["a", "a_2", "x/a", "x/y/b", "a_3"]  # photos/x: already listed
    assert [job.path for job in jobs][-1] == tmp_path / "other" / "a.jpg"
