"""scripts/run_detection.py under faults: a diverging loss stops the run cleanly; SIGTERM (a scheduler's
preemption) checkpoints the current step and exits with 128 + 15; after SIGKILL, during training or during a
checkpoint write, --resume_from_checkpoint latest continues from the last complete checkpoint exactly; an unusable
output folder or too little disk space stops the run before training, a disk filling up stops it cleanly."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from scripts_helpers import SCRIPTS, load_script, run_script
from test_checkpointing import file_size_limit
from test_run_detection import TINY_PRESET

from detr_lite import DeTRLiteConfig, DeTRLiteForObjectDetection
from detr_lite.training.checkpointing import (KILL_DURING_SAVE_ENV, CheckpointError, list_checkpoints, resolve_checkpoint,
                                     weights_bytes)
from detr_lite.data.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), num_train=8, num_val=4, seed=3)


def wait_for_log(log: Path, text: str, process: subprocess.Popen, seconds: float = 120) -> None:
    """Polls the training log until `text` appears, the process ends or `seconds` pass (the caller checks which)."""
    deadline = time.monotonic() + seconds
    while text not in log.read_text() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


def write_preset(folder: Path, **training) -> Path:
    path = folder / "preset.json"
    path.write_text(json.dumps({**TINY_PRESET, "training": {**TINY_PRESET["training"], **training}}))
    return path


def test_diverging_loss_stops_and_keeps_the_last_checkpoint(data_dir, tmp_path):
    """A learning rate of 1e6 without clipping blows the weights up in the first update: step 1 is finite and
    checkpointed, every later loss is NaN/inf (or the matcher reports non-finite predictions)."""
    preset = write_preset(tmp_path, learning_rate=1e6, backbone_learning_rate=1e6, max_grad_norm=0,
                          lr_scheduler_type="constant", num_warmup_steps=0, max_train_steps=20,
                          checkpointing_steps=1, eval_every=100)
    output_dir = tmp_path / "out"
    result = run_script("run_detection.py", "--config", str(preset), "--data_dir", str(data_dir), "--output_dir",
                        str(output_dir), "--max_consecutive_nonfinite", "3", check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Training diverged" in result.stderr and "steps 2-4" in result.stderr
    assert "lower --learning_rate" in result.stderr and "check the data" in result.stderr
    for step in (2, 3, 4):
        assert f"step {step}: the loss is NaN or inf; update skipped" in result.stderr
    assert "step 5:" not in result.stderr  # stopped at the third skipped step
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["step_1"]
    latest = resolve_checkpoint(output_dir, "latest")
    state = json.loads((latest / "trainer_state.json").read_text())
    assert latest.name == "step_1" and state["step"] == 1 and state["skipped_steps"] == 0
    assert (latest / "model.safetensors").is_file() and (latest / "optimizer.bin").is_file()


def test_sigterm_checkpoints_the_current_step_and_resumes_from_it(data_dir, tmp_path):
    """SIGTERM (then a second signal, as an impatient scheduler or user sends) goes to the whole process group,
    DataLoader workers included; the run finishes its step, checkpoints it and exits 143."""
    preset = write_preset(tmp_path, max_train_steps=400, checkpointing_steps=1000, eval_every=1000,
                          dataloader_num_workers=1)
    output_dir, log = tmp_path / "out", tmp_path / "train.log"
    common = ["--config", str(preset), "--data_dir", str(data_dir), "--output_dir", str(output_dir)]
    with log.open("w") as stream:
        process = subprocess.Popen([sys.executable, str(SCRIPTS / "run_detection.py"), *common], stdout=stream,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_log(log, "loss=", process)  # logging_steps=1: "loss=" appears once the first step is done
            assert process.poll() is None, log.read_text()[-3000:]
            os.killpg(process.pid, signal.SIGTERM)
            # Python runs pending handlers in signal-number order, so SIGINT sent while the step still holds the
            # interpreter would be handled first; the second signal goes once the first has been acknowledged.
            wait_for_log(log, "SIGTERM received", process)
            os.killpg(process.pid, signal.SIGINT)
            returncode = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    output = log.read_text()
    assert returncode == 143, output[-3000:]
    assert "SIGINT ignored" in output and "Resume with" in output and "--resume_from_checkpoint latest" in output
    checkpoints = list((output_dir / "checkpoints").iterdir())
    assert len(checkpoints) == 1, checkpoints
    step = json.loads((checkpoints[0] / "trainer_state.json").read_text())["step"]
    assert checkpoints[0].name == f"step_{step}" and 1 <= step < 400
    assert f"Stopped by SIGTERM at step {step} of 400" in output

    result = run_script("run_detection.py", *common, "--resume_from_checkpoint", "latest",
                        "--max_train_steps", str(step + 1), "--dataloader_num_workers", "0")
    assert "Resumed from" in result.stderr and f"at step {step}" in result.stderr
    assert json.loads((output_dir / "all_results.json").read_text())["train_steps"] == step + 1
    assert json.loads((output_dir / "checkpoints" / f"step_{step + 1}" / "trainer_state.json").read_text())[
        "step"] == step + 1


def test_help_documents_the_exit_codes():
    result = run_script("run_detection.py", "--help")
    assert "130 for SIGINT, 143 for SIGTERM" in result.stdout and "--max_consecutive_nonfinite" in result.stdout


def run_detection_module():
    """scripts/run_detection.py imported in-process, to call main() for failures that happen before training."""
    return load_script("run_detection.py")


def test_an_output_dir_that_cannot_be_created_fails_before_training(data_dir, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    output_dir = tmp_path / "file" / "out"
    with pytest.raises(SystemExit, match=re.escape(f"--output_dir {output_dir} cannot be created")):
        run_detection_module().main(["--config", str(write_preset(tmp_path)), "--data_dir", str(data_dir),
                                     "--output_dir", str(output_dir)])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_dir_fails_before_training(data_dir, tmp_path):
    output_dir = tmp_path / "out"
    output_dir.mkdir(mode=0o555)
    with pytest.raises(SystemExit, match=re.escape(f"--output_dir {output_dir} is not writable")):
        run_detection_module().main(["--config", str(write_preset(tmp_path)), "--data_dir", str(data_dir),
                                     "--output_dir", str(output_dir)])


def test_too_little_disk_space_fails_before_training(data_dir, tmp_path, monkeypatch):
    """The tiny preset's model is about 43 MiB: one checkpoint (weights + two AdamW moments) and best/ need 4x."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 40, 1 << 40, 100 << 20))
    output_dir = tmp_path / "out"
    with pytest.raises(CheckpointError, match=re.escape(f"Not enough disk space in {output_dir}: 100.0 MiB free") +
                       r", but one checkpoint \(1\d\d\.\d MiB\) and the best model \(4\d\.\d MiB\) need"):
        run_detection_module().main(["--config", str(write_preset(tmp_path)), "--data_dir", str(data_dir),
                                     "--output_dir", str(output_dir)])
    assert not (output_dir / "checkpoints").exists()


