"""Training checkpoints: written atomically, loaded without unpickling anything but tensors and plain data.

Each checkpoint is `{output_dir}/checkpoints/step_{N}`: Accelerate's state (model, optimizer, RNG, registered
objects: the LR scheduler and the EMA) plus `trainer_state.json`. It is written under a temporary name and renamed
into place only once complete (a rename within one file system is atomic), so a kill mid-save never leaves a folder
that `latest` would pick, and a failed write (a full disk) removes the temporary folder and changes nothing else.
"""

import contextlib
import json
import os
import pickle
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import load as weights_only_load

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_PARTIAL = ".partial-"
_PREVIOUS = ".previous-"
# Accelerate's pickle-based files: optimizer/scheduler/sampler `.bin`, the fp16 scaler `.pt`, RNG states and
# registered objects `.pkl`. The model itself is safetensors.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pkl")
# Tests only (tests/test_training_faults.py): the save of this step SIGKILLs its own process once Accelerate has
# written its files and before the checkpoint is complete, as an OOM kill or a power cut would.
KILL_DURING_SAVE_ENV = "DETR_LITE_TEST_SIGKILL_DURING_SAVE"


class CheckpointError(RuntimeError):
    """A checkpoint or the best model could not be written, or a checkpoint is unsafe to load; says what to do."""


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first. Temporary folders of interrupted saves are not listed."""
    folder = checkpoints_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [path for _, path in sorted(found) if (path / STATE_FILE).is_file()]


def resolve_checkpoint(output_dir: str | Path, resume_from: str) -> Path:
    """`latest` -> the newest complete checkpoint under output_dir; otherwise the given folder."""
    if resume_from == "latest":
        complete = list_checkpoints(output_dir)
        if not complete:
            raise FileNotFoundError(
                f"--resume_from_checkpoint latest: no complete checkpoint in {checkpoints_dir(output_dir)}."
            )
        return complete[-1]
    path = Path(resume_from)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete DeTR-Lite checkpoint (no {STATE_FILE}).")
    return path


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**30:.2f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.1f} MiB"


def weights_bytes(model: torch.nn.Module) -> int:
    """Size of the model's weights and buffers as saved (safetensors adds a small header)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def checkpoint_bytes(model: torch.nn.Module, with_ema: bool) -> int:
    """Approximate size of one checkpoint: the weights, AdamW's two moments per trainable parameter, and with an
    EMA a second copy of the weights. Metadata and RNG states add a few KiB."""
    moments = 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return weights_bytes(model) * (2 if with_ema else 1) + moments


def check_disk_space(output_dir: str | Path, model: torch.nn.Module, with_ema: bool) -> None:
    """Fail before training when `output_dir` cannot hold one checkpoint plus the best model."""
    checkpoint, best = checkpoint_bytes(model, with_ema), weights_bytes(model)
    free = shutil.disk_usage(output_dir).free
    if free < checkpoint + best:
        raise CheckpointError(
            f"Not enough disk space in {output_dir}: {_size(free)} free, but one checkpoint ({_size(checkpoint)}) "
            f"and the best model ({_size(best)}) need {_size(checkpoint + best)}. Free space there or choose an "
            "--output_dir on a larger disk."
        )


