"""Several workers on one study: a journal file and SQLite with --workers 4, and a real PostgreSQL server with two
commands."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid

import optuna
import pytest
from conftest import tiny_study, write_study
from mlflow import MlflowClient

from lrsearch.study.storage import load_study

pytestmark = pytest.mark.slow
State = optuna.trial.TrialState
TAKEN = "budget already taken by other workers"
POSTGRES = os.environ.get("LRSEARCH_TEST_POSTGRES", "postgresql+psycopg://lrsearch:lrsearch@127.0.0.1/lrsearch_test")


def _check_counts(study: optuna.Study, n_trials: int) -> list[optuna.trial.FrozenTrial]:
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert sum(t.state in (State.COMPLETE, State.PRUNED) for t in trials) == n_trials
    for t in trials:  # nothing lost: every trial finished, or was refused a slot the budget no longer had
        assert t.state in (State.COMPLETE, State.PRUNED) or t.user_attrs.get("fail_reason") == TAKEN, t
    return [t for t in trials if t.state in (State.COMPLETE, State.PRUNED)]


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_four_workers(tmp_path, kind: str) -> None:
    study = tiny_study(budget={"n_trials": 12, "epochs": 3}, sampler={"name": "prior", "seed": 0},
                       pruner={"name": "halving"})  # the default search: its portfolio and budget shared by workers
    path = write_study(tmp_path, study)
    storage = str(tmp_path / "lrsearch.journal") if kind == "journal" else f"sqlite:///{tmp_path / 'lrsearch.db'}"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run([sys.executable, "-m", "lrsearch", "tune", str(path), "--workers", "4", "--storage",
                             storage, "--tracking-uri", uri, "--no-progress"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert "top trials of tiny" in result.stdout
    assert result.stderr == ""  # no library's warnings or info lines (Optuna's experimental, MLflow's migrations)
    study = load_study("tiny", storage)
    done = _check_counts(study, 12)
    portfolio = sorted(t.user_attrs["portfolio"] for t in study.trials if "portfolio" in t.user_attrs)
    assert portfolio == ["adam", "momentum-cosine"]  # queued once by the launcher, each run by one worker
    # Every worker's sampler has the study's seed; each trial still draws its own configuration.
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == len(done)

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == sorted(f"trial-{t.number}" for t in done)
    expected = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}
    for run in children:
        trial = next(t for t in done if f"trial-{t.number}" == run.info.run_name)
        assert run.info.status == expected[trial.state.name]
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_loss"))
        reported = sorted(trial.intermediate_values.items())
        if trial.user_attrs.get("diverged"):  # stopped inside an epoch: its worst value is reported, no metrics
            reported = [(step, value) for step, value in reported if math.isfinite(value)]
        assert history == reported, trial.number  # MLflow's history is Optuna's, point for point
    # Workers finish trials out of number order; best_value is still the optimization history by trial number.
    improving, best = {}, None
    for trial in sorted(done, key=lambda t: t.number):
        if trial.state == State.COMPLETE and (best is None or trial.value < best):
            best = improving[trial.number] = trial.value
    history = client.get_metric_history(parents[0].info.run_id, "best_value")
    assert sorted((m.step, m.value) for m in history) == sorted(improving.items())


def _postgres_reachable() -> bool:
    import sqlalchemy

    try:
        with sqlalchemy.create_engine(POSTGRES).connect():
            return True
    except Exception:
        return False


@pytest.mark.skipif(not os.environ.get("LRSEARCH_TEST_POSTGRES") and not _postgres_reachable(),
                    reason="no PostgreSQL server (.ci/run starts one and sets LRSEARCH_TEST_POSTGRES)")
def test_postgres_two_commands_with_two_workers_each(tmp_path) -> None:
    name = f"pg-{uuid.uuid4().hex[:8]}"
    # The quadratic: six processes load the task, each without sklearn's import (digits').
    path = write_study(tmp_path, tiny_study(name=name, task="quadratic", budget={"n_trials": 10, "epochs": 3}))
    command = [sys.executable, "-m", "lrsearch", "tune", str(path), "--workers", "2", "--storage", POSTGRES,
               "--no-mlflow", "--no-progress"]
    machines = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
    for machine in machines:
        out, err = machine.communicate(timeout=600)
        assert machine.returncode == 0, err
        password = POSTGRES.split("@")[0].rsplit(":", 1)[1]
        assert f":{password}@" not in out + err  # the storage password never reaches the terminal
    study = optuna.load_study(study_name=name, storage=POSTGRES)
    _check_counts(study, 10)


def test_workers_with_ranks_per_trial_are_checked_before_any_starts(tmp_path) -> None:
    """--workers repeats tune's checks once, up front: a global batch the ranks of a trial cannot split is one line
    and exit 2 from the command itself, not N failed workers."""
    from click.testing import CliRunner

    from lrsearch.cli import cli

    path = write_study(tmp_path, tiny_study(train={"batch_size": 65}))
    storage = f"sqlite:///{tmp_path / 'lrsearch.db'}"
    result = CliRunner().invoke(cli, ["tune", str(path), "--workers", "2", "--nproc-per-trial", "2", "--storage",
                                      storage, "--no-mlflow", "--no-progress"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "batch_size 65 is not divisible by nproc_per_trial 2" in result.stderr
    assert not (tmp_path / "lrsearch.db").exists()  # refused before the study was created


GPU_PROBE = '''
import json, os
from lrsearch.training.tasks import quadratic

def make():
    """The quadratic (five processes load it: no sklearn to import, as digits has), after noting which process
    loads it and which GPUs that process was given."""
    with open(os.environ["GPU_PROBE_LOG"], "a") as log:
        log.write(json.dumps({"pid": os.getpid(), "parent": os.getppid(),
                              "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\\n")
    return quadratic()
'''


def test_workers_auto_gives_each_worker_its_own_gpus(tmp_path) -> None:
    """With 4 GPUs (faked: this machine has none, so the workers then train on the CPU), --workers auto with 2 ranks
    per trial starts 2 workers that see GPUs 0,1 and 2,3; each worker's DDP follower sees its worker's GPUs."""
    (tmp_path / "gpu_probe.py").write_text(GPU_PROBE)
    path = write_study(tmp_path, tiny_study(task={"entrypoint": "gpu_probe:make"}, train={"device": "auto"},
                                            budget={"n_trials": 4, "epochs": 1}))
    storage = f"sqlite:///{tmp_path / 'lrsearch.db'}"
    log = tmp_path / "probe.jsonl"
    env = {**os.environ, "LRSEARCH_FAKE_GPUS": "4", "GPU_PROBE_LOG": str(log)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    tune = subprocess.Popen([sys.executable, "-m", "lrsearch", "tune", str(path), "--workers", "auto",
                             "--nproc-per-trial", "2", "--storage", storage, "--no-mlflow", "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = tune.communicate(timeout=600)
    assert tune.returncode == 0, err
    loads = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["gpus"] for line in loads if line["pid"] == tune.pid] == [None]  # the parent only checks the task
    workers = {line["pid"]: line["gpus"] for line in loads if line["parent"] == tune.pid}
    assert sorted(workers.values()) == ["0,1", "2,3"]
    followers = [line for line in loads if line["parent"] in workers]
    assert followers and all(line["gpus"] == workers[line["parent"]] for line in followers)
    study = optuna.load_study(study_name="tiny", storage=storage)
    _check_counts(study, 4)
