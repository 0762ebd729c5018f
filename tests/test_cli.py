from __future__ import annotations

import json
import subprocess
import sys

import optuna
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


def test_tune_show_export_studies(tmp_path, storage) -> None:
    path = write_study(tmp_path, tiny_study())
    code, out, err = run("tune", str(path), "--storage", storage, "--no-progress", "--n-trials", "2")
    assert code == 0, err
    assert "top trials of tiny" in out and '"torch_class": "torch.optim.' in out

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
    assert exported["source"] == {"study": "tiny", "trial": study.best_trial.number, "state": "COMPLETE",
                                  "mlflow_run_id": exported["source"]["mlflow_run_id"]}
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
