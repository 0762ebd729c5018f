from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import tiny_study

import lrsearch
from lrsearch.cli import cli
from lrsearch.study.storage import mask_password
from lrsearch.study.tune import tune
from lrsearch.training.data import TrainData
from lrsearch.training.runner import train_trial
from lrsearch.training.tasks import digits_mlp
from lrsearch.training.trial import TrialSettings

KEYS = {"optimizer", "torch_class", "kwargs", "schedule", "training", "objective", "source"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('export') / 'lrsearch.db'}"
    spec = tiny_study(budget={"n_trials": 4, "epochs": 2}, search={"optimizers": ["adamw", "nesterov"],
                                                                    "schedules": ["warmup_cosine", "cosine"]})
    return tune(spec, storage=url), url


def export(url: str, *args: str) -> str:
    result = CliRunner().invoke(cli, ["export", "tiny", "--storage", url, *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_json_and_yaml_have_the_documented_shape(study) -> None:
    s, url = study
    as_json = json.loads(export(url))
    as_yaml = yaml.safe_load(export(url, "--format", "yaml"))
    assert as_json == as_yaml
    assert KEYS <= set(as_json)
    best = s.best_trial
    assert as_json["source"]["trial"] == best.number and as_json["objective"]["value"] == best.value
    assert {k: v for k, v in as_json["training"].items() if k != "threads"} == {
        "batch_size": 64, "epochs": 2, "world_size": 1, "seed": 0, "device": "cpu", "precision": "fp32",
        "data": "tensors", "steps_per_epoch": 23}  # 1437 training digits in batches of 64
    assert as_json["precision"] == "fp32"
    kwargs = as_json["kwargs"]
    params = best.user_attrs["config"]["params"]
    if as_json["optimizer"] == "adamw":
        assert as_json["torch_class"] == "torch.optim.AdamW"
        assert kwargs["betas"] == [params["beta1"], params["beta2"]] and "beta1" not in kwargs
    else:
        assert as_json["torch_class"] == "torch.optim.SGD" and kwargs["nesterov"] is True


def test_round_trip_reproduces_the_recorded_val_loss(study, tmp_path) -> None:
    s, url = study
    path = tmp_path / "best.json"
    export(url, "-o", str(path))
    config = json.loads(path.read_text())
    task = digits_mlp()
    training = config["training"]
    outcome = train_trial(task, TrainData.from_task(task, "cpu"), config,
                          TrialSettings(training["epochs"], training["batch_size"], training["seed"]))
    recorded = s.best_trial.user_attrs["val_loss"]
    assert abs(outcome.final["val_loss"] - recorded) <= 1e-6 * abs(recorded)


def test_build_optimizer_and_scheduler_from_the_exported_file(study, tmp_path) -> None:
    _, url = study
    for fmt in ("json", "yaml"):
        path = tmp_path / f"best.{fmt}"
        export(url, "--format", fmt, "-o", str(path))
        config = json.loads(path.read_text()) if fmt == "json" else yaml.safe_load(path.read_text())
        model = torch.nn.Linear(3, 2)
        optimizer = lrsearch.build_optimizer(path, model.parameters())
        assert f"torch.optim.{type(optimizer).__name__}" == config["torch_class"]
        for key, value in config["kwargs"].items():
            expected = tuple(value) if key == "betas" else value
            assert optimizer.defaults[key] == expected
        scheduler = lrsearch.build_scheduler(path, optimizer, steps_per_epoch=10)
        assert scheduler is not None  # every schedule in this study decays


def test_python_snippet_runs_and_builds_the_same_optimizer(study) -> None:
    _, url = study
    snippet = export(url, "--format", "python")
    config = json.loads(export(url))
    namespace: dict = {}
    exec(compile(snippet, "snippet", "exec"), namespace)
    optimizer = namespace["optimizer"]
    assert f"torch.optim.{type(optimizer).__name__}" == config["torch_class"]
    assert optimizer.defaults["lr"] == config["kwargs"]["lr"]
    assert len(namespace["schedulers"]) == 1 and namespace["steps_per_epoch"] == 23


def test_export_a_chosen_trial_and_bad_requests(study) -> None:
    _, url = study
    assert json.loads(export(url, "--trial", "0"))["source"]["trial"] == 0
    result = CliRunner().invoke(cli, ["export", "tiny", "--storage", url, "--trial", "99"])
    assert result.exit_code == 2 and "--trial 99" in result.stderr
    result = CliRunner().invoke(cli, ["export", "tiny", "--storage", url, "--format", "toml"])
    assert result.exit_code == 2 and "allowed: json, yaml, python" in result.stderr


def test_passwords_are_masked() -> None:
    assert mask_password("postgresql+psycopg://alice:s3cret@db:5432/optuna") == \
        "postgresql+psycopg://alice:***@db:5432/optuna"
    assert mask_password("sqlite:///lrsearch.db") == "sqlite:///lrsearch.db"
    assert mask_password("http://bob:pw@mlflow:5000") == "http://bob:***@mlflow:5000"