@contextlib.contextmanager
def write_atomically(final: Path, hint: str, is_main_process: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling folder to write `final` into; it replaces `final` once the block completes.

    If the block fails, the temporary folder is removed, `final` is left as it was, and CheckpointError names
    `final`, followed by `hint` (what is still intact, what to do). A full disk shows up as OSError, as
    RuntimeError from torch's writer or as SafetensorError, hence `except Exception`. With several processes
    writing into one folder, only the main process creates, renames and removes it.
    """
    partial = final.with_name(_PARTIAL + final.name)
    try:
        if is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        yield partial
    except Exception as error:
        if is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        raise CheckpointError(
            f"Could not write {final} ({type(error).__name__}: {error}); most often the disk is full. The incomplete "
            f"copy was removed and nothing else was changed. {hint}"
        ) from error
    if is_main_process:
        # Two renames, not delete-then-rename: a kill between them leaves a complete copy under a known name
        # for microseconds instead of no copy for as long as deleting the old folder takes.
        previous = final.with_name(_PREVIOUS + final.name)
        shutil.rmtree(previous, ignore_errors=True)
        if final.exists():
            final.rename(previous)
        partial.rename(final)
        shutil.rmtree(previous, ignore_errors=True)


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, state: dict, keep_last: int) -> Path:
    """Save the training state as checkpoint `step_{state['step']}`, then keep only the newest `keep_last`.

    Every process must call this (Accelerate saves per-process RNG states). Raises CheckpointError when the write
    fails; the earlier checkpoints are then untouched.
    """
    folder = checkpoints_dir(output_dir)
    final = folder / f"step_{state['step']}"
    kept = list_checkpoints(output_dir)
    hint = (f"The newest complete checkpoint, {kept[-1]}, is intact: free disk space, then continue with "
            "--resume_from_checkpoint latest." if kept else "There is no earlier checkpoint; free disk space and "
            "start again.")
    if accelerator.is_main_process:
        for stale in folder.glob(f"{_PARTIAL}step_*"):  # left by a killed save; can be as large as a checkpoint
            shutil.rmtree(stale, ignore_errors=True)
    with write_atomically(final, hint, accelerator.is_main_process) as partial:
        accelerator.wait_for_everyone()  # the folder exists before any process writes into it
        accelerator.save_state(str(partial))
        if os.environ.get(KILL_DURING_SAVE_ENV) == str(state["step"]):
            os.kill(os.getpid(), signal.SIGKILL)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (partial / STATE_FILE).write_text(json.dumps(state, indent=2))
    if accelerator.is_main_process:
        for old in list_checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def verify_checkpoint(checkpoint: Path) -> None:
    """Refuse a checkpoint whose pickle-based files hold anything but tensors and plain data, or cannot be read.

    Each file is read with torch's weights-only unpickler (plus the numpy array types of the RNG states, as
    Accelerate allows them), which builds no other object and so runs no code.

    Raises:
        CheckpointError: naming the first such file.
    """
    for path in sorted(p for p in checkpoint.iterdir() if p.suffix in _PICKLE_SUFFIXES):
        try:
            weights_only_load(path, map_location="cpu")
        except pickle.UnpicklingError as error:
            raise CheckpointError(
                f"Refusing to load {path}: it holds Python objects other than tensors and plain data, and loading "
                "it could run arbitrary code. DeTR-Lite never writes such files, so it was modified or comes from "
                f"elsewhere. Resume from another checkpoint (delete {checkpoint}) or start afresh."
            ) from error
        except (RuntimeError, EOFError) as error:
            raise CheckpointError(
                f"Cannot read {path} ({error}): the checkpoint is damaged. Resume from another checkpoint (delete "
                f"{checkpoint}) or start afresh."
            ) from error


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Make every torch.load use the weights-only unpickler, even Accelerate's for registered objects, which asks
    for the full one (`weights_only=False`); so nothing runs code even if a file changed after verification."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def load_checkpoint(accelerator: Accelerator, checkpoint: Path) -> dict:
    """Restore the Accelerate state from `checkpoint` and return its trainer state (step, epoch, ...).

    Raises:
        CheckpointError: when a file of the checkpoint is unsafe to load or damaged (see verify_checkpoint).
    """
    verify_checkpoint(checkpoint)
    rng_states = checkpoint / f"random_states_{accelerator.process_index}.pkl"
    if not rng_states.is_file():  # Accelerate would only log this and go on with fresh random states
        raise CheckpointError(
            f"{rng_states} is missing, so the resumed run could not continue with the same random states (an "
            f"exact resume). Resume from another checkpoint, or with the number of processes that wrote {checkpoint}."
        )
    with _weights_only_loads():
        accelerator.load_state(str(checkpoint))
    return json.loads((checkpoint / STATE_FILE).read_text())