def test_disk_full_during_a_checkpoint_write_stops_with_a_clear_error(data_dir, tmp_path):
    """A real failed write: a file-size limit (EFBIG, as ENOSPC on a full disk) that best/ fits under (written
    first, at the step-2 evaluation) and the checkpoint's optimizer state (twice the weights) does not."""
    resource = pytest.importorskip("resource")
    config = DeTRLiteConfig(**TINY_PRESET["model"], id2label={0: "circle", 1: "square", 2: "triangle"})
    limit = int(1.5 * weights_bytes(DeTRLiteForObjectDetection(config)))
    output_dir = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "run_detection.py"), "--config", str(write_preset(tmp_path)), "--data_dir",
         str(data_dir), "--output_dir", str(output_dir)], capture_output=True, text=True, timeout=600,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY)))
    assert result.returncode == 1, result.stderr[-3000:]
    checkpoint = output_dir / "checkpoints" / "step_2"
    assert f"Could not write {checkpoint}" in result.stderr and "most often the disk is full" in result.stderr
    assert "The incomplete copy was removed" in result.stderr and "no earlier checkpoint" in result.stderr
    assert "Traceback" not in result.stderr
    assert list((output_dir / "checkpoints").iterdir()) == []  # neither step_2 nor its partial folder
    assert (output_dir / "best" / "model.safetensors").is_file()


def test_a_failed_best_model_save_keeps_the_previous_best(model_dir, tmp_path):
    from detr_lite import DeTRLiteImageProcessor
    from detr_lite.training.saving import save_model

    model, processor = DeTRLiteForObjectDetection.from_pretrained(model_dir), DeTRLiteImageProcessor(size=128)
    best, info = tmp_path / "best", {"model_name": "tiny", "dataset_name": "shapes"}
    save_model(best, model, processor, {"AP": 0.1}, info)
    with file_size_limit(1 << 20), pytest.raises(CheckpointError) as raised:  # the weights (43 MiB) do not fit
        save_model(best, model, processor, {"AP": 0.2}, info)
    assert f"Could not write {best}" in str(raised.value) and "The checkpoints are not affected" in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no partial folder left
    assert json.loads((best / "eval_results.json").read_text())["AP"] == 0.1


