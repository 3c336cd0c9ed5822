"""Checkpoints: only complete ones count, newest first for `latest`; a failed write changes nothing; loading
restores the state; the disk-space preflight."""

import contextlib
import json
import os
import shutil
from collections.abc import Iterator

import pytest
import torch
from accelerate import Accelerator
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from detr_lite.training.checkpointing import (STATE_FILE, CheckpointError, check_disk_space, checkpoint_bytes,
                                     list_checkpoints, load_checkpoint, resolve_checkpoint, save_checkpoint,
                                     weights_bytes)
from detr_lite.training.optimization import build_scheduler, parameter_groups


def make(folder, step: int, complete: bool = True):
    path = folder / "checkpoints" / f"step_{step}"
    path.mkdir(parents=True)
    if complete:
        (path / STATE_FILE).write_text(json.dumps({"step": step}))
    return path


def test_latest_is_the_newest_complete_checkpoint(tmp_path):
    make(tmp_path, 2)
    newest = make(tmp_path, 10)  # numeric, not lexicographic, order
    make(tmp_path, 12, complete=False)  # killed before its state file was written
    (tmp_path / "checkpoints" / ".partial-step_14").mkdir()  # killed mid-save
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_2", "step_10"]
    assert resolve_checkpoint(tmp_path, "latest") == newest


def test_missing_checkpoints_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_checkpoint(tmp_path, "latest")
    with pytest.raises(FileNotFoundError, match="not a complete DeTR-Lite checkpoint"):
        resolve_checkpoint(tmp_path, str(make(tmp_path, 3, complete=False)))


def training_objects(seed: int = 0):
    """What run_detection registers for checkpointing, on a small model: AdamW, the LR schedule and an EMA, one
    step into training (AdamW creates its moments at the first step). The first layer is frozen, as a frozen
    backbone would be: it has no optimizer moments."""
    torch.manual_seed(seed)
    accelerator = Accelerator()
    model = nn.Sequential(nn.Linear(256, 256), nn.BatchNorm1d(256), nn.Linear(256, 256))
    model[0].requires_grad_(False)
    optimizer = torch.optim.AdamW(parameter_groups(model, 1e-3, 1e-4, 1e-4))
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = build_scheduler(optimizer, "cosine", 1, 10)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.5))
    accelerator.register_for_checkpointing(scheduler)
    accelerator.register_for_checkpointing(ema)
    model(torch.randn(8, 256)).square().mean().backward()
    optimizer.step()
    scheduler.step()
    ema.update_parameters(model)
    return accelerator, model, optimizer, scheduler, ema


def save(accelerator, output_dir, step: int, keep_last: int = 2):
    return save_checkpoint(accelerator, output_dir, {"step": step}, keep_last)


def test_load_restores_weights_optimizer_schedule_and_ema(tmp_path):
    """Loading runs with torch's weights-only unpickler forced on; the registered objects still load."""
    accelerator, model, optimizer, scheduler, ema = training_objects()
    saved = save(accelerator, tmp_path, 1)
    expected = ({k: v.clone() for k, v in model.state_dict().items()}, scheduler.state_dict(),
                {k: v.clone() for k, v in ema.state_dict().items()}, optimizer.state_dict()["state"][0]["exp_avg"])
    accelerator, model, optimizer, scheduler, ema = training_objects(seed=1)
    force_weights_only = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    assert load_checkpoint(accelerator, saved) == {"step": 1}
    for name, tensor in expected[0].items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert scheduler.state_dict() == expected[1] and scheduler.last_epoch == 1
    for name, tensor in expected[2].items():
        assert torch.equal(ema.state_dict()[name], tensor), name
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], expected[3])
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") == force_weights_only  # restored after loading


def test_a_checkpoint_without_this_process_random_states_is_refused(tmp_path):
    accelerator = training_objects()[0]
    saved = save(accelerator, tmp_path, 1)
    (saved / "random_states_0.pkl").unlink()
    with pytest.raises(CheckpointError, match="random_states_0.pkl is missing.*exact resume"):
        load_checkpoint(accelerator, saved)


def test_the_next_save_removes_stale_partial_folders(tmp_path):
    accelerator = training_objects()[0]
    stale = tmp_path / "checkpoints" / ".partial-step_7"  # a save killed at step 7 of an earlier run
    stale.mkdir(parents=True)
    (stale / "optimizer.bin").write_bytes(b"half a file")
    save(accelerator, tmp_path, 3)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_3"]


@contextlib.contextmanager
def file_size_limit(num_bytes: int) -> Iterator[None]:
    """Writes past `num_bytes` in a file fail with EFBIG, as they would with ENOSPC on a full disk (Python ignores
    SIGXFSZ, so the write returns the error): a real failed write through torch's and safetensors' writers."""
    resource = pytest.importorskip("resource")  # Linux and macOS
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (num_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_failed_write_keeps_the_previous_checkpoint_as_latest(tmp_path):
    accelerator = training_objects()[0]
    previous = save(accelerator, tmp_path, 1)
    with file_size_limit(100_000), pytest.raises(CheckpointError) as raised:  # the weights (0.5 MiB) do not fit
        save(accelerator, tmp_path, 2)
    message = str(raised.value)
    assert f"Could not write {tmp_path / 'checkpoints' / 'step_2'}" in message and "disk is full" in message
    assert f"The newest complete checkpoint, {previous}, is intact" in message
    assert "--resume_from_checkpoint latest" in message
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_1"]  # no partial folder left
    assert resolve_checkpoint(tmp_path, "latest") == previous


def test_checkpoint_size_estimate_matches_the_written_files(tmp_path):
    accelerator, model = training_objects()[:2]
    saved = save(accelerator, tmp_path, 1)
    estimate = checkpoint_bytes(model, with_ema=True)
    weights = 4 * (2 * 257 * 256 + 4 * 256) + 8  # two linear layers, batch norm (+ its int64 batch counter)
    assert estimate == 2 * weights + 2 * 4 * (257 * 256 + 2 * 256)  # model + EMA, two moments of what trains
    written = sum((saved / name).stat().st_size for name in ("model.safetensors", "optimizer.bin",
                                                             "custom_checkpoint_1.pkl"))  # weights, moments, EMA
    assert abs(written - estimate) / estimate < 0.02, (written, estimate)
    assert abs(weights_bytes(model) - (saved / "model.safetensors").stat().st_size) < 1024


def test_too_little_disk_space_is_reported_before_training(tmp_path, monkeypatch):
    model = nn.Linear(1024, 1024)  # 4 MiB of weights, 8 MiB of moments
    check_disk_space(tmp_path, model, with_ema=False)  # the real disk has room
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 40, 1 << 40, 5 << 20))
    with pytest.raises(CheckpointError) as raised:
        check_disk_space(tmp_path, model, with_ema=False)
    message = str(raised.value)
    assert f"Not enough disk space in {tmp_path}: 5.0 MiB free" in message
    assert "one checkpoint (12.0 MiB) and the best model (4.0 MiB) need 16.0 MiB" in message
    assert "--output_dir on a larger disk" in message
