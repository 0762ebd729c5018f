from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest
from click.testing import CliRunner
from conftest import tiny_study, write_study

from lrsearch import __version__
from lrsearch.cli import cli


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_help_is_instant_and_imports_neither_torch_nor_mlflow() -> None:
    code = ("import sys; from lrsearch.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', [m for m in ('torch', 'mlflow', 'optuna') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out and "tune" in out


def test_version() -> None:
    assert run("--version")[1].strip().endswith(__version__)


def test_validate_ok_and_problems(tmp_path) -> None:
    good = write_study(tmp_path, tiny_study())
    assert run("validate", str(good)) == (0, "ok\n", "")
    bad = write_study(tmp_path, tiny_study(budget={"n_trials": 0}, pruner={"name": "x"}), "bad.yaml")
    code, out, _ = run("validate", str(bad))
    assert code == 2
    assert out.splitlines()[0] == f"2 problems in {bad}:"
    assert "budget.n_trials" in out and "pruner.name" in out


@pytest.mark.usefixtures("mlflow_uri")  # tune records to MLflow's default store, mlflow.db here: already migrated
def test_tune_show_export_studies(tmp_path, storage) -> None:
    path = write_study(tmp_path, tiny_study())
    code, out, err = run("tune", str(path), "--storage", storage, "--no-progress", "--n-trials", "2")
    assert code == 0, err
    assert "top trials of tiny" in out
    # The end is the answer in three lines (the whole export is `lrsearch export`'s), here a study too small to
    # confirm: its best trial, one run on one seed.
    study = optuna.load_study(study_name="tiny", storage=storage)
    answer = out.strip().splitlines()[-3:]
    assert answer[0].startswith(f"answer: {study.best_trial.params['optimizer']} ")
    assert answer[0].endswith(f"(trial {study.best_trial.number})")
    assert f"val_loss {study.best_value:.4g} (one run, seed 0" in answer[1]
    assert answer[2].strip() == "export it: lrsearch export tiny -o best.json"
    assert '"torch_class"' not in out

    code, out, _ = run("show", "tiny", "--storage", storage, "--format", "json")
    shown = json.loads(out)
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert shown["study"] == "tiny" and shown["direction"] == "minimize"
    assert [t["number"] for t in shown["trials"]] == [t.number for t in study.trials]
    for entry, trial in zip(shown["trials"], study.trials, strict=True):
        assert entry["state"] == trial.state.name and entry["value"] == trial.value
        assert entry["optuna_params"] == trial.params
        assert entry["params"]["optimizer"] == trial.params["optimizer"]
        assert entry["params"]["lr"] == trial.user_attrs["config"]["params"]["lr"]
        assert entry["user_attrs"]["val_loss"] == trial.user_attrs["val_loss"]
    assert shown["best_trial"]["number"] == study.best_trial.number
    assert shown["best_trial"]["value"] == study.best_value

    code, out, _ = run("show", "tiny", "--storage", storage)
    assert code == 0 and "COMPLETE" in out

    code, out, _ = run("studies", "--storage", storage, "--format", "json")
    assert code == 0 and json.loads(out)[0]["study"] == "tiny" and json.loads(out)[0]["states"] == {"COMPLETE": 2}

    code, out, _ = run("export", "tiny", "--storage", storage)
    exported = json.loads(out)
    run_id = study.best_trial.user_attrs["mlflow_run_id"]  # the trial's MLflow child run, recorded by tune
    assert len(run_id) == 32 and int(run_id, 16) >= 0
    assert exported["source"] == {"study": "tiny", "trial": study.best_trial.number, "state": "COMPLETE",
                                  "mlflow_run_id": run_id}
    assert exported["objective"]["value"] == study.best_value

    code, out, err = run("tune", str(path), "--storage", storage, "--no-progress", "--n-trials", "2")
    assert code == 0 and "is finished" in out


def test_errors_are_one_line_with_exit_codes(tmp_path, storage) -> None:
    code, _, err = run("show", "nope", "--storage", storage)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    code, _, err = run("tune", str(tmp_path / "missing.yaml"))
    assert code == 2 and err == f"error: {tmp_path / 'missing.yaml'}: study file not found\n"
    code, _, err = run("tune")
    assert code == 2 and err.startswith("error: Missing argument")


def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path) -> None:
    missing = str(tmp_path / "missing.yaml")
    plain = subprocess.run([sys.executable, "-m", "lrsearch", "tune", missing], capture_output=True, text=True)
    debug = subprocess.run([sys.executable, "-m", "lrsearch", "--debug", "tune", missing], capture_output=True,
                           text=True)
    assert plain.returncode == debug.returncode == 2
    assert "Traceback" not in plain.stderr and plain.stderr.count("\n") == 1
    assert "Traceback (most recent call last)" in debug.stderr and "SpecError" in debug.stderr
    assert debug.stderr.splitlines()[-1] == plain.stderr.strip() == f"error: {missing}: study file not found"


