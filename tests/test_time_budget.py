"""detr_lite/training/time_budget.py: the number of steps fitted to a wall-clock training budget."""

import json

import pytest

from detr_lite.training.time_budget import TimeBudget


def test_the_fit_divides_the_budget_by_the_measured_step_time():
    budget = TimeBudget(seconds=600)
    assert budget.fit(step=25, elapsed=10.0) == 1500  # 0.4 s a step
    assert budget.fit(step=100, elapsed=50.0) == 1200  # slower steps: fewer of them
    assert budget.fit(step=1000, elapsed=700.0) == 1001  # over budget already: stop after the next step


def test_fits_happen_at_the_first_fit_then_every_tenth_until_half_way():
    budget = TimeBudget(seconds=600, first_fit=25)
    steps = [step for step in range(1, 1001) if budget.wants_fit(step, total_steps=1000)]
    assert steps == [25, 100, 200, 300, 400, 500]


@pytest.mark.parametrize("minutes", [0, -1])
def test_a_budget_must_be_positive(minutes):
    with pytest.raises(ValueError, match="max_train_time"):
        TimeBudget(seconds=minutes * 60)


def test_a_run_with_a_time_budget_stops_at_the_fitted_length(tmp_path):
    from test_run_detection import TINY_PRESET

    from detr_lite import DeTRLiteConfig
    from detr_lite.data.synthetic import make_synthetic_dataset
    from detr_lite.training import TrainingArguments, train

    data_dir = make_synthetic_dataset(tmp_path / "data", num_train=4, num_val=2, seed=3)
    recipe = {**TINY_PRESET["training"], "max_train_steps": 1000, "eval_every": "epoch", "checkpointing_steps": 10}
    args = TrainingArguments(data_dir=str(data_dir), output_dir=str(tmp_path / "out"), max_train_time=0.05,
                             **recipe)
    train(args, DeTRLiteConfig(**TINY_PRESET["model"]))
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    last = sorted((tmp_path / "out" / "checkpoints").iterdir(), key=lambda p: int(p.name.split("_")[1]))[-1]
    planned = json.loads((last / "trainer_state.json").read_text())["planned_steps"]
    assert 25 < planned < 1000  # fitted to 3 seconds, not the 1,000 steps asked for
    assert results["train_steps"] == planned
