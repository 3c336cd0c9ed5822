"""scripts/run_detection.py under faults: a diverging loss stops the run cleanly, and SIGTERM (a scheduler's
preemption) checkpoints the current step and exits with 128 + 15, resumable with --resume_from_checkpoint latest."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scripts_helpers import SCRIPTS, run_script
from test_run_detection import TINY_PRESET

from detr_lite.checkpointing import resolve_checkpoint
from detr_lite.data.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), num_train=8, num_val=4, seed=3)


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
            deadline = time.monotonic() + 120
            while "loss=" not in log.read_text() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)  # logging_steps=1: "loss=" appears once the first step is done
            assert process.poll() is None, log.read_text()[-3000:]
            os.killpg(process.pid, signal.SIGTERM)
            time.sleep(0.2)
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