BROKEN_FORWARD = """
import torch
from lrsearch.training.tasks import digits_mlp

def make():
    task = digits_mlp()
    build = task.model

    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = build()

        def forward(self, x):
            raise RuntimeError("a shape bug in the user's forward")

    task.model = Broken
    return task
"""


def test_three_failed_trials_in_a_row_stop_the_study_in_one_line(tmp_path, storage) -> None:
    (tmp_path / "broken_task.py").write_text(BROKEN_FORWARD)
    path = write_study(tmp_path, tiny_study(task={"entrypoint": "broken_task:make"}, budget={"n_trials": 5}))
    code, _, err = run("tune", str(path), "--storage", storage, "--no-mlflow", "--no-progress")
    assert code == 1 and err.count("\n") == 1, err
    assert err == ("error: 3 trials in a row failed; last, trial 2: RuntimeError: a shape bug in the user's "
                   "forward\n")
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3
    assert {t.user_attrs["fail_reason"] for t in study.trials} == {"RuntimeError: a shape bug in the user's forward"}


def test_lr_find_json_and_mlflow_run(tmp_path, mlflow_uri) -> None:
    from mlflow import MlflowClient

    path = write_study(tmp_path, tiny_study())
    uri = mlflow_uri
    code, out, err = run("lr-find", str(path), "--optimizer", "adam", "--optimizer", "sgd", "--steps", "60",
                         "--format", "json", "--tracking-uri", uri, "--plot", str(tmp_path / "lr.png"))
    assert code == 0, err
    found = json.loads(out)
    assert set(found) == {"adam", "sgd"}
    for result in found.values():
        assert {"suggested_lr", "min_loss_lr", "diverged_at", "lrs", "losses", "search_range"} <= set(result)
        assert 1e-7 <= result["suggested_lr"] <= 10 and len(result["lrs"]) == len(result["losses"]) > 10
    assert (tmp_path / "lr.png").stat().st_size > 10_000
    client = MlflowClient(uri)
    run_ = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])[0]
    assert run_.info.run_name == "lr-find" and run_.info.status == "FINISHED"
    assert float(run_.data.tags["suggested_lr.adam"]) == found["adam"]["suggested_lr"]
    assert len(client.get_metric_history(run_.info.run_id, "loss.sgd")) == len(found["sgd"]["losses"])
    assert [a.path for a in client.list_artifacts(run_.info.run_id)] == ["lr_find.png"]


def test_tune_lr_range_auto_narrows_and_records_the_intervals(tmp_path, storage, mlflow_uri) -> None:
    from mlflow import MlflowClient

    path = write_study(tmp_path, tiny_study(budget={"n_trials": 3, "epochs": 1}))
    uri = mlflow_uri
    code, _, err = run("tune", str(path), "--storage", storage, "--lr-range", "auto", "--tracking-uri", uri,
                       "--no-progress")
    assert code == 0, err
    study = optuna.load_study(study_name="tiny", storage=storage)
    ranges = study.user_attrs["lr_ranges"]
    assert set(ranges) == {"adam", "momentum"}
    for optimizer, (low, high) in ranges.items():
        suggestion = study.user_attrs["lr_suggestions"][optimizer]
        assert low <= suggestion <= high and high / low <= 100.0001
    for trial in study.trials:
        config = trial.user_attrs["config"]
        low, high = ranges[config["optimizer"]]
        assert low <= config["params"]["lr"] <= high
    parent = MlflowClient(uri).get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.data.tags["lr_range.adam"] == f"{ranges['adam'][0]!r}..{ranges['adam'][1]!r}"


def test_tune_with_two_ddp_ranks_records_world_size(tmp_path, storage) -> None:
    path = write_study(tmp_path, tiny_study(budget={"n_trials": 2, "epochs": 1}))
    code, _, err = run("tune", str(path), "--storage", storage, "--nproc-per-trial", "2", "--no-mlflow",
                       "--no-progress")
    assert code == 0, err
    code, out, _ = run("export", "tiny", "--storage", storage)
    assert json.loads(out)["training"]["world_size"] == 2
    assert json.loads(out)["training"]["batch_size"] == 64
