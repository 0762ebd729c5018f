"""Crash and resume for real: ``tune`` in a subprocess, killed with SIGKILL, SIGINT and SIGTERM, then rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from conftest import tiny_study, write_study
from mlflow import MlflowClient

pytestmark = pytest.mark.slow
State = optuna.trial.TrialState


def _study(tmp_path, n_trials: int):
    spec = tiny_study(budget={"n_trials": n_trials, "epochs": 8}, train={"batch_size": 16, "seed": 0},
                      search={"optimizers": ["adam", "momentum"]})
    path = write_study(tmp_path, spec)
    storage = f"sqlite:///{tmp_path / 'lrsearch.db'}"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [sys.executable, "-m", "lrsearch", "tune", str(path), "--storage", storage, "--tracking-uri", uri,
               "--no-progress"]
    return command, storage, uri


def _trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="tiny", storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []


def _wait_mid_trial(process: subprocess.Popen, storage: str, seen: set[int], min_complete: int = 0) -> int:
    """Wait until this process is in the middle of a trial it started (epochs reported, not finished)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, f"tune exited early with {process.returncode}"
        trials = _trials(storage)
        complete = sum(t.state in (State.COMPLETE, State.PRUNED) for t in trials)
        for t in trials:
            if t.state == State.RUNNING and t.number not in seen and t.intermediate_values and complete >= min_complete:
                return t.number
        time.sleep(0.1)
    pytest.fail("no trial started within 180 s")


def test_kill_9_three_times_then_resume_loses_nothing(tmp_path) -> None:
    command, storage, uri = _study(tmp_path, n_trials=6)
    finished_before: dict[int, float] = {}
    interrupted: set[int] = set()
    for kill in range(3):
        process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL)
        number = _wait_mid_trial(process, storage, interrupted, min_complete=1 if kill == 0 else 0)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        trials = _trials(storage)
        # A trial told between our look and the kill is finished, not interrupted: a loaded machine can do that.
        interrupted.update(t.number for t in trials if t.number == number and t.state == State.RUNNING)
        finished_before.update({t.number: t.value for t in trials if t.state == State.COMPLETE})
    assert finished_before, "the first run should have completed a trial before it was killed"
    assert interrupted, "no kill landed inside a trial"

    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    trials = _trials(storage)
    assert sum(t.state in (State.COMPLETE, State.PRUNED) for t in trials) == 6
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
def test_ctrl_c_and_sigterm_fail_the_running_trial_close_runs_and_resume(tmp_path, signum, code) -> None:
    command, storage, uri = _study(tmp_path, n_trials=3)
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    number = _wait_mid_trial(process, storage, set())
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    assert err.strip().splitlines()[-1] in ("error: interrupted", "error: terminated")
    trial = next(t for t in _trials(storage) if t.number == number)
    assert trial.state == State.FAIL and trial.user_attrs["fail_reason"] == "interrupted"
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    statuses = {r.info.run_name: r.info.status for r in runs}
    assert statuses[f"trial-{number}"] == "FAILED" and statuses["tiny"] == "KILLED"

    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert sum(t.state in (State.COMPLETE, State.PRUNED) for t in _trials(storage)) == 3
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert all(r.info.status != "RUNNING" for r in runs)
