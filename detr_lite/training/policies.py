"""What the training loop does when something goes wrong or a decision is due, as small functions and classes:
non-finite steps, stop signals (SIGINT/SIGTERM), when to evaluate or checkpoint, which model to keep."""

import logging
import signal
from pathlib import Path

from .checkpointing import list_checkpoints

logger = logging.getLogger(__name__)


class TrainingError(Exception):
    """A run that cannot start or go on; the message says what to do. `exit_code` is the script's exit status."""

    exit_code = 1


class TrainingInterrupted(TrainingError):
    """SIGINT or SIGTERM stopped the run after a checkpoint; exit status 128 + the signal, the shell's convention."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignal:
    """SIGINT/SIGTERM only record the signal; the training loop stops at the end of the step and checkpoints.

    Later signals are ignored, so a second Ctrl-C cannot kill the process in the middle of that checkpoint.
    Use as a context manager: the previous handlers come back on exit.
    """

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict = {}

    def __enter__(self) -> "StopSignal":
        self._previous = {sig: signal.signal(sig, self.record) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def record(self, signum: int, frame=None) -> None:
        """The signal handler: remember the first signal, ignore the rest."""
        name = signal.Signals(signum).name
        if self.signum:
            logger.warning("%s ignored: already stopping, the checkpoint is being written.", name)
            return
        self.signum = signum
        logger.warning("%s received: finishing this step, then saving a checkpoint and exiting.", name)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT/SIGTERM (sent to the whole process group by Ctrl-C or a scheduler), so
    the batches of the step being finished still arrive; workers exit when the main process does."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def nonfinite_streak(streak: int, step_skipped: bool, limit: int, step: int, output_dir: Path) -> int:
    """The number of non-finite steps in a row after this step.

    Raises:
        TrainingError: the streak reached `limit`: the run diverged (the message says what to try).
    """
    if not step_skipped:
        return 0
    streak += 1
    if streak >= limit:
        raise TrainingError(diverged_message(streak, step, output_dir))
    return streak


def diverged_message(streak: int, step: int, output_dir: Path) -> str:
    """What happened and what to try, naming the checkpoint a resume would start from."""
    kept = list_checkpoints(output_dir)
    where = (f"The last checkpoint before the divergence is kept: {kept[-1]} (--resume_from_checkpoint latest "
             "picks it)." if kept else "No checkpoint was written before the divergence.")
    return (f"Training diverged: the loss was NaN or inf for {streak} steps in a row (steps {step - streak + 1}-"
            f"{step}); each was skipped, and the run stopped. {where} Try a lower --learning_rate and "
            "--backbone_learning_rate, more warmup (--num_warmup_steps), gradient clipping (--max_grad_norm 0.1), "
            "and check the data for broken images or boxes.")


def is_due(step: int, every: int | None, streak: int) -> bool:
    """Whether a step-interval action (evaluation, checkpoint) runs after `step`.

    `every` None means once per epoch, decided at the epoch's end instead. Weights that gave a non-finite loss
    (`streak` > 0) are neither evaluated nor checkpointed: `latest` must stay a good checkpoint.
    """
    return every is not None and step % every == 0 and not streak


def is_new_best(ap: float, best_ap: float) -> bool:
    """Keep a model when its COCO AP beats every earlier evaluation (the first evaluation always does)."""
    return ap > best_ap
