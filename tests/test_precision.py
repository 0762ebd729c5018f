"""Mixed precision on the CPU: a bf16 study trains, is recorded and exports its precision; fp16's skipped overflow
steps are not divergence, and a real blow-up still is."""

from __future__ import annotations

import json
import math

import optuna
import pytest
from click.testing import CliRunner
from conftest import tiny_study, write_study
from mlflow import MlflowClient

import lrsearch.training.precision
from lrsearch.cli import cli
from lrsearch.config.spec import spec_from_dict
from lrsearch.errors import SpecError
from lrsearch.training.data import TrainData
from lrsearch.training.runner import train_trial
from lrsearch.training.tasks import digits_mlp
from lrsearch.training.trial import TrialSettings

State = optuna.trial.TrialState
ADAM = {"optimizer": "adam", "params": {"lr": 3e-3}, "schedule": {"name": "constant"}}


@pytest.fixture(scope="module")
def digits() -> tuple:
    task = digits_mlp()
    return task, TrainData.from_task(task, "cpu")


@pytest.mark.slow
def test_a_bf16_study_trains_is_tracked_and_exports_its_precision(tmp_path, mlflow_uri) -> None:
    study_file = write_study(tmp_path, tiny_study(train={"precision": "bf16"}, budget={"n_trials": 2, "epochs": 2},
                                                  search={"optimizers": ["adam"],
                                                          "adam": {"lr": {"low": 1e-3, "high": 3e-3}}}))
    storage, uri = f"sqlite:///{tmp_path / 'lrsearch.db'}", mlflow_uri
    result = CliRunner().invoke(cli, ["tune", str(study_file), "--storage", storage, "--tracking-uri", uri,
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=storage)
    client = MlflowClient(uri)
    for trial in study.trials:
        assert trial.state == State.COMPLETE and trial.user_attrs["training"]["precision"] == "bf16"
        assert trial.intermediate_values[1] < trial.intermediate_values[0] < math.log(10)
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.params["precision"] == "bf16"
        assert run.data.metrics["peak_memory_mb"] == trial.user_attrs["peak_memory_mb"] >= 0

    exported = CliRunner().invoke(cli, ["export", "tiny", "--storage", storage])
    assert json.loads(exported.stdout)["precision"] == "bf16"
    snippet = CliRunner().invoke(cli, ["export", "tiny", "--storage", storage, "--format", "python"]).stdout
    assert "#     with torch.autocast('cpu', dtype=torch.bfloat16):" in snippet
    namespace: dict = {}
    exec(compile(snippet, "snippet", "exec"), namespace)  # still plain, runnable torch
    assert type(namespace["optimizer"]).__name__ == "Adam"


def test_bf16_really_trains_under_autocast(digits) -> None:
    task, data = digits
    fp32, bf16 = (train_trial(task, data, ADAM, TrialSettings(2, 64, 0, precision=p)) for p in ("fp32", "bf16"))
    close, exact = bf16.final["val_loss"], fp32.final["val_loss"]
    assert close != exact and close == pytest.approx(exact, rel=0.05)  # bf16's rounding, on the same trajectory
    assert bf16.final["val_accuracy"] > 0.9 and bf16.skipped_steps == 0


def test_fp16_overflow_steps_are_skipped_not_divergence(digits, monkeypatch: pytest.MonkeyPatch) -> None:
    task, data = digits
    # A loss scale of 2^40 overflows fp16's gradients until the scaler has halved it about 25 times.
    monkeypatch.setattr(lrsearch.training.precision, "FP16_INITIAL_SCALE", 2.0**40)
    outcome = train_trial(task, data, ADAM, TrialSettings(2, 64, 0, precision="fp16"))
    assert outcome.stopped is None and not outcome.diverged and len(outcome.history) == 2
    assert 15 <= outcome.skipped_steps <= 40
    assert outcome.final["val_accuracy"] > 0.85
    blow_up = {"optimizer": "sgd", "params": {"lr": 1e4}, "schedule": {"name": "constant"}}
    assert train_trial(task, data, blow_up, TrialSettings(2, 64, 0, precision="fp16")).diverged


def test_precision_is_validated_with_the_study() -> None:
    with pytest.raises(SpecError, match=r"train.precision: 'fp8' is not allowed \(allowed: 'fp32', 'bf16' or"):
        spec_from_dict(tiny_study(train={"precision": "fp8"}))
    with pytest.raises(SpecError, match="batch_trials 4 trains its stacked trials in fp32"):
        spec_from_dict(tiny_study(train={"precision": "bf16", "batch_trials": 4}))
