"""Safe loading: nothing DeTR-Lite loads can run code. Weights come from safetensors or torch's weights-only
unpickler; a tampered pickle in a checkpoint is refused, naming the file; an installed detr_lite never runs the
code saved next to a model (`auto_map`), so it never needs `trust_remote_code`."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from scripts_helpers import run_script
from test_checkpointing import save, training_objects
from test_run_detection import TINY_PRESET

from detr_lite.training.checkpointing import CheckpointError, load_checkpoint
from detr_lite.data.synthetic import make_synthetic_dataset


class Payload:
    """Unpickling this creates `marker`: the harmless stand-in for what a tampered file could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def plant(path: Path, marker: Path) -> None:
    """Replace `path` with a torch file whose unpickling runs the payload."""
    torch.save({"state": Payload(marker)}, path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real checkpoint of what run_detection registers: weights, AdamW, RNG states, LR schedule, EMA."""
    return save(training_objects()[0], tmp_path_factory.mktemp("run"), 1)


@pytest.fixture
def copy(checkpoint, tmp_path) -> Path:
    return Path(shutil.copytree(checkpoint, tmp_path / "step_1"))


def test_the_planted_payload_runs_when_fully_unpickled(tmp_path):
    """Proves the files planted below are live: the old default torch.load(weights_only=False) runs them."""
    plant(tmp_path / "evil.pkl", tmp_path / "marker")
    torch.load(tmp_path / "evil.pkl", weights_only=False)
    assert (tmp_path / "marker").is_dir()


def test_checkpoint_holds_exactly_the_pickle_files_checked_below(checkpoint):
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "model.safetensors", "optimizer.bin",
        "random_states_0.pkl", "trainer_state.json"]


@pytest.mark.parametrize("name", ["optimizer.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl",
                                  "custom_checkpoint_1.pkl"])
def test_a_tampered_pickle_in_a_checkpoint_is_refused_unrun(copy, tmp_path, name):
    """Accelerate itself loads the scheduler and EMA (custom_checkpoint_*) with weights_only=False and skips
    unreadable RNG states silently; every file is refused here, before any of that."""
    marker = tmp_path / "marker"
    plant(copy / name, marker)
    accelerator = training_objects()[0]
    with pytest.raises(CheckpointError, match=f"Refusing to load {copy / name}: it holds Python objects"):
        load_checkpoint(accelerator, copy)
    assert not marker.exists()


def test_a_file_swapped_after_verification_is_still_not_run(copy, tmp_path, monkeypatch):
    """Loading itself runs with torch's weights-only unpickler forced on, even where Accelerate asks for the
    full one (the EMA, custom_checkpoint_1.pkl)."""
    marker = tmp_path / "marker"
    plant(copy / "custom_checkpoint_1.pkl", marker)
    monkeypatch.setattr("detr_lite.training.checkpointing.verify_checkpoint", lambda checkpoint: None)
    with pytest.raises(Exception, match="Weights only load failed"):
        load_checkpoint(training_objects()[0], copy)
    assert not marker.exists()


def test_a_damaged_checkpoint_file_is_named(copy):
    optimizer = copy / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:1000])  # truncated, e.g. by a bad copy
    with pytest.raises(CheckpointError, match=f"Cannot read {optimizer} .*the checkpoint is damaged"):
        load_checkpoint(training_objects()[0], copy)


def test_resuming_from_a_tampered_checkpoint_stops_with_the_file_named(copy, tmp_path):
    marker = tmp_path / "marker"
    plant(copy / "custom_checkpoint_0.pkl", marker)
    data_dir = make_synthetic_dataset(tmp_path / "data", num_train=2, num_val=1, seed=0)
    (tmp_path / "preset.json").write_text(json.dumps(TINY_PRESET))
    result = run_script("run_detection.py", "--config", str(tmp_path / "preset.json"), "--data_dir", str(data_dir),
                        "--output_dir", str(tmp_path / "out"), "--resume_from_checkpoint", str(copy), check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"Refusing to load {copy / 'custom_checkpoint_0.pkl'}" in result.stderr
    assert "Traceback" not in result.stderr and not marker.exists()


def test_from_pretrained_never_unpickles_objects(model_dir, tmp_path):
    """A model folder with a pickled `pytorch_model.bin` instead of safetensors (e.g. --model_name_or_path)."""
    from detr_lite import DeTRLiteForObjectDetection

    folder = Path(shutil.copytree(model_dir, tmp_path / "model"))
    (folder / "model.safetensors").unlink()
    plant(folder / "pytorch_model.bin", tmp_path / "marker")
    with pytest.raises(Exception, match="Weights only load failed"):
        DeTRLiteForObjectDetection.from_pretrained(folder)
    assert not (tmp_path / "marker").exists()


def test_official_checkpoint_conversion_never_unpickles_objects(tmp_path):
    from detr_lite.conversion import convert_checkpoint

    plant(tmp_path / "detr-r50.pth", tmp_path / "marker")
    with pytest.raises(Exception, match="Weights only load failed"):
        convert_checkpoint("official", tmp_path / "detr-r50.pth")
    assert not (tmp_path / "marker").exists()


def test_installed_detr_lite_never_runs_the_code_saved_with_a_model(model_dir, tmp_path):
    """save_pretrained copies the package's code into the folder and `auto_map` in config.json points at it (for
    trust_remote_code without the package). With detr_lite installed, that copy is never imported: here every
    copied file is replaced by code that would leave a marker, and nothing passes trust_remote_code."""
    import detr_lite
    from transformers import AutoImageProcessor, AutoModelForObjectDetection, pipeline

    folder = Path(shutil.copytree(model_dir, tmp_path / "model"))
    config = json.loads((folder / "config.json").read_text())
    assert "AutoModelForObjectDetection" in config["auto_map"]
    copied = sorted(folder.glob("*.py"))
    assert {"modeling_detr_lite.py", "image_processing_detr_lite.py"} <= {p.name for p in copied}
    marker = tmp_path / "marker"
    for path in copied:
        path.write_text(f"import os\nos.makedirs({str(marker)!r}, exist_ok=True)\n")
    model = AutoModelForObjectDetection.from_pretrained(folder)
    processor = AutoImageProcessor.from_pretrained(folder)
    detector = pipeline("object-detection", model=str(folder))
    assert type(model) is detr_lite.DeTRLiteForObjectDetection and type(detector.model) is type(model)
    assert type(processor) is detr_lite.DeTRLiteImageProcessor
    assert not marker.exists()
