"""The training loop's progress: one typed object, written into every checkpoint as `trainer_state.json`."""

import dataclasses
from dataclasses import dataclass, field


@dataclass
class TrainingState:
    """Where a run stands; everything a resumed run needs beyond Accelerate's own state.

    `batch_in_epoch` counts the micro-batches already trained in `epoch`, so a resumed run skips exactly those.
    `learning_curve` holds one `{"step", "AP", "AP50", "minutes"}` entry per evaluation, so a resumed run
    reports the whole curve.
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_AP: float = -1.0
    images_seen: int = 0
    train_time: float = 0.0  # seconds of training (evaluation included) up to the last checkpoint or evaluation
    last_eval_step: int = -1
    last_checkpoint_step: int = -1
    skipped_steps: int = 0  # steps whose loss was not finite, so whose update was skipped
    eval_time: float = 0.0  # seconds of `train_time` spent evaluating (a time budget does not count them)
    planned_steps: int | None = None  # the step count fitted to --max_train_time, once fitted
    learning_curve: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The JSON-ready form written into a checkpoint."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingState":
        """The state read back from a checkpoint's `trainer_state.json`.

        Raises:
            ValueError: the file holds a key this version does not know (written by another program).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"trainer_state.json: unknown keys {unknown}; it was not written by DeTR-Lite.")
        return cls(**values)
