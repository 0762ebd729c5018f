"""What every storage must do, shown on each (a journal file, the default; SQLite): tune, resume, show, studies,
export; and the journal's heartbeats, which lrsearch keeps itself (Optuna keeps none there)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
import threading
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from conftest import tiny_study, write_study
from sqlalchemy import event

from lrsearch.cli import cli
from lrsearch.study.heartbeat import HEARTBEAT_ATTR, fail_stale_trials, heartbeats
from lrsearch.study.storage import GRACE_PERIOD, MAX_RETRY, open_storage

State = optuna.trial.TrialState


@pytest.fixture(params=["journal", "sqlite"])
def url(request, tmp_path: Path) -> str:
    return str(tmp_path / "studies.journal") if request.param == "journal" else f"sqlite:///{tmp_path / 'studies.db'}"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.exit_code, result.stdout


def test_tune_resume_show_studies_export(tmp_path: Path, url: str) -> None:
    path = write_study(tmp_path, tiny_study(budget={"n_trials": 2, "epochs": 1}))
    run("tune", str(path), "--storage", url, "--no-mlflow", "--no-progress")
    run("tune", str(path), "--storage", url, "--no-mlflow", "--no-progress", "--n-trials", "3")  # the remainder
    shown = json.loads(run("show", "tiny", "--storage", url, "--format", "json")[1])
    assert [(t["number"], t["state"]) for t in shown["trials"]] == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]
    best = min(shown["trials"], key=lambda t: t["value"])
    assert shown["best_trial"]["number"] == best["number"]
    rows = json.loads(run("studies", "--storage", url, "--format", "json")[1])
    assert [(r["study"], r["states"], r["best_trial"]) for r in rows] == [("tiny", {"COMPLETE": 3}, best["number"])]
    exported = json.loads(run("export", "tiny", "--storage", url)[1])
    assert exported["source"]["trial"] == best["number"] and exported["objective"]["value"] == best["value"]
    assert exported["kwargs"]["lr"] == best["params"]["lr"]


def test_the_default_storage_is_a_journal_file_here(tmp_path: Path) -> None:
    path = write_study(tmp_path, tiny_study(budget={"n_trials": 1, "epochs": 1}))
    run("tune", str(path), "--no-mlflow", "--no-progress")
    assert (tmp_path / "lrsearch.journal").exists() and not (tmp_path / "lrsearch.db").exists()
    study = optuna.load_study(study_name="tiny", storage=open_storage("lrsearch.journal", create=False))
    assert [t.state for t in study.trials] == [State.COMPLETE]


def test_a_journal_is_optunas_format_and_a_torn_last_record_is_cut(tmp_path: Path) -> None:
    path = str(tmp_path / "s.journal")
    study = optuna.create_study(storage=open_storage(path), study_name="s")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    with open(path, "ab") as handle:
        handle.write(b'{"op_code":4,"worker_id":"w","trial_id":0,"user_')  # a write cut short by a power cut
    study = optuna.load_study(study_name="s", storage=open_storage(path))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    # Optuna's own reader (optuna-dashboard's too) reads every record, the ones after the cut included.
    stock = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    trials = optuna.load_study(study_name="s", storage=stock).trials
    assert [t.state for t in trials] == [State.COMPLETE] * 3
    assert [t.params["x"] for t in trials] == [t.params["x"] for t in study.trials]


def _running_trial(study: optuna.Study, started_ago: float, beat_ago: float | None) -> int:
    """A RUNNING trial as a process that died (or lives) would leave it."""
    start = dt.datetime.now() - dt.timedelta(seconds=started_ago)
    system_attrs = {} if beat_ago is None else {HEARTBEAT_ATTR: time.time() - beat_ago}
    trial = optuna.trial.FrozenTrial(
        number=-1, state=State.RUNNING, value=None, datetime_start=start, datetime_complete=None,
        params={"x": 0.5}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
        user_attrs={"config": {"x": 0.5}}, system_attrs=system_attrs, intermediate_values={}, trial_id=-1)
    study.add_trial(trial)
    return study.trials[-1].number


def test_journal_trials_with_a_stale_heartbeat_are_failed_and_retried_once(tmp_path: Path, monkeypatch) -> None:
    path = str(tmp_path / "s.journal")
    # Two processes' views of one journal file: both find the same stale trials, one of them fails and retries each.
    storages = [open_storage(path), open_storage(path)]
    studies = [optuna.create_study(storage=s, study_name="s", load_if_exists=True) for s in storages]
    dead = _running_trial(studies[0], started_ago=60, beat_ago=GRACE_PERIOD + 5)
    never_beat = _running_trial(studies[0], started_ago=GRACE_PERIOD + 5, beat_ago=None)
    alive = _running_trial(studies[0], started_ago=60, beat_ago=1)
    just_asked = _running_trial(studies[0], started_ago=1, beat_ago=None)
    retried_from_old = _running_trial(studies[0], started_ago=1, beat_ago=600)  # a retry inherits the old beat
    seen_by_second = studies[1].get_trials(deepcopy=False, states=(State.RUNNING,))
    fail_stale_trials(studies[0], storages[0])
    monkeypatch.setattr(studies[1], "get_trials", lambda **_: seen_by_second)  # it looked before the first wrote
    fail_stale_trials(studies[1], storages[1])
    monkeypatch.undo()
    trials = {t.number: t for t in studies[0].get_trials()}
    assert {n for n, t in trials.items() if t.state == State.FAIL} == {dead, never_beat}
    assert {n for n, t in trials.items() if t.state == State.RUNNING} == {alive, just_asked, retried_from_old}
    retries = [t for t in trials.values() if t.state == State.WAITING]
    assert sorted(t.system_attrs["failed_trial"] for t in retries) == [dead, never_beat]  # once each
    assert all(t.params == {"x": 0.5} and t.user_attrs == {"config": {"x": 0.5}} for t in retries)
    assert MAX_RETRY == 2


def test_journal_heartbeats_are_recorded_while_a_trial_trains(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "s.journal"))
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    before = time.time()
    with heartbeats(storage, study, [trial]):
        time.sleep(0.2)
    beat = study.trials[0].system_attrs[HEARTBEAT_ATTR]
    assert before <= beat <= time.time()
    fail_stale_trials(study, storage)
    assert study.trials[0].state == State.RUNNING  # beaten a moment ago: alive
    study.tell(trial, 0.25)
    assert study.trials[0].state == State.COMPLETE and study.trials[0].value == 0.25


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_sqlite_workers_asking_at_one_moment_never_claim_one_queued_trial_twice(tmp_path: Path) -> None:
    """Optuna claims a queued trial by reading it WAITING, then writing RUNNING (``SELECT ... FOR UPDATE``, which
    SQLite ignores). Worker A is held between that read and that write: meanwhile no other process may write, and
    worker B, asking at that moment, gets a trial of its own. On plain pysqlite both got trial 0: it trained twice,
    and the second result was refused (``UpdateFinishedTrialError``), failing a ``--workers 4`` tune."""
    path = tmp_path / "s.db"
    storage_a, storage_b = open_storage(f"sqlite:///{path}"), open_storage(f"sqlite:///{path}")
    optuna.create_study(storage=storage_a, study_name="s").enqueue_trial({"x": 0.5})
    worker_a = optuna.load_study(study_name="s", storage=storage_a)
    worker_b = optuna.load_study(study_name="s", storage=storage_b)
    claiming, release = threading.Event(), threading.Event()

    @event.listens_for(storage_a.engine, "before_cursor_execute")
    def hold(_connection, _cursor, statement: str, *_) -> None:
        if statement.startswith("UPDATE trials SET state=") and not claiming.is_set():
            claiming.set()  # trial 0 read as WAITING, RUNNING not yet written
            release.wait()

    claimed: dict[str, int] = {}
    thread_a = threading.Thread(target=lambda: claimed.update(a=worker_a.ask().number))
    thread_a.start()
    claiming.wait()
    with contextlib.closing(sqlite3.connect(path, timeout=0)) as another_process:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            another_process.execute("BEGIN IMMEDIATE")  # its writes wait
    thread_b = threading.Thread(target=lambda: claimed.update(b=worker_b.ask().number))
    thread_b.start()
    release.set()
    thread_a.join()
    thread_b.join()
    assert claimed == {"a": 0, "b": 1}
    assert [t.state for t in worker_a.trials] == [State.RUNNING, State.RUNNING]
