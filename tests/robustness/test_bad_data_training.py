"""scripts/run_detection.py end to end on data with unreadable images: skipped and counted, or a clear stop."""

import json

import pytest
from corpus import UNREADABLE
from scripts_helpers import run_script
from test_run_detection import TINY_PRESET

from detr_lite.data.synthetic import make_synthetic_dataset


@pytest.fixture
def broken_data(tmp_path):
    """The tiny synthetic set with two unreadable training images and one unreadable validation image."""
    root = make_synthetic_dataset(tmp_path / "data", num_train=8, num_val=4, seed=3)
    broken = [sorted((root / "train").iterdir())[0], sorted((root / "train").iterdir())[5],
              sorted((root / "val").iterdir())[1]]
    for path, kind in zip(broken, ("truncated.jpg", "empty.jpg", "not_an_image.jpg")):
        path.unlink()
        UNREADABLE[kind][0](path)
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_PRESET))
    return root, [str(path) for path in broken]


def train(tmp_path, data_dir, *extra):
    return run_script("run_detection.py", "--config", str(tmp_path / "tiny.json"), "--data_dir", str(data_dir),
                      "--output_dir", str(tmp_path / "out"), *extra, check=False)


def test_unreadable_images_are_skipped_with_one_warning_each_and_counted(tmp_path, broken_data):
    data_dir, broken = broken_data

    result = train(tmp_path, data_dir, "--max_train_steps", "8", "--dataloader_num_workers", "2")

    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert results["train_steps"] == 8 and results["skipped_samples"] == 3
    assert results["skipped_images"] == sorted(broken)
    for path in broken:  # met in 2 epochs and 4 evaluations, warned about once
        assert result.stderr.count(f"Skipping unreadable image {path}:") == 1, path
    assert f"Skipped 3 unreadable images: {', '.join(sorted(broken))}" in result.stderr


def test_on_bad_sample_error_stops_naming_the_file(tmp_path, broken_data):
    data_dir, broken = broken_data

    result = train(tmp_path, data_dir, "--on_bad_sample", "error", "--max_train_steps", "8")

    assert result.returncode == 1
    named = [path for path in broken if f"{path}: image: " in result.stderr]
    assert len(named) == 1 and "--on_bad_sample skip" in result.stderr and "Traceback" not in result.stderr


def test_image_over_max_image_pixels_stops_naming_file_and_limit(tmp_path, broken_data):
    data_dir, _ = broken_data

    result = train(tmp_path, data_dir, "--max_image_pixels", "100")

    assert result.returncode == 1
    assert "more pixels than the limit of 100" in result.stderr and str(data_dir / "train") in result.stderr
    assert "Traceback" not in result.stderr
