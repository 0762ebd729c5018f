"""The budget: a study queues only what it will run, leaves nothing WAITING, and gets the rest when raised."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
from click.testing import CliRunner
from conftest import tiny_study, write_study

from lrsearch.cli import cli
from lrsearch.study.budget import drop_waiting
from lrsearch.study.storage import load_study, open_storage

State = optuna.trial.TrialState
FOUR_TEXTBOOK = {"optimizers": ["adam", "adamw", "momentum", "nesterov"]}  # a portfolio of four


def _default_study(tmp_path):
    return write_study(tmp_path, tiny_study(budget={"n_trials": 6, "epochs": 2}, search=FOUR_TEXTBOOK,
                                            sampler={"name": "prior", "seed": 0}, pruner={"name": "halving"}))


def test_a_budget_below_the_portfolio_leaves_nothing_waiting_and_a_raised_one_runs_the_rest(tmp_path) -> None:
    path = _default_study(tmp_path)
    result = CliRunner().invoke(cli, ["tune", str(path), "--n-trials", "3", "--no-mlflow", "--no-progress"])
    assert result.exit_code == 0, result.output
    study = load_study("tiny", "lrsearch.journal")
    assert [t.state for t in study.trials] == [State.COMPLETE] * 3  # nothing queued beyond the budget
    assert [t.user_attrs["portfolio"] for t in study.trials] == ["adam", "adamw", "momentum-cosine"]

    result = CliRunner().invoke(cli, ["tune", str(path), "--n-trials", "5", "--no-mlflow", "--no-progress"])
    assert result.exit_code == 0, result.output
    study = load_study("tiny", "lrsearch.journal")
    assert all(t.state != State.WAITING for t in study.trials) and len(study.trials) == 5
    assert study.trials[3].user_attrs["portfolio"] == "nesterov-cosine"  # the raised budget gets the rest first
    assert "portfolio" not in study.trials[4].user_attrs


@pytest.mark.slow
def test_workers_leave_nothing_waiting_either(tmp_path) -> None:
    path = _default_study(tmp_path)
    result = subprocess.run([sys.executable, "-m", "lrsearch", "tune", str(path), "--n-trials", "3", "--workers", "2",
                             "--no-mlflow", "--no-progress"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    study = load_study("tiny", "lrsearch.journal")
    done = [t for t in study.trials if t.state in (State.COMPLETE, State.PRUNED)]
    assert len(done) == 3 and all(t.state != State.WAITING for t in study.trials)
    assert sorted(t.user_attrs["portfolio"] for t in done) == ["adam", "adamw", "momentum-cosine"]


def test_a_queued_trial_left_when_the_budget_is_complete_is_dropped(tmp_path) -> None:
    """A retry queued for a trial whose process died, when other trials completed the budget meanwhile."""
    path = write_study(tmp_path, tiny_study(budget={"n_trials": 2, "epochs": 1}))
    assert CliRunner().invoke(cli, ["tune", str(path), "--no-mlflow", "--no-progress"]).exit_code == 0
    study = load_study("tiny", "lrsearch.journal")
    study.enqueue_trial(study.trials[0].params)  # as the retry of a stale trial would be
    result = CliRunner().invoke(cli, ["tune", str(path), "--no-mlflow", "--no-progress"])
    assert result.exit_code == 0 and "is finished" in result.output
    study = load_study("tiny", "lrsearch.journal")
    assert [t.state for t in study.trials] == [State.COMPLETE, State.COMPLETE, State.FAIL]
    assert study.trials[2].user_attrs["fail_reason"] == "not run: the study's budget was complete"


class _ClaimedRightAfterTheRead:
    """The study as one process's ``drop_waiting`` sees it, while another process (``other``) claims the queued
    trial right after that read."""

    def __init__(self, study: optuna.Study, other: optuna.Study) -> None:
        self.study_name, self._study, self._other = study.study_name, study, other

    def get_trials(self, **kwargs) -> list[optuna.trial.FrozenTrial]:
        trials = self._study.get_trials(**kwargs)
        self._other.ask()
        return trials


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_dropping_never_fails_a_queued_trial_another_process_started_meanwhile(tmp_path, kind: str) -> None:
    url = str(tmp_path / "s.journal") if kind == "journal" else f"sqlite:///{tmp_path / 's.db'}"
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name="s")
    study.enqueue_trial({"x": 0.5})
    other = optuna.load_study(study_name="s", storage=open_storage(url))  # another worker's process
    drop_waiting(_ClaimedRightAfterTheRead(study, other), storage)
    trial = study.trials[0]
    assert trial.state == State.RUNNING and "fail_reason" not in trial.user_attrs  # left to the process training it
    assert len(study.trials) == 1
