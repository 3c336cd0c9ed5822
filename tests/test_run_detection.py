"""scripts/run_detection.py and scripts/evaluate.py end to end on a tiny synthetic set: training, evaluation,
checkpoints, resume, the saved model and its card, and a two-machine launch on one host."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scripts_helpers import SCRIPTS, run_script

from detr_lite.data.synthetic import make_synthetic_dataset
from detr_lite.training.components import native_bf16

TINY_PRESET = {
    "model": {
        "backbone": "resnet18", "freeze_batch_norm": False, "trainable_backbone_layers": 5, "d_model": 32,
        "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
        "encoder_layers": 1, "decoder_layers": 2, "num_queries": 8, "dropout": 0.0, "image_size": 128,
    },
    "training": {
        "learning_rate": 1e-4, "backbone_learning_rate": 1e-4, "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 4, "max_train_steps": 4, "eval_every": 2, "checkpointing_steps": 2,
        "checkpoints_total_limit": 2, "dataloader_num_workers": 0, "logging_steps": 1, "lr_scheduler_type": "cosine",
        "num_warmup_steps": 1,
    },
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), num_train=8, num_val=4, seed=3)


@pytest.fixture(scope="module")
def preset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("preset") / "tiny.json"
    path.write_text(json.dumps(TINY_PRESET))
    return path


def train(preset: Path, data_dir: Path, output_dir: Path, *extra: str):
    return run_script("run_detection.py", "--config", str(preset), "--data_dir", str(data_dir),
                      "--output_dir", str(output_dir), *extra)


@pytest.fixture(scope="module")
def trained(preset, data_dir, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("run")
    train(preset, data_dir, output_dir, "--with_tracking", "--report_to", "tensorboard")
    return output_dir


def test_training_writes_results_best_model_card_and_checkpoints(trained):
    results = json.loads((trained / "all_results.json").read_text())
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"):
        assert 0.0 <= results[key] <= 1.0 or results[key] == -1.0, key
    assert results["train_steps"] == 4 and [p["step"] for p in results["learning_curve"]] == [2, 4]
    best = trained / "best"
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= {
        p.name for p in best.iterdir()}
    card = (best / "README.md").read_text()
    assert "pipeline_tag: object-detection" in card and "model-index" in card and "$" not in card
    assert json.loads((best / "config.json").read_text())["use_pretrained_backbone"] is False
    checkpoints = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert checkpoints == ["step_2", "step_4"]
    assert (trained / "sample_prediction.jpg").is_file()
    assert list(trained.glob("detr_lite/events.out.tfevents.*")), "TensorBoard logs missing"


def test_best_model_works_in_the_pipeline(trained, data_dir):
    import detr_lite  # noqa: F401
    from transformers import pipeline

    detector = pipeline("object-detection", model=str(trained / "best"))
    detections = detector(str(next((data_dir / "val").iterdir())), threshold=0.0)
    assert detections and {"score", "label", "box"} <= set(detections[0])


def test_the_quickstart_recipe_trains_saves_and_reloads(data_dir, tmp_path):
    """Selected encoder queries, box refinement and a one-to-many group, end to end; the sample shows boxes."""
    recipe = json.loads(json.dumps(TINY_PRESET))
    del recipe["model"]["num_queries"]
    recipe["model"].update(query_source="encoder", box_refinement=True, num_selected_queries=5, one_to_many_copies=3)
    recipe["training"].update(max_train_steps=2, eval_every=2, checkpointing_steps=2, mixed_precision="auto")
    preset = tmp_path / "recipe.json"
    preset.write_text(json.dumps(recipe))
    result = train(preset, data_dir, tmp_path / "run")
    # "auto" trains in bf16 exactly where this machine computes it natively.
    expected = "bf16" if native_bf16() else "no"
    assert f"mixed precision: {expected}" in result.stderr
    assert json.loads((tmp_path / "run" / "all_results.json").read_text())["train_steps"] == 2
    from detr_lite import DeTRLiteForObjectDetection

    model = DeTRLiteForObjectDetection.from_pretrained(tmp_path / "run" / "best").eval()
    with torch.no_grad():
        outputs = model(torch.zeros(1, 3, 128, 128))
    assert outputs.pred_boxes.shape == (1, 5, 4)  # one detection per selected encoder token
    # Two steps score nothing above 0.5, so the sample falls back to the 3 best detections, drawn.
    assert "drawing the 3 best" in result.stderr
    from PIL import Image

    sample = torch.from_numpy(np.asarray(Image.open(tmp_path / "run" / "sample_prediction.jpg"), dtype=np.int16))
    source = torch.from_numpy(np.asarray(Image.open(data_dir / "val" / "000000.jpg").convert("RGB"), dtype=np.int16))
    changed = ((sample - source).abs().amax(-1) > 60).float().mean()
    assert changed > 0.005, "no box drawn on the sample prediction"


def test_mixed_precision_auto_is_native_bf16_and_a_flag_or_the_launcher_wins(monkeypatch):
    from detr_lite.training import components as run_detection

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(run_detection, "native_bf16", lambda: True)
    assert run_detection.resolve_mixed_precision("auto", flag_given=False) == "bf16"
    monkeypatch.setattr(run_detection, "native_bf16", lambda: False)  # emulated bf16 would be slower than fp32
    assert run_detection.resolve_mixed_precision("auto", flag_given=False) == "no"
    assert run_detection.resolve_mixed_precision("fp16", flag_given=True) == "fp16"
    assert run_detection.resolve_mixed_precision(None, flag_given=False) is None
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # set by accelerate launch
    assert run_detection.resolve_mixed_precision("auto", flag_given=False) is None  # Accelerator reads the launcher's
    assert run_detection.resolve_mixed_precision("bf16", flag_given=True) == "bf16"


def test_resume_from_latest_continues_exactly(preset, data_dir, tmp_path):
    """2 steps, then resume for 2 more == 4 steps straight: model, optimizer, scheduler, EMA, RNG and the
    position in the epoch are all restored. The first 2 steps are compiled (--torch_compile)."""
    from safetensors.torch import load_file

    ema = ("--ema_decay", "0.5")
    train(preset, data_dir, tmp_path / "straight", *ema)
    # The first half runs through torch.compile (the "eager" backend: dynamo's graph capture, no code generation,
    # so it runs without a C++ compiler) and must give the same training as the uncompiled model.
    train(preset, data_dir, tmp_path / "resumed", "--max_train_steps", "2", *ema, "--torch_compile",
          "--torch_compile_backend", "eager")
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "step_2" / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["batch_in_epoch"] == 2  # 8 images / batch 2: mid-epoch
    # An interrupted save leaves only a partial folder, which `latest` must ignore.
    (tmp_path / "resumed" / "checkpoints" / ".partial-step_3").mkdir()
    result = train(preset, data_dir, tmp_path / "resumed", "--resume_from_checkpoint", "latest", *ema)
    assert "Resumed from" in result.stderr and "at step 2" in result.stderr
    resumed_results = json.loads((tmp_path / "resumed" / "all_results.json").read_text())
    assert resumed_results["train_steps"] == 4
    assert [point["step"] for point in resumed_results["learning_curve"]] == [2, 4]  # both runs' evaluations
    train(preset, data_dir, tmp_path / "resumed", "--resume_from_checkpoint", "latest", *ema)  # already done
    assert json.loads((tmp_path / "resumed" / "all_results.json").read_text())["train_steps"] == 4
    assert not (tmp_path / "resumed" / "checkpoints" / "step_5").exists()
    straight = load_file(tmp_path / "straight" / "checkpoints" / "step_4" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "checkpoints" / "step_4" / "model.safetensors")
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-6, rtol=1e-5, msg=name)
    # The EMA is the second object registered for checkpointing (after the scheduler).
    straight_ema = torch.load(tmp_path / "straight" / "checkpoints" / "step_4" / "custom_checkpoint_1.pkl",
                              weights_only=True)
    resumed_ema = torch.load(tmp_path / "resumed" / "checkpoints" / "step_4" / "custom_checkpoint_1.pkl",
                             weights_only=True)
    assert any(name.endswith("running_var") for name in straight_ema)  # batch-norm statistics are averaged too
    for name, tensor in straight_ema.items():
        torch.testing.assert_close(resumed_ema[name], tensor, atol=1e-6, rtol=1e-5, msg=name)


def test_bad_arguments_fail_clearly(preset, data_dir, tmp_path):
    result = run_script("run_detection.py", "--config", str(preset), "--data_dir", str(tmp_path / "missing"),
                        "--output_dir", str(tmp_path / "out"), check=False)
    assert result.returncode != 0 and "does not exist" in result.stderr
    result = run_script("run_detection.py", "--config", str(preset), "--data_dir", str(data_dir),
                        "--val_split", "nope", "--output_dir", str(tmp_path / "out"), check=False)
    assert result.returncode != 0 and "nope" in result.stderr
    result = run_script("run_detection.py", "--config", str(preset), "--data_dir", str(data_dir), "--push_to_hub",
                        "--hub_model_id", "me/x", "--output_dir", str(tmp_path / "out"), check=False, timeout=120)
    assert result.returncode != 0 and "push_to_hub" in result.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()  # failed before training started


def test_runs_that_would_train_nothing_stop_before_training(preset, data_dir, tmp_path):
    """In-process (no subprocess start-up): each case fails with its own message, nothing is written."""
    sys.path.insert(0, str(SCRIPTS))
    import run_detection

    common = ["--config", str(preset), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="has 8 images, fewer than one batch of 16 x 1"):
        run_detection.main([*common, "--data_dir", str(data_dir), "--per_device_train_batch_size", "16"])
    with pytest.raises(SystemExit, match="--max_image_pixels must be 0"):
        run_detection.main([*common, "--data_dir", str(data_dir), "--max_image_pixels", "-1"])
    empty = tmp_path / "empty"
    shutil.copytree(data_dir, empty)
    (empty / "annotations" / "instances_train.json").write_text(json.dumps(
        {**json.loads((empty / "annotations" / "instances_train.json").read_text()), "images": [], "annotations": []}))
    with pytest.raises(SystemExit, match="split 'train' has no images; there is nothing to train on"):
        run_detection.main([*common, "--data_dir", str(empty)])
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_evaluate_script_model_and_predictions_agree(trained, data_dir, tmp_path):
    run_script("evaluate.py", "--model", str(trained / "best"), "--data_dir", str(data_dir), "--split", "val",
               "--output", str(tmp_path / "metrics.json"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["AP"] == pytest.approx(json.loads((trained / "best" / "eval_results.json").read_text())["AP"])
    assert set(metrics["per_class_AP"]) == set(json.loads((trained / "best" / "config.json").read_text())[
        "id2label"].values())
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in json.loads((data_dir / "annotations" / "instances_val.json").read_text())["annotations"]]
    (tmp_path / "perfect.json").write_text(json.dumps(perfect))
    run_script("evaluate.py", "--predictions", str(tmp_path / "perfect.json"), "--data_dir", str(data_dir),
               "--split", "val", "--output", str(tmp_path / "perfect_metrics.json"))
    assert json.loads((tmp_path / "perfect_metrics.json").read_text())["AP"] == pytest.approx(1.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_machines_on_one_host(preset, data_dir, tmp_path):
    """`accelerate launch --num_machines 2` as two real launchers (ranks 0 and 1) talking over 127.0.0.1."""
    port = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launchers = [
        subprocess.Popen(
            [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
             "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
             "--main_process_port", port, "--mixed_precision", "no", "--dynamo_backend", "no",
             str(SCRIPTS / "run_detection.py"), "--config", str(preset), "--data_dir", str(data_dir),
             "--output_dir", str(tmp_path), "--max_train_steps", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for rank in (0, 1)
    ]
    outputs = [launcher.communicate(timeout=600)[0] for launcher in launchers]
    assert all(launcher.returncode == 0 for launcher in launchers), "\n".join(o[-3000:] for o in outputs)
    assert "steps of 2 x 2 images" in outputs[0]  # per-device batch x 2 processes
    results = json.loads((tmp_path / "all_results.json").read_text())
    assert results["train_steps"] == 2 and results["train_images_seen"] == 2 * 2 * 2


def test_evaluate_reports_voc_map_on_voc_data(data_dir, tmp_path):
    from detr_lite.data import load_detection_dataset

    run_script("convert_dataset.py", "--data_dir", str(data_dir), "--output_dir", str(tmp_path / "voc"),
               "--to", "voc")
    ground_truth = load_detection_dataset(tmp_path / "voc", "val").to_coco_dict()
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in ground_truth["annotations"]]
    (tmp_path / "perfect.json").write_text(json.dumps(perfect))
    run_script("evaluate.py", "--predictions", str(tmp_path / "perfect.json"), "--data_dir", str(tmp_path / "voc"),
               "--split", "val", "--output", str(tmp_path / "metrics.json"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["VOC_mAP50"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)


BCCD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bccd"


@pytest.mark.skipif(not BCCD.is_dir(), reason="the real-photo development set (../shared/datasets/bccd) is absent")
def test_the_small_data_preset_trains_on_real_photos(tmp_path):
    run_script("run_detection.py", "--config", str(SCRIPTS.parent / "configuration" / "detr_lite_small_data.json"),
               "--data_dir", str(BCCD), "--train_split", "train", "--val_split", "val", "--output_dir", str(tmp_path),
               "--max_train_samples", "16", "--max_eval_samples", "4", "--max_train_steps", "2",
               "--eval_every", "2", "--checkpointing_steps", "2")
    results = json.loads((tmp_path / "all_results.json").read_text())
    assert results["train_steps"] == 2  # the preset's time budget gives way to the length asked for
    assert {"AP50", "VOC_mAP50", "duplicate_rate", "detections"} <= set(results)
    config = json.loads((tmp_path / "best" / "config.json").read_text())
    assert config["image_size"] == 320 and sorted(config["id2label"].values()) == ["Platelets", "RBC", "WBC"]
