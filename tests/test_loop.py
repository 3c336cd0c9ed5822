"""detr_lite/training/loop.py from Python: train with a config, a dataset folder and an output dir; each loss
term reaches TensorBoard; a tracker that cannot run stops the run before training."""

import json

import pytest
from conftest import tiny_config

from detr_lite.data.synthetic import make_synthetic_dataset
from detr_lite.training import TrainingArguments, TrainingError, train

RECIPE = dict(per_device_train_batch_size=2, per_device_eval_batch_size=4, max_train_steps=2, eval_every=2,
              checkpointing_steps=2, dataloader_num_workers=0, logging_steps=1, learning_rate=1e-4,
              backbone_learning_rate=1e-4)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), num_train=4, num_val=2, seed=5)


def test_train_from_python_logs_every_loss_term_to_tensorboard(data_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = TrainingArguments(data_dir=str(data_dir), output_dir=str(tmp_path), with_tracking=True,
                             report_to="tensorboard", **RECIPE)
    metrics = train(args, tiny_config(dropout=0.0, freeze_batch_norm=False))
    assert 0.0 <= metrics["AP"] <= 1.0
    assert json.loads((tmp_path / "all_results.json").read_text())["train_steps"] == 2
    card = (tmp_path / "best" / "README.md").read_text()
    assert "detr_lite.training.train" in card  # the card says how the model was trained
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    tags = set()
    for event_file in events:
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    for name in ("loss", "loss_ce", "loss_bbox", "loss_giou", "cardinality_error", "lr"):
        assert f"train/{name}" in tags, tags
    assert {"eval/AP", "eval/AP50"} <= tags


def test_a_tracker_that_cannot_run_stops_before_training(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("accelerate.utils.is_tensorboard_available", lambda: False)
    args = TrainingArguments(data_dir=str(data_dir), output_dir=str(tmp_path / "out"), with_tracking=True, **RECIPE)
    with pytest.raises(TrainingError, match=r"tensorboard package is not installed.*pip install tensorboard"):
        train(args, tiny_config())
    assert not (tmp_path / "out").exists()
    with pytest.raises(TrainingError, match="not an Accelerate tracker"):
        train(TrainingArguments(data_dir=str(data_dir), with_tracking=True, report_to="tensorbored", **RECIPE))


def test_a_hub_dataset_offline_stops_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    args = TrainingArguments(dataset_name="someone/shapes", output_dir=str(tmp_path), **RECIPE)
    with pytest.raises(TrainingError, match=r"--dataset_name someone/shapes.*HF_HUB_OFFLINE"):
        train(args, tiny_config())
