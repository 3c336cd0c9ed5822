"""Training checkpoints written atomically: a kill mid-save never leaves a folder that `latest` would pick.

Each checkpoint is `{output_dir}/checkpoints/step_{N}`: Accelerate's state (model, optimizer, scheduler, RNG,
registered objects such as the EMA) plus `trainer_state.json`. It is written under a temporary name and renamed
into place only once complete; a rename within one file system is atomic.
"""

import json
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


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


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, state: dict, keep_last: int) -> Path:
    """Save the training state as checkpoint `step_{state['step']}`, then keep only the newest `keep_last`.

    Every process must call this (Accelerate saves per-process RNG states); only the main process renames.
    """
    folder = checkpoints_dir(output_dir)
    final = folder / f"step_{state['step']}"
    partial = folder / f".partial-step_{state['step']}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / STATE_FILE).write_text(json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        for old in list_checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, checkpoint: Path) -> dict:
    """Restore the Accelerate state from `checkpoint` and return its trainer state (step, epoch, ...)."""
    accelerator.load_state(str(checkpoint))
    return json.loads((checkpoint / STATE_FILE).read_text())
