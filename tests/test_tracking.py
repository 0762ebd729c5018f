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


def _children(pid: int, marker: str) -> list[int]:
    """The processes whose parent is ``pid`` and whose command line holds ``marker``."""
    import os

    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if parent == pid and marker in command:
            found.append(int(entry))
    return found


@pytest.mark.slow
def test_a_killed_tracking_process_costs_no_trial_and_one_sync_brings_mlflow_level(tmp_path, mlflow_uri) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    path = write_study(tmp_path, tiny_study(budget={"n_trials": 6, "epochs": 4}, train={"batch_size": 16}))
    storage, uri = str(tmp_path / "lrsearch.journal"), mlflow_uri
    tune = subprocess.Popen([sys.executable, "-m", "lrsearch", "tune", str(path), "--storage", storage,
                             "--tracking-uri", uri, "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    killed_in = None
    deadline = time.monotonic() + 300
    while killed_in is None and tune.poll() is None and time.monotonic() < deadline:
        # The event: a trial after the first ones is training (an epoch reported, more to come).
        study = optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(storage))) if os.path.exists(storage) else None
        running = [t for t in (study.get_trials(deepcopy=False) if study else [])
                   if t.number >= 2 and t.state == optuna.trial.TrialState.RUNNING and 1 <= len(t.intermediate_values)
                   < 4]
        if running:
            for pid in _children(tune.pid, "lrsearch.tracking.process"):
                os.kill(pid, signal.SIGKILL)
                killed_in = running[0].number
        time.sleep(0.05)
    out, err = tune.communicate(timeout=600)
    assert killed_in is not None, "no trial was seen training"
    assert tune.returncode == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: MLflow tracking stopped: the tracking process"), err
    assert "`lrsearch sync tiny`" in lines[0] and "top trials of tiny" in out
    study = optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(storage)))
    states = [t.state.name for t in study.trials]
    assert len(states) == 6 and set(states) <= {"COMPLETE", "PRUNED"}  # none failed, none trained again

    result = CliRunner().invoke(cli, ["sync", "tiny", "--storage", storage, "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    children = {int(r.data.tags["optuna.trial_number"]): r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert sorted(children) == list(range(6))
    for trial in study.trials:
        run = children[trial.number]
        assert run.info.status == STATUS[trial.state.name]
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert sorted((m.step, m.value) for m in history) == sorted(trial.intermediate_values.items())


def test_an_unwritable_tracking_store_is_one_warning_and_the_study_trains(tmp_path) -> None:
    path = write_study(tmp_path, tiny_study(budget={"n_trials": 2, "epochs": 1}))
    (tmp_path / "a-file").write_text("not a directory")  # a place no one can write to, root included
    uri = f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"
    result = CliRunner().invoke(cli, ["tune", str(path), "--tracking-uri", uri, "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: MLflow tracking stopped: cannot record to MLflow at "), \
        result.stderr
    study = optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "lrsearch.journal"))))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
