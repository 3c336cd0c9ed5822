"""Fit the training schedule to a wall-clock budget (`--max_train_time`) from the step times measured here.

A preset that says "1,900 steps" trains for 9 minutes on one CPU and 15 on another. With a time budget the run
times its own steps and sets the number of steps, and with it the learning-rate schedule (which decays to the
last step), to what fits the budget on this machine. The fit is repeated as the run goes, so that the slower
steps that come only now and then (a new epoch's first batches, a checkpoint) are counted too.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TimeBudget:
    """Training time allowed, and when to (re)fit the number of steps to it.

    Attributes:
        seconds: Training time (evaluation and saving are not counted).
        first_fit: The step after which the first fit is made; the steps before it are timed but not trusted
            alone (the first steps are slower: allocator and thread pools warming up).
        refit_until: Fraction of the run up to which the fit is repeated (every `refit_every` of it); later the
            schedule stays as it is, so the learning rate decays smoothly to its end.
    """

    seconds: float
    first_fit: int = 25
    refit_every: float = 0.1
    refit_until: float = 0.5

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ValueError(f"--max_train_time must be a positive number of minutes, got {self.seconds / 60!r}.")

    def wants_fit(self, step: int, total_steps: int) -> bool:
        """Whether to refit after `step` (1-based) of a run currently planned for `total_steps`."""
        if step < self.first_fit or step > self.refit_until * total_steps:
            return False
        if step == self.first_fit:
            return True
        every = max(1, round(self.refit_every * total_steps))
        return step % every == 0

    def fit(self, step: int, elapsed: float) -> int:
        """Total steps that fit the budget, at the mean time of the `step` steps done in `elapsed` seconds.

        Never fewer than `step + 1`: the run always takes at least one more step before it stops.
        """
        seconds_per_step = elapsed / max(step, 1)
        return max(step + 1, int(self.seconds / seconds_per_step))
