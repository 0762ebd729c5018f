"""Shared fixtures: tiny studies on real SQLite files in tmp_path, run from tmp_path; waiting for a moment in a
running ``tune`` and stopping it there."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
STUDIES = REPO / "studies"


def tiny_study(**changes: Any) -> dict[str, Any]:
    """A digits study of a few 2-epoch trials: seconds on a CPU. One torch thread: ``train.threads: None`` (a study
    file's default) would first time a few steps on 1 thread and on all cores, in every ``tune``; the tests of that
    choice ask for it."""
    study: dict[str, Any] = {
        "name": "tiny",
        "task": "digits-mlp",
        "objective": {"metric": "val_loss", "direction": "minimize"},
        "budget": {"n_trials": 3, "epochs": 2},
        "train": {"batch_size": 64, "device": "cpu", "seed": 0, "threads": 1},
        "search": {"optimizers": ["adam", "momentum"]},
        "sampler": {"name": "tpe", "seed": 0},
        "pruner": {"name": "none"},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(study.get(key), dict):
            study[key] = {**study[key], **value}
        else:
            study[key] = value
    return study


def write_study(directory: Path, study: dict[str, Any], filename: str = "study.yaml") -> Path:
    path = directory / filename
    path.write_text(f"# lrsearch tune {filename}\n" + yaml.safe_dump(study, sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own directory: default lrsearch.db and mlflow.db land there, never in the repo."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LRSEARCH_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store, made once per session: a new store runs MLflow's schema migrations, which take
    seconds (tens under load). Tests write to copies of it (:func:`mlflow_uri`), never to it."""
    from mlflow import MlflowClient

    directory = tmp_path_factory.mktemp("mlflow-store")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(directory)  # MLflow's Default experiment keeps its artifacts under the current directory
        MlflowClient(f"sqlite:///{directory / 'mlflow.db'}").search_experiments()
    return directory / "mlflow.db"


@pytest.fixture
def mlflow_uri(tmp_path: Path, empty_mlflow_store: Path) -> str:
    """This test's own MLflow tracking store, ``sqlite:///<tmp_path>/mlflow.db``: a copy of an empty migrated one."""
    shutil.copyfile(empty_mlflow_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _holds(seen: Any) -> bool:
    return seen is not None and seen is not False


def wait_for(process: subprocess.Popen, what: str, condition: Callable[[], Any], timeout: float = 300,
             every: float = 0.02) -> Any:
    """Look at ``condition`` while ``process`` runs until it returns something other than None or False (a trial
    number may be 0), and return that; fail if the process exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"tune exited with {process.returncode} before {what}"
        seen = condition()
        if _holds(seen):
            return seen
        time.sleep(every)
    pytest.fail(f"timed out waiting for {what}")


def stop_when(process: subprocess.Popen, what: str, condition: Callable[[], Any], *, group: bool = False,
              every: float = 0.02) -> Any:
    """Stop ``process`` (SIGSTOP; with ``group``, its whole process group: its tracking process too) at a moment
    ``condition`` holds, and return what it returned. It is looked at again once the process is stopped, so it still
    holds when the caller kills or signals the process."""
    def send(signum: int) -> None:
        if group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)

    while True:
        wait_for(process, what, condition, every=every)
        send(signal.SIGSTOP)
        seen = condition()  # nothing moves while we look
        if _holds(seen):
            return seen
        send(signal.SIGCONT)
