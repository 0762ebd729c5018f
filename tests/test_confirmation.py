"""Winners that survive a new seed: the study's last trials train its best configurations again on new seeds, and
the study returns the best mean."""

from __future__ import annotations

import json
import math

import optuna
from click.testing import CliRunner
from conftest import tiny_study, write_study
from mlflow import MlflowClient

from lrsearch.cli import cli
from lrsearch.config.spec import spec_from_dict
from lrsearch.study.results import study_answer
from lrsearch.study.storage import load_study
from lrsearch.training.prepared import prepare
from lrsearch.training.runner import train_trial
from lrsearch.training.trial import TrialSettings

State = optuna.trial.TrialState
DEFAULT = {"sampler": {"name": "prior", "seed": 0}, "pruner": {"name": "halving"}}


def _config(lr: float) -> dict:
    return {"optimizer": "sgd", "params": {"lr": lr, "weight_decay": 0.0}, "schedule": {"name": "constant"}}


def _trial(value: float, lr: float, **attrs) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(value=value, user_attrs={"config": _config(lr), **attrs})


def test_the_answer_is_the_best_mean_of_the_confirmed_configurations() -> None:
    study = optuna.create_study()
    study.set_user_attr("spec", {"train": {"seed": 0}})
    study.add_trial(_trial(0.10, 0.1))  # the luckiest single run ...
    study.add_trial(_trial(0.15, 0.2))
    study.add_trial(_trial(0.30, 0.1, confirms=0, seed=1000))  # ... which a new seed does not bear out
    study.add_trial(_trial(0.16, 0.2, confirms=1, seed=1000))
    answer = study_answer(study)
    assert answer.trial.number == 1 and answer.values == [0.15, 0.16] and answer.seeds == [0, 1000]
    assert math.isclose(answer.value, 0.155) and math.isclose(answer.spread, math.sqrt(0.00005))
    assert answer.trials == [1, 3]

    unconfirmed = optuna.create_study()
    unconfirmed.add_trial(_trial(0.10, 0.1))
    unconfirmed.add_trial(_trial(0.15, 0.2))
    assert study_answer(unconfirmed).trial.number == 0 and study_answer(unconfirmed).spread is None


def test_a_default_study_confirms_its_best_on_new_seeds_within_its_budget(tmp_path) -> None:
    # Off unless asked for (the search bench: it did not pay inside the budget); auto confirms 2 on 1 seed from 20.
    assert spec_from_dict(tiny_study(budget={"n_trials": 40}, **DEFAULT)).confirmation is None
    auto = {"search": {"confirm": "auto"}}
    assert spec_from_dict(tiny_study(budget={"n_trials": 20}, **auto, **DEFAULT)).confirmation.model_dump() == \
        {"configs": 2, "seeds": 1}
    assert spec_from_dict(tiny_study(budget={"n_trials": 19}, **auto, **DEFAULT)).confirmation is None
    confirm = {"confirm": {"configs": 2, "seeds": 1}}
    path = write_study(tmp_path, tiny_study(budget={"n_trials": 10, "epochs": 2}, search=confirm, **DEFAULT))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(cli, ["tune", str(path), "--no-progress", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    study = load_study("tiny", "lrsearch.journal")
    trials = study.trials
    assert len(trials) == 10 and all(t.state in (State.COMPLETE, State.PRUNED) for t in trials)
    confirming = trials[-2:]  # the budget's last trials: the best two configurations, each on seed 0 + 1000
    searched = [t for t in trials[:-2] if t.state == State.COMPLETE]
    best_two = sorted(searched, key=lambda t: t.value)[:2]
    assert sorted(t.user_attrs["confirms"] for t in confirming) == sorted(t.number for t in best_two)
    for trial in confirming:
        assert trial.state == State.COMPLETE and trial.user_attrs["seed"] == 1000  # never pruned
        assert trial.user_attrs["training"]["seed"] == 1000
        assert trial.user_attrs["config"] == trials[trial.user_attrs["confirms"]].user_attrs["config"]

    # The confirmation trained exactly what a retrain of the configuration on that seed gives.
    spec = spec_from_dict(tiny_study(budget={"n_trials": 10, "epochs": 2}, search=confirm, **DEFAULT))
    prepared = prepare(spec)
    retrained = train_trial(prepared.task, prepared.data, confirming[0].user_attrs["config"],
                            TrialSettings(2, 64, 1000))
    assert math.isclose(retrained.final["val_loss"], confirming[0].value, rel_tol=1e-6)

    answer = study_answer(study)
    assert answer.trial.number in {t.user_attrs["confirms"] for t in confirming} and len(answer.values) == 2
    exported = json.loads(CliRunner().invoke(cli, ["export", "tiny"]).output)
    assert exported["source"]["trial"] == answer.trial.number
    assert math.isclose(exported["objective"]["value"], answer.value)
    assert [s["seed"] for s in exported["objective"]["seeds"]] == [0, 1000]
    assert "answer: " in result.output and f"± {answer.spread:.2g}" in result.output
    assert "lrsearch export tiny -o best.json" in result.output and '"kwargs"' not in result.output

    shown = CliRunner(env={"COLUMNS": "250"}).invoke(cli, ["show", "tiny"]).output
    assert f"confirms trial {confirming[0].user_attrs['confirms']} (seed 1000)" in shown
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                              "tags.`lrsearch.confirms` != ''")
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs) == [t.number for t in confirming]
    assert all(r.data.params["seed"] == "1000" for r in runs)


def test_confirm_none_confirms_nothing(tmp_path) -> None:
    path = write_study(tmp_path, tiny_study(budget={"n_trials": 10, "epochs": 1}, search={"confirm": "none"},
                                            **DEFAULT))
    assert CliRunner().invoke(cli, ["tune", str(path), "--no-progress", "--no-mlflow"]).exit_code == 0
    study = load_study("tiny", "lrsearch.journal")
    assert not any("confirms" in t.user_attrs for t in study.trials)
    assert {t.user_attrs["training"]["seed"] for t in study.trials} == {0}
