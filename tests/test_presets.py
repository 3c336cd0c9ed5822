"""detr_lite/training/presets.py and arguments.py: every preset key and recipe setting is checked."""

import json
from pathlib import Path

import pytest

from detr_lite.training import TrainingArguments
from detr_lite.training.presets import read_preset

PRESETS = Path(__file__).resolve().parents[1] / "configuration"


@pytest.mark.parametrize("name", ["detr_lite_r50.json", "detr_lite_quickstart.json"])
def test_shipped_presets_read_cleanly(name):
    preset = read_preset(PRESETS / name)
    assert preset.model and preset.training


@pytest.mark.parametrize("section, key, closest", [
    ("model", "decoder_layer", "decoder_layers"),
    ("training", "learning_rte", "learning_rate"),
    ("data", "num_trains", "num_train"),
])
def test_an_unknown_preset_key_names_the_closest_valid_one(tmp_path, section, key, closest):
    path = tmp_path / "preset.json"
    path.write_text(json.dumps({section: {key: 2}}))
    with pytest.raises(ValueError, match=f"unknown key '{key}' in the \"{section}\" section. Did you mean '{closest}'"):
        read_preset(path)


def test_an_unknown_preset_key_stops_the_script_before_training(tmp_path, monkeypatch):
    from scripts_helpers import load_script

    path = tmp_path / "preset.json"
    path.write_text(json.dumps({"model": {"decoder_layer": 2}}))
    with pytest.raises(SystemExit, match="'decoder_layer'.*Did you mean 'decoder_layers'"):
        load_script("run_detection.py").main(["--config", str(path), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("settings, flag", [
    ({"max_image_pixels": -1}, "--max_image_pixels"),
    ({"eval_every": "sometimes"}, "--eval_every"),
    ({"per_device_train_batch_size": 0}, "--per_device_train_batch_size"),
    ({"lr_scheduler_type": "linear"}, "--lr_scheduler_type"),
    ({"data_dir": "a", "dataset_name": "b"}, "--dataset_name"),
])
def test_invalid_training_arguments_name_the_flag(settings, flag):
    with pytest.raises(ValueError, match=flag):
        TrainingArguments(**settings)
