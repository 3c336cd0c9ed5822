"""Checkpoint discovery: only complete checkpoints count, newest first for `latest`."""

import json

import pytest

from detr_lite.checkpointing import STATE_FILE, list_checkpoints, resolve_checkpoint


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
