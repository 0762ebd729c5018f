from __future__ import annotations

import math
import os

import optuna
import pytest
from conftest import tiny_study

from lrsearch.errors import SpecError, StorageError
from lrsearch.study.tune import tune

State = optuna.trial.TrialState


def test_a_study_runs_its_budget_and_records_every_trial(storage: str) -> None:
    study = tune(tiny_study(train={"threads": None}), storage=storage)  # a study file's default: threads timed
    assert len(study.trials) == 3
    for trial in study.trials:
        assert trial.state == State.COMPLETE
        attrs = trial.user_attrs
        assert attrs["config"]["optimizer"] in ("adam", "momentum")
        assert attrs["optimizer_impl"] == "fused"
        assert attrs["diverged"] is False
        assert trial.value == attrs["val_loss"]
        assert 0 < attrs["val_accuracy"] <= 1 and attrs["train_loss"] > 0
        assert sorted(trial.intermediate_values) == [0, 1]
        training = attrs["training"]
        assert training.pop("threads") in (1, os.cpu_count())  # whichever trained this model faster here
        # digits' 1,437 training samples in batches of 64: 23 optimizer steps an epoch (what the schedules span)
        assert training == {"batch_size": 64, "epochs": 2, "world_size": 1, "seed": 0, "device": "cpu",
                            "precision": "fp32", "data": "tensors", "steps_per_epoch": 23}


def test_a_huge_lr_is_pruned_as_diverged_and_the_study_goes_on(storage: str) -> None:
    spec = tiny_study(
        budget={"n_trials": 3, "epochs": 2},
        search={"optimizers": ["sgd"], "sgd": {"lr": {"low": 1e3, "high": 1e4}}},
        sampler={"name": "random", "seed": 0},
    )
    study = tune(spec, storage=storage)
    assert [t.state for t in study.trials] == [State.PRUNED] * 3
    for trial in study.trials:
        assert trial.user_attrs["diverged"] is True
        assert trial.value == math.inf  # the sampler sees the worst value, not a flattering earlier epoch
    with pytest.raises(ValueError):
        _ = study.best_trial  # a diverged trial can never be best


def test_resume_runs_only_the_remainder(storage: str) -> None:
    study = tune(tiny_study(), storage=storage, n_trials=2)
    first = [(t.number, t.value) for t in study.trials]
    study = tune(tiny_study(), storage=storage, n_trials=5)
    assert len(study.trials) == 5
    assert [(t.number, t.value) for t in study.trials[:2]] == first
    study = tune(tiny_study(), storage=storage, n_trials=5)
    assert len(study.trials) == 5  # finished: nothing more runs


def test_pruner_stops_bad_trials_early(storage: str) -> None:
    spec = tiny_study(budget={"n_trials": 12, "epochs": 6}, pruner={"name": "median"},
                      search={"optimizers": ["sgd"], "sgd": {"lr": {"low": 1e-5, "high": 1.0}}},
                      sampler={"name": "random", "seed": 1})
    study = tune(spec, storage=storage)
    pruned = [t for t in study.trials if t.state == State.PRUNED and not t.user_attrs["diverged"]]
    assert pruned, [t.state for t in study.trials]
    assert all(len(t.intermediate_values) < 6 for t in pruned)


@pytest.mark.parametrize("sampler", ["gp", "cmaes", "nsga2", "qmc", "random", "grid"])
def test_every_sampler_runs_the_conditional_space(storage: str, sampler: str) -> None:
    spec = tiny_study(sampler={"name": sampler, "seed": 0}, budget={"n_trials": 2, "epochs": 1})
    study = tune(spec, storage=storage)
    assert sum(t.state == State.COMPLETE for t in study.trials) == 2


def test_grid_sampler_walks_log_spaced_lrs(storage: str) -> None:
    spec = tiny_study(sampler={"name": "grid", "seed": 0}, budget={"n_trials": 4, "epochs": 1},
                      search={"optimizers": ["adam"], "grid_points": 4, "adam": {"lr": {"low": 1e-4, "high": 1e-1}}})
    study = tune(spec, storage=storage)
    lrs = sorted(t.user_attrs["config"]["params"]["lr"] for t in study.trials)
    assert lrs == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])