SIX_STEPS = {"max_train_steps": 6, "eval_every": 1000}  # checkpoints at steps 2, 4 and 6, one evaluation at the end


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory) -> Path:
    """An uninterrupted 6-step run (checkpoints at 2, 4, 6) that killed-and-resumed runs must reproduce exactly."""
    folder = tmp_path_factory.mktemp("straight")
    run_script("run_detection.py", "--config", str(write_preset(folder, **SIX_STEPS)), "--data_dir",
               str(data_dir), "--output_dir", str(folder / "out"))
    return folder / "out"


def assert_same_final_state(resumed: Path, straight: Path) -> None:
    """Bit-identical weights after the last step, which needs the same data order, augmentation (RNG) and learning
    rates; the schedule's own state too."""
    final_resumed, final_straight = resumed / "checkpoints" / "step_6", straight / "checkpoints" / "step_6"
    expected = load_file(final_straight / "model.safetensors")
    weights = load_file(final_resumed / "model.safetensors")
    for name, tensor in expected.items():
        assert torch.equal(weights[name], tensor), name
    schedule = [torch.load(folder / "custom_checkpoint_0.pkl", weights_only=True)
                for folder in (final_resumed, final_straight)]
    assert schedule[0] == schedule[1] and schedule[0]["last_epoch"] == 6
    states = [json.loads((folder / "trainer_state.json").read_text()) for folder in (final_resumed, final_straight)]
    for key in ("step", "epoch", "batch_in_epoch", "images_seen", "skipped_steps"):
        assert states[0][key] == states[1][key], key


def resume(preset: Path, data_dir: Path, output_dir: Path, step: int) -> None:
    result = run_script("run_detection.py", "--config", str(preset), "--data_dir", str(data_dir), "--output_dir",
                        str(output_dir), "--resume_from_checkpoint", "latest")
    assert f"Resumed from {output_dir / 'checkpoints' / f'step_{step}'} at step {step}" in result.stderr
    assert not list((output_dir / "checkpoints").glob(".partial-*"))


def test_sigkill_during_training_resumes_from_the_last_complete_checkpoint(data_dir, straight, tmp_path):
    """kill -9 once step 3 is done (the progress bar shows 3/6), while steps 4-6 are still to run."""
    preset, output_dir, log = write_preset(tmp_path, **SIX_STEPS), tmp_path / "out", tmp_path / "train.log"
    with log.open("w") as stream:
        process = subprocess.Popen([sys.executable, str(SCRIPTS / "run_detection.py"), "--config", str(preset),
                                    "--data_dir", str(data_dir), "--output_dir", str(output_dir)], stdout=stream,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_log(log, "| 3/6 [", process)
            assert process.poll() is None, log.read_text()[-3000:]
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            returncode = process.wait(timeout=60)
    assert returncode == -signal.SIGKILL
    assert not (output_dir / "all_results.json").exists()  # killed before the end
    latest = resolve_checkpoint(output_dir, "latest")
    step = json.loads((latest / "trainer_state.json").read_text())["step"]
    assert step in (2, 4) and latest.name == f"step_{step}"
    resume(preset, data_dir, output_dir, step)
    assert_same_final_state(output_dir, straight)


def test_sigkill_during_a_checkpoint_write_resumes_from_the_previous_checkpoint(data_dir, straight, tmp_path):
    """The save of step 4 SIGKILLs its own process once Accelerate has written its files (a test-only hook):
    `.partial-step_4` is left, without trainer_state.json; `latest` is step 2, and the resumed run replaces the
    partial folder with a complete step 4."""
    preset, output_dir = write_preset(tmp_path, **SIX_STEPS), tmp_path / "out"
    killed = subprocess.run([sys.executable, str(SCRIPTS / "run_detection.py"), "--config", str(preset),
                             "--data_dir", str(data_dir), "--output_dir", str(output_dir)], capture_output=True,
                            text=True, timeout=600, env={**os.environ, KILL_DURING_SAVE_ENV: "4"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    partial = output_dir / "checkpoints" / ".partial-step_4"
    assert (partial / "model.safetensors").is_file() and (partial / "optimizer.bin").is_file()
    assert not (partial / "trainer_state.json").exists()
    assert [p.name for p in list_checkpoints(output_dir)] == ["step_2"]
    resume(preset, data_dir, output_dir, 2)
    assert [p.name for p in list_checkpoints(output_dir)] == ["step_4", "step_6"]
    assert_same_final_state(output_dir, straight)
