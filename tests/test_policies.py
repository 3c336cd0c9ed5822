"""detr_lite/training/policies.py and state.py: the loop's decisions, called directly."""

import signal

import pytest

from detr_lite.training import TrainingError, TrainingState
from detr_lite.training.policies import StopSignal, diverged_message, is_due, is_new_best, nonfinite_streak


def test_nonfinite_streak_counts_resets_and_stops_at_the_limit(tmp_path):
    assert nonfinite_streak(0, step_skipped=True, limit=3, step=1, output_dir=tmp_path) == 1
    assert nonfinite_streak(1, step_skipped=True, limit=3, step=2, output_dir=tmp_path) == 2
    assert nonfinite_streak(2, step_skipped=False, limit=3, step=3, output_dir=tmp_path) == 0
    with pytest.raises(TrainingError, match=r"3 steps in a row \(steps 5-7\)") as raised:
        nonfinite_streak(2, step_skipped=True, limit=3, step=7, output_dir=tmp_path)
    assert raised.value.exit_code == 1 and "No checkpoint was written" in str(raised.value)


def test_diverged_message_names_the_checkpoint_kept(tmp_path):
    kept = tmp_path / "checkpoints" / "step_4"
    kept.mkdir(parents=True)
    (kept / "trainer_state.json").write_text("{}")
    assert str(kept) in diverged_message(2, 6, tmp_path)


def test_actions_are_due_on_their_interval_and_never_after_a_nonfinite_step():
    assert is_due(4, 2, streak=0) and not is_due(3, 2, streak=0)
    assert not is_due(4, 2, streak=1)  # weights that gave NaN are neither evaluated nor checkpointed
    assert not is_due(4, None, streak=0)  # None: at the end of the epoch instead


def test_the_best_model_is_the_one_with_the_highest_ap():
    assert is_new_best(0.0, -1.0)  # the first evaluation is always kept
    assert is_new_best(0.31, 0.3) and not is_new_best(0.3, 0.3) and not is_new_best(0.2, 0.3)


def test_stop_signal_records_the_first_signal_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignal() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop.record
        stop.record(signal.SIGTERM)
        stop.record(signal.SIGINT)  # ignored: already stopping
        assert stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


def test_training_state_round_trips_through_the_checkpoint_dict():
    state = TrainingState(step=7, epoch=1, batch_in_epoch=3, best_AP=0.25, learning_curve=[{"step": 4, "AP": 0.2}])
    assert TrainingState.from_dict(state.to_dict()) == state
    assert state.to_dict()["batch_in_epoch"] == 3  # trainer_state.json keeps its keys
    with pytest.raises(ValueError, match="stepp"):
        TrainingState.from_dict({**state.to_dict(), "stepp": 1})
