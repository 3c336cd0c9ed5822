"""DETR's optimiser groups, learning-rate schedules and the moving average of the weights."""

import math

import pytest
import torch
from conftest import tiny_config
from torch import nn

from detr_lite import DeTRLiteForObjectDetection
from detr_lite.training.optimization import (apply_schedule, build_ema, build_scheduler, lr_lambda,
                                           parameter_groups)


def test_backbone_gets_its_own_rate_and_norms_biases_no_decay():
    model = DeTRLiteForObjectDetection(tiny_config(freeze_batch_norm=False))
    groups = parameter_groups(model, learning_rate=1e-4, backbone_learning_rate=1e-5, weight_decay=1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        for parameter in group["params"]:
            name = names[id(parameter)]
            assert group["lr"] == (1e-5 if name.startswith("model.backbone.") else 1e-4), name
            assert group["weight_decay"] == (1e-4 if parameter.ndim > 1 else 0.0), name
    grouped = sum(len(g["params"]) for g in groups)
    assert grouped == sum(1 for p in model.parameters() if p.requires_grad)  # every trainable one, once
    frozen = dict(model.named_parameters())["model.backbone.body.conv1.weight"]
    assert not any(frozen is p for g in groups for p in g["params"])  # frozen stem stays out


def test_schedules():
    assert [lr_lambda(s, "step", 2, 10, drop_step=5) for s in (0, 1, 4, 5, 9)] == [0.5, 1.0, 1.0, 0.1, 0.1]
    assert lr_lambda(2, "cosine", 2, 10, None) == pytest.approx(1.0)
    assert lr_lambda(6, "cosine", 2, 10, None) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_lambda(10, "cosine", 2, 10, None) == pytest.approx(0.0)
    assert lr_lambda(7, "constant", 0, 10, None) == 1.0
    with pytest.raises(ValueError, match="lr_scheduler_type"):
        lr_lambda(0, "linear-ish", 0, 10, None)


def test_scheduler_state_round_trip_resumes_the_same_rate():
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([parameter], lr=1.0)
    scheduler = build_scheduler(optimizer, "cosine", 3, 20)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    saved = scheduler.state_dict()
    fresh_optimizer = torch.optim.AdamW([parameter], lr=1.0)
    restored = build_scheduler(fresh_optimizer, "cosine", 3, 20)
    restored.load_state_dict(saved)
    assert restored.get_last_lr() == pytest.approx(scheduler.get_last_lr())


def test_apply_schedule_follows_new_settings_after_a_resume():
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([parameter], lr=1.0)
    short = build_scheduler(optimizer, "cosine", 0, 4)
    for _ in range(2):
        optimizer.step()
        short.step()
    longer = build_scheduler(torch.optim.AdamW([parameter], lr=1.0), "cosine", 0, 8)
    longer.optimizer.load_state_dict(optimizer.state_dict())  # the rate the short run left: cos at 2/4
    longer.load_state_dict(short.state_dict())
    apply_schedule(longer)
    assert longer.optimizer.param_groups[0]["lr"] == pytest.approx(lr_lambda(2, "cosine", 0, 8, None))


def test_ema_averages_batch_norm_statistics_and_warms_up():
    """A from-scratch model trains its batch norms: the average must follow their running statistics, and its
    decay must start at 0 so the random initial weights do not weigh on a short run."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = build_ema(model, decay=0.999)
    initial = {name: value.clone() for name, value in model.state_dict().items()}
    expected = None  # the weight's average, by hand
    for step in range(1, 4):
        model(torch.randn(16, 3) * 5 + 2)  # training mode: the running statistics move
        with torch.no_grad():
            model[0].weight.add_(1.0)
        ema.update(model, step=step)
        decay = ema.get_decay(step)
        expected = model[0].weight.detach().clone() if expected is None else \
            decay * expected + (1 - decay) * model[0].weight.detach()
        if step == 1:  # the first update copies the model, buffers included
            for name, value in model.state_dict().items():
                torch.testing.assert_close(ema.module.state_dict()[name], value, msg=name)
    averaged = ema.module.state_dict()
    assert 0 < ema.get_decay(2) < ema.get_decay(100) < ema.get_decay(10_000) <= 0.999
    torch.testing.assert_close(averaged["0.weight"], expected)
    # Between the initial and current values, away from both: an average, not a copy, of weights and statistics.
    for name in ("0.weight", "1.running_mean", "1.running_var"):
        assert not torch.allclose(averaged[name], initial[name]), name
        assert not torch.allclose(averaged[name], model.state_dict()[name]), name
