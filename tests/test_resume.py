"""Crash and resume for real: ``tune`` in a subprocess, killed with SIGKILL, SIGINT and SIGTERM, then rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import optuna
import pytest
from click.testing import CliRunner
from conftest import stop_when, tiny_study, write_study
from mlflow import MlflowClient

from lrsearch.cli import cli

pytestmark = pytest.mark.slow
State = optuna.trial.TrialState
EPOCHS = 8
KILL_TRIALS, SIGNAL_TRIALS = 12, 20
"""Trials of a study that is killed three times, and of one interrupted once: far more than the stops need, so that a
tune on a loaded machine, whose storage reads are slow, cannot finish every trial before a poll catches one
mid-way (with 3 trials it did, once in 5 runs beside a busy process)."""


def _study(tmp_path, n_trials: int, uri: str):
    # The quadratic and one thread: each tune process is at its first trial seconds sooner than with digits
    # (sklearn's import) and a timing of threads; learning rates it never diverges at.
    spec = tiny_study(task="quadratic", budget={"n_trials": n_trials, "epochs": EPOCHS},
                      train={"batch_size": 16, "seed": 0, "threads": 1},
                      search={"optimizers": ["adam", "momentum"], "adam": {"lr": {"low": 1e-4, "high": 1e-2}},
                              "momentum": {"lr": {"low": 1e-4, "high": 1e-2}}})
    path = write_study(tmp_path, spec)
    storage = f"sqlite:///{tmp_path / 'lrsearch.db'}"
    return ["tune", str(path), "--storage", storage, "--tracking-uri", uri, "--no-progress"], storage


def _start(arguments: list[str], **kwargs) -> subprocess.Popen:
    """``tune`` in a process of its own, to be stopped, killed or interrupted."""
    return subprocess.Popen([sys.executable, "-m", "lrsearch", *arguments], start_new_session=True, **kwargs)


def _resume(arguments: list[str]) -> None:
    """``tune`` once more, to its end (in this process: nothing stops it)."""
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 0, result.output


def _trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="tiny", storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []


def _mid_trial(storage: str, seen: set[int], min_complete: int) -> int | None:
    """A trial in its epochs (one reported at least, one to come at least: not in its end), none of ``seen``, once
    ``min_complete`` trials have finished."""
    trials = _trials(storage)
    if sum(t.state in (State.COMPLETE, State.PRUNED) for t in trials) < min_complete:
        return None
    return next((t.number for t in trials if t.state == State.RUNNING and t.number not in seen
                 and 0 < len(t.intermediate_values) < EPOCHS), None)


def _stop_mid_trial(process: subprocess.Popen, storage: str, seen: set[int], min_complete: int = 0) -> int:
    """Stop this process in the middle of a trial it started, none of ``seen``; returns the trial's number."""
    return stop_when(process, "a trial mid-way", lambda: _mid_trial(storage, seen, min_complete), every=0.05)


def test_kill_9_three_times_then_resume_loses_nothing(tmp_path, mlflow_uri) -> None:
    arguments, storage = _study(tmp_path, n_trials=KILL_TRIALS, uri=mlflow_uri)
    uri = mlflow_uri
    finished_before: dict[int, float] = {}
    interrupted: set[int] = set()
    for kill in range(3):
        process = _start(arguments, stdout=subprocess.DEVNULL)
        interrupted.add(_stop_mid_trial(process, storage, interrupted, min_complete=1 if kill == 0 else 0))
        os.kill(process.pid, signal.SIGKILL)  # tune alone: its tracking process sees it go
        process.wait()
        finished_before.update({t.number: t.value for t in _trials(storage) if t.state == State.COMPLETE})
    assert finished_before, "the first run should have completed a trial before it was killed"
    assert len(interrupted) == 3

    _resume(arguments)
    trials = _trials(storage)
    assert sum(t.state in (State.COMPLETE, State.PRUNED) for t in trials) == KILL_TRIALS
    by_number = {t.number: t for t in trials}
    for number, value in finished_before.items():
        assert by_number[number].state == State.COMPLETE and by_number[number].value == value
    for number in interrupted:
        assert by_number[number].state == State.FAIL, number
    # Optuna's heartbeat retried the interrupted parameters as new trials.
    retried = [t for t in trials if t.system_attrs.get("failed_trial") in interrupted]
    assert retried, [t.system_attrs for t in trials]

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert all(r.info.status != "RUNNING" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    statuses = {r.info.run_name: r.info.status for r in runs}
    for number in interrupted:
        if f"trial-{number}" in statuses:
            assert statuses[f"trial-{number}"] in ("FAILED", "KILLED")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_fail_the_running_trial_close_runs_and_resume(tmp_path, mlflow_uri, signum, code) -> None:
    arguments, storage = _study(tmp_path, n_trials=SIGNAL_TRIALS, uri=mlflow_uri)
    uri = mlflow_uri
    process = _start(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    number = _stop_mid_trial(process, storage, set())
    process.send_signal(signum)  # pending until it runs again, in the middle of the trial
    process.send_signal(signal.SIGCONT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == code, err
    assert err.strip().splitlines()[-1] in ("error: interrupted", "error: terminated")
    trial = next(t for t in _trials(storage) if t.number == number)
    assert trial.state == State.FAIL and trial.user_attrs["fail_reason"] == "interrupted"
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    statuses = {r.info.run_name: r.info.status for r in runs}
    assert statuses[f"trial-{number}"] == "FAILED" and statuses["tiny"] == "KILLED"

    _resume(arguments)
    assert sum(t.state in (State.COMPLETE, State.PRUNED) for t in _trials(storage)) == SIGNAL_TRIALS
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert all(r.info.status != "RUNNING" for r in runs)
