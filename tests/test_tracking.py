"""MLflow tracking against a real SQLite tracking store in tmp_path."""

from __future__ import annotations

import json
import textwrap

import optuna
import pytest
from click.testing import CliRunner
from conftest import tiny_study, write_study
from mlflow import MlflowClient

from lrsearch.cli import cli
from lrsearch.tracking.tracker import PARENT_ATTR, RUN_ATTR

STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}

FLAKY_TASK = textwrap.dedent('''
    from lrsearch.training.tasks import digits_mlp

    def make():
        task = digits_mlp()
        calls = {"n": 0}
        loss = task.loss

        def flaky(output, target):
            calls["n"] += 1
            if calls["n"] == 60:  # one trial fails mid-way; the study goes on
                raise RuntimeError("the data loader fell over")
            return loss(output, target)

        task.loss = flaky
        return task
''')


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One study of 6 trials: complete, pruned (diverged) and a failed one, recorded in MLflow."""
    directory = tmp_path_factory.mktemp("tracked")
    (directory / "flaky_task.py").write_text(FLAKY_TASK)
    spec = tiny_study(task={"entrypoint": "flaky_task:make"}, budget={"n_trials": 5, "epochs": 2},
                      search={"optimizers": ["sgd", "adam"], "sgd": {"lr": {"low": 1e-3, "high": 1e4}}},
                      sampler={"name": "random", "seed": 3})
    path = write_study(directory, spec)
    storage = f"sqlite:///{directory / 'lrsearch.db'}"
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    result = CliRunner().invoke(cli, ["tune", str(path), "--storage", storage, "--tracking-uri", uri,
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=storage)
    return study, MlflowClient(uri), storage, uri


def test_one_parent_run_and_one_child_per_trial_with_matching_status(tracked) -> None:
    study, client, _, _ = tracked
    states = {t.state.name for t in study.trials}
    assert {"COMPLETE", "FAIL"} <= states and len(study.trials) == 6  # 5 complete+pruned, 1 failed
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_id == study.user_attrs[PARENT_ATTR]
    assert parents[0].data.tags["optuna.study_name"] == "tiny"
    assert len(children) == len(study.trials)
    by_name = {r.info.run_name: r for r in children}
    for trial in study.trials:
        run = by_name[f"trial-{trial.number}"]
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.status == STATUS[trial.state.name], trial.number
        assert run.data.tags["state"] == trial.state.name
        assert run.data.tags["optimizer"] == trial.user_attrs["config"]["optimizer"]
        if trial.state.name != "FAIL":
            assert trial.user_attrs[RUN_ATTR] == run.info.run_id
            assert run.data.tags["diverged"] == str(trial.user_attrs["diverged"]).lower()
            assert run.data.tags["optimizer_impl"] == "fused"
        if trial.state.name == "PRUNED":
            assert run.data.tags["pruned"] == "true"
        if trial.state.name == "FAIL":
            assert "the data loader fell over" in run.data.tags["fail_reason"]
        assert float(run.data.params["lr"]) == trial.user_attrs["config"]["params"]["lr"]
        assert run.data.params["batch_size"] == "64" and run.data.params["seed"] == "0"


def test_per_epoch_metrics_are_logged_with_epoch_steps(tracked) -> None:
    study, client, _, _ = tracked
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    trial = complete[0]
    run_id = trial.user_attrs[RUN_ATTR]
    for name in ("train_loss", "val_loss", "val_accuracy", "lr", "epoch_seconds", "samples_per_second"):
        history = client.get_metric_history(run_id, name)
        assert [m.step for m in history] == [0, 1], name
    val = client.get_metric_history(run_id, "val_loss")
    assert [m.value for m in val] == pytest.approx([trial.intermediate_values[0], trial.intermediate_values[1]])


def test_parent_holds_best_value_config_and_plots(tracked) -> None:
    study, client, _, _ = tracked
    parent = client.get_run(study.user_attrs[PARENT_ATTR])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert parent.data.tags["best.trial"] == str(study.best_trial.number)
    assert parent.data.params["sampler"] == "random" and parent.data.params["pruner"] == "none"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_optimizer.json", "best_optimizer.yaml", "study.json", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/objective_vs_lr.png"} <= plots
    local = client.download_artifacts(parent.info.run_id, "best_optimizer.json")
    with open(local) as handle:
        best = json.load(handle)
    assert best["source"]["trial"] == study.best_trial.number
    assert best["source"]["mlflow_run_id"] == study.best_trial.user_attrs[RUN_ATTR]


def test_a_second_tune_reuses_the_parent_run(tracked, tmp_path) -> None:
    study, client, storage, uri = tracked
    spec = {**study.user_attrs["spec"], "budget": {"n_trials": 6, "epochs": 2, "timeout": None}}
    spec["task"] = "digits-mlp"
    path = write_study(tmp_path, spec)
    result = CliRunner().invoke(cli, ["tune", str(path), "--storage", storage, "--tracking-uri", uri,
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert len([r for r in runs if "mlflow.parentRunId" not in r.data.tags]) == 1
    assert all(r.info.status != "RUNNING" for r in runs)


def test_no_mlflow_records_nothing(tmp_path, storage) -> None:
    path = write_study(tmp_path, tiny_study(budget={"n_trials": 1, "epochs": 1}))
    result = CliRunner().invoke(cli, ["tune", str(path), "--storage", storage, "--no-mlflow", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