def test_bad_input_creates_nothing(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'never.db'}"
    with pytest.raises(SpecError):
        tune(tiny_study(objective={"metric": "val_f1"}), storage=url)
    with pytest.raises(SpecError):
        tune(tiny_study(train={"batch_size": 100000}), storage=url)
    assert not (tmp_path / "never.db").exists()
    with pytest.raises(StorageError):
        tune(tiny_study(), storage=f"sqlite:///{tmp_path}/no/such/dir/x.db")


@pytest.mark.parametrize("pruner", ["hyperband", "sha", "median"])
def test_asking_the_pruner_only_where_it_can_stop_decides_the_same(tmp_path, monkeypatch, pruner: str) -> None:
    """PruningPoints skips should_prune between rungs (and before the median's warm-up): same trials, same states,
    the same epochs run, as asking at every epoch."""
    from lrsearch.study.algorithms import PruningPoints

    spec = tiny_study(task="quadratic", budget={"n_trials": 24, "epochs": 10}, train={"batch_size": 128},
                      pruner={"name": pruner}, sampler={"name": "random", "seed": 3},
                      search={"optimizers": ["sgd"], "sgd": {"lr": {"low": 1e-4, "high": 1e-1}, "weight_decay": 0.0}})
    scheduled = tune(spec, storage=f"sqlite:///{tmp_path / 'scheduled.db'}")
    monkeypatch.setattr(PruningPoints, "due", lambda self, trial_number, step: True)
    every = tune(spec, storage=f"sqlite:///{tmp_path / 'every.db'}")

    def summary(study: optuna.Study) -> list[tuple]:
        return [(t.state, t.value, sorted(t.intermediate_values)) for t in study.trials]

    assert summary(scheduled) == summary(every)
    assert sum(t.state == State.PRUNED for t in every.trials) >= 3  # the comparison has decisions in it


def test_objective_at_best_scores_the_best_epoch_and_exports_it(storage: str) -> None:
    from lrsearch.config.spec import spec_from_dict
    from lrsearch.study.results import best_trial
    from lrsearch.tracking.export import trial_config
    from lrsearch.training.prepared import prepare
    from lrsearch.training.runner import train_trial
    from lrsearch.training.trial import TrialSettings

    spec = tiny_study(objective={"metric": "val_loss", "direction": "minimize", "at": "best"},
                      budget={"n_trials": 3, "epochs": 6}, search={"optimizers": ["momentum"]},
                      sampler={"name": "random", "seed": 1})
    study = tune(spec, storage=storage)
    prepared = prepare(spec_from_dict(spec))
    for trial in study.trials:
        assert trial.state == State.COMPLETE
        raw = [e.metrics["val_loss"] for e in train_trial(prepared.task, prepared.data, trial.user_attrs["config"],
                                                           TrialSettings(6, 64, 0)).history]
        assert trial.value == min(raw) and trial.user_attrs["objective_epoch"] == raw.index(min(raw))
        assert trial.user_attrs["val_loss"] == raw[-1]  # the last epoch's metrics stay as they were
        reported = [trial.intermediate_values[e] for e in range(6)]
        assert reported == [min(raw[: e + 1]) for e in range(6)]  # what the trial scores if it stopped there
    best = best_trial(study)
    exported = trial_config(study, best)["objective"]
    # Three trials: too few to confirm, so the answer is one run on one seed, and no spread.
    assert exported == {"metric": "val_loss", "direction": "minimize", "value": best.value, "at": "best",
                        "epoch": best.user_attrs["objective_epoch"], "spread": None,
                        "seeds": [{"seed": 0, "trial": best.number, "value": best.value}]}
    last = tune(tiny_study(name="last"), storage=storage)
    assert all(t.user_attrs["objective_epoch"] == 1 and t.value == t.user_attrs["val_loss"] for t in last.trials)
