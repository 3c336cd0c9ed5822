"""DETR's optimisation recipe: AdamW with a smaller backbone learning rate, no weight decay on norms and biases,
warmup, then a step or cosine decay; optionally an exponential moving average of the weights."""

import math
from collections.abc import Callable

import timm
import torch
from torch import nn


def parameter_groups(model: nn.Module, learning_rate: float, backbone_learning_rate: float,
                     weight_decay: float) -> list[dict]:
    """AdamW parameter groups: (backbone | rest) x (decayed | not decayed).

    Biases, norm scales and other 1-D tensors get no weight decay: decaying them only pulls
    normalisation and offsets towards zero without regularising anything.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        key = (".backbone." in f".{name}", parameter.ndim > 1)
        groups.setdefault(key, []).append(parameter)
    return [
        {
            "params": params,
            "lr": backbone_learning_rate if is_backbone else learning_rate,
            "weight_decay": weight_decay if decayed else 0.0,
        }
        for (is_backbone, decayed), params in sorted(groups.items())
    ]


def lr_lambda(step: int, scheduler_type: str, warmup_steps: int, total_steps: int, drop_step: int | None,
              min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier at `step`: linear warmup, then constant / step (x0.1 at `drop_step`) / cosine."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if scheduler_type == "constant":
        return 1.0
    if scheduler_type == "step":
        return 0.1 if drop_step is not None and step >= drop_step else 1.0
    if scheduler_type == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"lr_scheduler_type must be 'constant', 'step' or 'cosine', got {scheduler_type!r}.")


def build_scheduler(optimizer: torch.optim.Optimizer, scheduler_type: str, warmup_steps: int,
                    total_steps: int | Callable[[], int], drop_step: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over `lr_lambda`; its state is a step counter, so it checkpoints and resumes exactly.

    `total_steps` may be a function, read at every step: a time budget changes the run's length as it goes.
    """
    total = total_steps if callable(total_steps) else lambda: total_steps
    lr_lambda(0, scheduler_type, warmup_steps, total(), drop_step)  # validate the type up front
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_lambda(step, scheduler_type, warmup_steps, total(), drop_step)
    )


def apply_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Set every group's learning rate from the schedule at the scheduler's current step.

    After resuming, the optimizer holds the rate the interrupted run had; when the run is resumed with
    other settings (e.g. a larger --max_train_steps), the rate must follow the new schedule from here on.
    """
    for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)


def build_ema(model: nn.Module, decay: float) -> timm.utils.ModelEmaV3:
    """An exponential moving average of `model`'s parameters and buffers, updated with `ema.update(model, step)`.

    Buffers too: a from-scratch preset trains its batch norms, and averaged weights evaluated with the running
    statistics of the first step would be garbage. The decay warms up with the step, 1 - (1 + step)^-3/4 capped at
    `decay` (0 at the first update, which copies the model): the random initial weights then leave the average
    within tens of steps instead of weighing on the end of a short run. Its state is a copy of the model, so it
    checkpoints and resumes exactly (the decay follows the step, which the trainer restores).
    """
    return timm.utils.ModelEmaV3(model, decay=decay, use_warmup=True, warmup_power=0.75)
