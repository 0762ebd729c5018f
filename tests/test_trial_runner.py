from __future__ import annotations

import math

import pytest

from lrsearch.training.data import TrainData
from lrsearch.training.runner import train_trial
from lrsearch.training.tasks import digits_mlp, quadratic
from lrsearch.training.trial import TrialSettings


@pytest.fixture(scope="module")
def digits():
    task = digits_mlp()
    return task, TrainData.from_task(task, "cpu")


ADAM = {"optimizer": "adam", "params": {"lr": 3e-3}, "schedule": {"name": "constant"}}


def test_training_lowers_the_loss_on_digits(digits) -> None:
    task, data = digits
    outcome = train_trial(task, data, ADAM, TrialSettings(epochs=3, batch_size=64, seed=0))
    losses = [e.metrics["val_loss"] for e in outcome.history]
    assert outcome.stopped is None and len(losses) == 3
    assert losses[-1] < losses[0] < math.log(10)
    assert outcome.history[-1].metrics["val_accuracy"] > 0.9
    assert outcome.implementation == "fused"


def test_same_config_and_seed_give_bit_identical_metrics(digits) -> None:
    task, data = digits
    runs = [train_trial(task, data, ADAM, TrialSettings(epochs=2, batch_size=32, seed=7)) for _ in range(2)]
    assert [e.metrics for e in runs[0].history] == [e.metrics for e in runs[1].history]
    other = train_trial(task, data, ADAM, TrialSettings(epochs=2, batch_size=32, seed=8))
    assert other.history[-1].metrics != runs[0].history[-1].metrics


def test_a_huge_lr_diverges_and_stops_at_once(digits) -> None:
    task, data = digits
    config = {"optimizer": "sgd", "params": {"lr": 1e4}, "schedule": {"name": "constant"}}
    outcome = train_trial(task, data, config, TrialSettings(epochs=5, batch_size=64, seed=0))
    assert outcome.diverged and outcome.stopped_epoch == 0 and outcome.history == []


def test_on_epoch_true_stops_the_trial_as_pruned(digits) -> None:
    task, data = digits
    seen = []
    outcome = train_trial(task, data, ADAM, TrialSettings(epochs=5, batch_size=64, seed=0),
                          on_epoch=lambda e: seen.append(e.epoch) or e.epoch == 1)
    assert outcome.stopped == "pruned" and seen == [0, 1] and len(outcome.history) == 2


def test_epoch_metrics_carry_lr_and_speed(digits) -> None:
    task, data = digits
    config = {"optimizer": "momentum", "params": {"lr": 0.1, "momentum": 0.9}, "schedule": {"name": "cosine"}}
    outcome = train_trial(task, data, config, TrialSettings(epochs=2, batch_size=64, seed=0))
    first, last = outcome.history
    assert first.lr < 0.1 and last.lr == pytest.approx(0.0, abs=1e-12)
    assert first.samples_per_second > 0 and first.epoch_seconds > 0


def test_quadratic_reports_its_optimal_step_size() -> None:
    task = quadratic()
    info = task.info
    assert 0 < info["optimal_lr"] <= info["max_stable_lr"] * 1.01
    assert info["optimal_lr"] == pytest.approx(2 / (info["lambda_max"] + info["lambda_min"]))
    data = TrainData.from_task(task, "cpu")
    good = {"optimizer": "sgd", "params": {"lr": info["optimal_lr"] / 2}, "schedule": {"name": "constant"}}
    outcome = train_trial(task, data, good, TrialSettings(epochs=3, batch_size=128, seed=0))
    assert outcome.history[-1].metrics["val_loss"] < outcome.history[0].metrics["val_loss"]
    too_big = {"optimizer": "sgd", "params": {"lr": info["max_stable_lr"] * 3}, "schedule": {"name": "constant"}}
    assert train_trial(task, data, too_big, TrialSettings(epochs=3, batch_size=128, seed=0)).diverged


def test_the_objective_is_the_last_or_the_best_epoch_and_says_which() -> None:
    from lrsearch.training.trial import EpochMetrics, TrialOutcome

    outcome = TrialOutcome("fused", [EpochMetrics(e, {"val_loss": v, "val_accuracy": a}, 0.1, 1.0, 1.0)
                                     for e, (v, a) in enumerate([(0.9, 0.5), (0.4, 0.8), (0.4, 0.8), (0.6, 0.7)])])
    assert outcome.objective("val_loss", "minimize") == (0.6, 3)
    assert outcome.objective("val_loss", "minimize", "best") == (0.4, 1)  # the earliest of equal bests
    assert outcome.objective("val_accuracy", "maximize", "best") == (0.8, 1)
    assert outcome.objective("val_accuracy", "minimize", "best") == (0.5, 0)
