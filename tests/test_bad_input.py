"""Every kind of bad input: one line naming the problem, exit 2, no traceback, and nothing created."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import tiny_study, write_study

from lrsearch.cli import cli

MODULE = textwrap.dedent('''
    import lrsearch
    NOT_CALLABLE = 3

    def not_a_task():
        return {"model": None}

    def needs_args(width):
        return lrsearch.Task(None, None, None, None)

    def broken():
        raise ValueError("no data in /nowhere")

    def type_bug(width=3):
        return len(width)
''')


def study(**changes) -> dict:
    return tiny_study(**changes)


def search(**changes) -> dict:
    return {"search": {"optimizers": ["adam", "sgd"], **changes}}


# (case id, how to build the study file or None for a raw command, extra CLI args, fragment of the message)
CASES = [
    ("missing file", None, ["tune", "nope.yaml"], "nope.yaml: study file not found"),
    ("unreadable file", None, ["tune", "a_directory"], "cannot read the study file"),
    ("invalid yaml", "name: x\ntask: digits-mlp\nbudget: {n_trials: 3\n", ["tune"], "invalid YAML: line 4"),
    ("unknown key", study(colour="blue"), ["tune"], "colour: unknown key (allowed: name, task,"),
    ("wrong type", study(budget={"epochs": "ten"}), ["tune"], "budget.epochs: input should be a valid integer"),
    ("unknown optimizer", study(search={"optimizers": ["lamb"]}), ["tune"], "'lamb' is not allowed (allowed: 'sgd'"),
    ("unknown sampler", study(sampler={"name": "anneal"}), ["tune"], "sampler.name: 'anneal' is not allowed"),
    ("unknown pruner", study(pruner={"name": "early"}), ["tune"], "pruner.name: 'early' is not allowed"),
    ("unknown schedule", study(**search(schedules=["step"])), ["tune"], "search.schedules.0: 'step' is not allowed"),
    ("unknown task", study(task="mnist"), ["tune"], "task: unknown task 'mnist' (allowed: digits-mlp, quadratic"),
    ("lr low <= 0", study(**search(adam={"lr": {"low": 0.0, "high": 0.1}})), ["tune"],
     "search.adam.lr: low must be > 0 (got 0.0)"),
    ("lr low > high", study(**search(sgd={"lr": {"low": 0.5, "high": 0.1}})), ["tune"],
     "search.sgd.lr: low must be <= high (got low=0.5, high=0.1)"),
    ("beta outside (0, 1)", study(**search(adam={"beta1": 1.0})), ["tune"], "search.adam.beta1: must be in (0, 1)"),
    ("n_trials <= 0", study(budget={"n_trials": 0}), ["tune"], "budget.n_trials: input should be greater than 0"),
    ("epochs <= 0", study(budget={"epochs": -2}), ["tune"], "budget.epochs: input should be greater than 0"),
    ("batch size <= 0", study(train={"batch_size": 0}), ["tune"], "train.batch_size: input should be greater than 0"),
    ("batch larger than data", study(train={"batch_size": 5000}), ["tune"],
     "train.batch_size: 5000 is larger than the training set (1437 samples)"),
    ("entrypoint does not import", study(task={"entrypoint": "no_such_module:make"}), ["tune"],
     "task.entrypoint 'no_such_module:make': cannot import 'no_such_module'"),
    ("entrypoint attribute missing", study(task={"entrypoint": "user_tasks:missing"}), ["tune"],
     "module 'user_tasks' has no attribute 'missing'"),
    ("entrypoint not callable", study(task={"entrypoint": "user_tasks:NOT_CALLABLE"}), ["tune"],
     "task.entrypoint 'user_tasks:NOT_CALLABLE' is a int, not callable"),
    ("entrypoint returns no Task", study(task={"entrypoint": "user_tasks:not_a_task"}), ["tune"],
     "returned dict, expected lrsearch.Task"),
    ("entrypoint rejects args", study(task={"entrypoint": "user_tasks:needs_args", "args": {"depth": 2}}), ["tune"],
     "rejected task.args {'depth': 2}"),
    ("entrypoint raises", study(task={"entrypoint": "user_tasks:broken"}), ["tune"],
     "task.entrypoint 'user_tasks:broken' failed: ValueError: no data in /nowhere"),
    ("entrypoint raises TypeError", study(task={"entrypoint": "user_tasks:type_bug", "args": {"width": 2}}), ["tune"],
     "task.entrypoint 'user_tasks:type_bug' failed: TypeError: object of type 'int' has no len()"),
    ("metric the task lacks", study(objective={"metric": "val_f1"}), ["tune"],
     "objective.metric: 'val_f1' is not reported by this task (allowed: train_loss, val_loss, val_accuracy)"),
    ("malformed storage", study(), ["tune", "--storage", "not a url"], "storage URL 'not a url' is malformed"),
    ("unsupported storage", study(), ["tune", "--storage", "redis://localhost/0"], "backend 'redis' is not supported"),
    ("unreachable storage", study(), ["tune", "--storage", "postgresql+psycopg://u:secret@127.0.0.1:1/db"],
     "cannot open storage 'postgresql+psycopg://u:***@127.0.0.1:1/db'"),
    ("workers <= 0", study(), ["tune", "--workers", "0"], "--workers must be a positive integer (got 0)"),
    ("nproc-per-trial <= 0", study(), ["tune", "--nproc-per-trial", "0"],
     "train.nproc_per_trial: must be a positive integer or 'auto' (got 0)"),
    ("batch not divisible by nproc", study(train={"batch_size": 63}), ["tune", "--nproc-per-trial", "2"],
     "train.batch_size 63 is not divisible by nproc_per_trial 2"),
    ("show unknown study", None, ["show", "nope"], "storage 'lrsearch.journal' does not exist"),
    ("export unknown study", None, ["export", "nope"], "storage 'lrsearch.journal' does not exist"),
    ("sync unknown study", None, ["sync", "nope"], "storage 'lrsearch.journal' does not exist"),
    ("show on sqlite, no file", None, ["show", "nope", "--storage", "sqlite:///lrsearch.db"],
     "storage 'sqlite:///lrsearch.db' does not exist"),
    ("journal in a missing directory", study(), ["tune", "--storage", "runs/lrsearch.journal"],
     "storage URL 'runs/lrsearch.journal': directory"),
    ("not a journal file", study(), ["tune", "--storage", "study.yaml"], "storage URL 'study.yaml' is malformed"),
    ("export bad format", None, ["export", "nope", "--format", "toml"], "--format 'toml' is not known"),
    ("export into a missing directory", None, ["export", "nope", "-o", "missing/best.json"],
     "-o 'missing/best.json': directory"),
    ("export into a directory", None, ["export", "nope", "-o", "a_directory"], "'a_directory' is a directory"),
    ("lr-find plot into a missing directory", study(), ["lr-find", "--plot", "missing/lr.png", "--no-mlflow"],
     "--plot 'missing/lr.png': directory"),
    ("show bad format", None, ["show", "nope", "--format", "xml"], "--format 'xml' is not known"),
]


@pytest.mark.parametrize(("case", "study_file", "args", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path: Path, case, study_file, args, fragment) -> None:
    (tmp_path / "user_tasks.py").write_text(MODULE)
    (tmp_path / "a_directory").mkdir()
    if study_file is not None:
        path = tmp_path / "study.yaml"
        if isinstance(study_file, str):
            path.write_text(study_file)
        else:
            write_study(tmp_path, study_file)
        args = [args[0], str(path), *args[1:]]
    before = set(os.listdir(tmp_path))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output
    created = set(os.listdir(tmp_path)) - before - {"__pycache__"}
    assert not created, created  # no storage file, no MLflow store, no artifacts


def test_an_existing_study_is_listed_when_the_name_is_wrong(tmp_path: Path) -> None:
    path = write_study(tmp_path, tiny_study(budget={"n_trials": 1, "epochs": 1}))
    assert CliRunner().invoke(cli, ["tune", str(path), "--no-mlflow", "--no-progress"]).exit_code == 0
    result = CliRunner().invoke(cli, ["show", "tiyn"])
    assert result.exit_code == 2
    assert result.stderr == "error: study 'tiyn' not found in lrsearch.journal (studies: tiny)\n"
