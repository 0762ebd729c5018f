"""MLflow mirrors the study: after a kill of the whole process group at any moment, one rerun or one
``lrsearch sync`` leaves no run RUNNING, none missing, none with a wrong status; and reconciling twice changes
nothing. Real journal storage, real SQLite MLflow stores, real processes and signals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import optuna
import pytest
from click.testing import CliRunner
from conftest import stop_when, tiny_study, wait_for, write_study
from mlflow import MlflowClient
from mlflow.entities import Run

from lrsearch.cli import cli
from lrsearch.study.budget import BUDGET_TAKEN
from lrsearch.study.storage import load_study
from lrsearch.tracking.runs import PARENT_ATTR

State = optuna.trial.TrialState
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def _runs(client: MlflowClient) -> list:
    return client.search_runs([client.get_experiment_by_name("tiny").experiment_id], max_results=1000)


def improving(trials: list[optuna.trial.FrozenTrial]) -> dict[int, float]:
    """The optimization history against the trial number: each complete trial that beat every earlier one."""
    points, best = {}, None
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.state == State.COMPLETE and not trial.user_attrs.get("diverged") and (best is None or
                                                                                         trial.value < best):
            best = points[trial.number] = trial.value
    return points


def assert_mirrors(storage: str, uri: str, parent_status: str = "FINISHED") -> optuna.Study:
    """Every started trial has exactly one child run with its status, result tags, params and final metrics;
    no run is RUNNING; the parent holds the study's best_value history, best configuration and plots."""
    study = load_study("tiny", storage)
    client = MlflowClient(uri)
    runs = _runs(client)
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    parents = [r for r in runs if r.data.tags.get("lrsearch.role") == "study"]
    assert len(parents) == 1 and parents[0].info.run_id == study.user_attrs[PARENT_ATTR]
    parent = parents[0]
    children: dict[int, list] = {}
    for run in runs:
        if run.data.tags.get("lrsearch.role") == "trial":
            children.setdefault(int(run.data.tags["optuna.trial_number"]), []).append(run)
    started = [t for t in study.trials if t.state.is_finished() and t.user_attrs.get("fail_reason") != BUDGET_TAKEN]
    assert sorted(children) == sorted(t.number for t in started)  # none missing, none extra
    for trial in started:
        assert len(children[trial.number]) == 1, trial.number
        run = children[trial.number][0]
        assert run.info.run_name == f"trial-{trial.number}"
        assert run.info.status == STATUS[trial.state.name], (trial.number, trial.state, run.info.status)
        assert run.data.tags["state"] == trial.state.name and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        if trial.state != State.FAIL:
            assert run.data.metrics["val_loss"] == pytest.approx(trial.user_attrs["val_loss"])
            assert run.data.tags["optimizer_impl"] == trial.user_attrs["optimizer_impl"]
        assert float(run.data.params["lr"]) == trial.user_attrs["config"]["params"]["lr"]
    history = client.get_metric_history(parent.info.run_id, "best_value")
    assert {m.step: m.value for m in history} == pytest.approx(improving(study.trials))
    assert len(history) == len(improving(study.trials))  # one point per improving trial, at its number
    assert parent.info.status == parent_status
    assert parent.data.tags["best.trial"] == str(study.best_trial.number)
    best = json.loads(Path(client.download_artifacts(parent.info.run_id, "best_optimizer.json")).read_text())
    assert best["source"]["trial"] == study.best_trial.number
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/optimization_history.png", "plots/objective_vs_lr.png", "plots/param_importances.png"}
    return study


def test_best_value_points_are_the_improving_trials_as_far_as_every_earlier_one_finished() -> None:
    from lrsearch.tracking.mirror import best_value_points

    def trial(number: int, state: State, value: float | None = None, **attrs) -> optuna.trial.FrozenTrial:
        made = optuna.trial.create_trial(state=state, value=value, user_attrs=attrs)
        made.number = number
        return made

    trials = [trial(0, State.COMPLETE, 1.0), trial(1, State.COMPLETE, 2.0), trial(2, State.PRUNED, 0.1, diverged=True),
              trial(3, State.RUNNING), trial(4, State.COMPLETE, 0.5), trial(5, State.FAIL)]
    assert {n: v for n, (v, _) in best_value_points(trials, minimize=True).items()} == {0: 1.0}  # 3 may improve
    points = best_value_points(trials, minimize=True, pending={3: 0.8})  # 3 is told after the tracker hears
    assert {n: v for n, (v, _) in points.items()} == {0: 1.0, 3: 0.8, 4: 0.5}
    assert list(best_value_points(trials, minimize=False, pending={3: 0.8})) == [0, 1]
    # Once 3 is told, every process computes the same point for it, time included: when several workers' tracking
    # processes write it at once, MLflow's SQL store keeps one row.
    told = optuna.trial.create_trial(state=State.COMPLETE, value=0.8)
    told.number, told.datetime_start = 3, trials[3].datetime_start
    assert best_value_points([*trials[:3], told, *trials[4:]], minimize=True)[3] == points[3]


def _snapshot(client: MlflowClient) -> list:
    """Everything a reconciliation could change, run by run."""
    out = []
    for run in sorted(_runs(client), key=lambda r: r.info.run_id):
        histories = {k: [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run.info.run_id, k)]
                     for k in run.data.metrics}
        artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id))
        out.append((run.info.run_id, run.info.status, run.info.end_time, run.data.tags, run.data.params,
                    histories, artifacts))
    return out


def test_sync_repairs_a_damaged_mirror_and_twice_changes_nothing(tmp_path, mlflow_uri) -> None:
    path = write_study(tmp_path, tiny_study(budget={"n_trials": 4, "epochs": 2}, sampler={"name": "random",
                                                                                          "seed": 1}))
    storage, uri = str(tmp_path / "lrsearch.journal"), mlflow_uri
    result = CliRunner().invoke(cli, ["tune", str(path), "--tracking-uri", uri, "--no-progress"])
    assert result.exit_code == 0, result.output
    study = assert_mirrors(storage, uri)
    client = MlflowClient(uri)
    # What a kill leaves: a run gone, one RUNNING without its result tags, the parent RUNNING without its best.
    by_name = {r.info.run_name: r for r in _runs(client)}
    client.delete_run(by_name["trial-1"].info.run_id)
    client.update_run(by_name["trial-2"].info.run_id, status="RUNNING")
    client.delete_tag(by_name["trial-2"].info.run_id, "state")
    client.update_run(study.user_attrs[PARENT_ATTR], status="RUNNING")
    client.delete_tag(study.user_attrs[PARENT_ATTR], "best.trial")
    client.delete_tag(study.user_attrs[PARENT_ATTR], "lrsearch.mirrored")

    result = CliRunner().invoke(cli, ["sync", "tiny", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert result.stdout == (f"study tiny: MLflow at {uri} matches its 4 finished trials (1 runs created, 1 repaired, "
                             "0 duplicates removed); parent run FINISHED\n")
    assert_mirrors(storage, uri)
    before = _snapshot(client)
    result = CliRunner().invoke(cli, ["sync", "tiny", "--tracking-uri", uri])
    assert result.exit_code == 0 and "(nothing to change)" in result.stdout
    assert _snapshot(client) == before


def test_sync_of_a_study_never_tracked_creates_the_whole_mirror(tmp_path, mlflow_uri) -> None:
    path = write_study(tmp_path, tiny_study(budget={"n_trials": 3, "epochs": 1}))
    assert CliRunner().invoke(cli, ["tune", str(path), "--no-mlflow", "--no-progress"]).exit_code == 0
    uri = mlflow_uri  # an empty store
    result = CliRunner().invoke(cli, ["sync", "tiny", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert "(3 runs created, 0 repaired" in result.stdout
    study = assert_mirrors(str(tmp_path / "lrsearch.journal"), uri)
    run = next(r for r in _runs(MlflowClient(uri)) if r.info.run_name == "trial-0")
    # The epochs' objective comes back from Optuna's intermediate values, at the trial's epochs.
    assert [m.value for m in MlflowClient(uri).get_metric_history(run.info.run_id, "val_loss")] == \
        pytest.approx(list(study.trials[0].intermediate_values.values()))


def test_sync_errors_are_one_line(tmp_path) -> None:
    path = write_study(tmp_path, tiny_study(budget={"n_trials": 1, "epochs": 1}))
    assert CliRunner().invoke(cli, ["tune", str(path), "--no-mlflow", "--no-progress"]).exit_code == 0
    result = CliRunner().invoke(cli, ["sync", "tinny"])
    assert result.exit_code == 2 and result.stderr == "error: study 'tinny' not found in lrsearch.journal " \
                                                      "(studies: tiny)\n"
    (tmp_path / "not-a-dir").write_text("")
    result = CliRunner().invoke(cli, ["sync", "tiny", "--tracking-uri", f"sqlite:///{tmp_path}/not-a-dir/m.db"])
    assert result.exit_code == 1 and result.stderr.startswith("error: cannot record to MLflow at sqlite:///")
    assert result.stderr.count("\n") == 1


# -- the kill at every moment ----------------------------------------------------------------------------------

def _children(pid: int) -> list[tuple[int, str]]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append((int(entry), cmdline))
    return found


def _tracking_process(pid: int) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for child, cmdline in _children(pid):
            if "lrsearch.tracking.process" in cmdline:
                return child
        time.sleep(0.05)
    pytest.fail("no tracking process")


class _Study:
    """One study that each run of ``tune`` extends, each run killed (its whole process group) at its own moment.

    Every moment is an event seen in the storage or in MLflow; where the moment is a state that lasts only until
    the next write (Optuna told, MLflow not), the test holds it: it takes SQLite's write lock on the MLflow store,
    so the tracking process waits, while the tune process, which needs no more than the run id it already has,
    goes on to tell Optuna."""

    def __init__(self, tmp_path: Path, uri: str) -> None:
        # Trials of about a second (batch 4, 6 epochs, no pruning, learning rates the quadratic never diverges at):
        # the lock must be taken while the trial it aims at still trains, after its run was created. The quadratic
        # and one thread: every process this test starts is at its first trial seconds sooner than with digits
        # (sklearn's import) and a timing of threads.
        spec = tiny_study(task="quadratic", budget={"n_trials": 3, "epochs": 6},
                          train={"batch_size": 4, "seed": 0, "threads": 1}, pruner={"name": "none"},
                          search={"optimizers": ["adam", "momentum"], "adam": {"lr": {"low": 1e-4, "high": 1e-2}},
                                  "momentum": {"lr": {"low": 1e-4, "high": 1e-2}}})
        self.path = write_study(tmp_path, spec)
        self.storage, self.uri, self.log = str(tmp_path / "lrsearch.journal"), uri, tmp_path / "tune.log"
        self.finished: dict[int, tuple[str, float | None]] = {}
        self.journal: optuna.storages.BaseStorage | None = None

    def arguments(self, n_trials: int) -> list[str]:
        return ["tune", str(self.path), "--n-trials", str(n_trials), "--tracking-uri", self.uri, "--no-progress"]

    def start(self, n_trials: int) -> subprocess.Popen:
        """``tune`` in a process group of its own, to be killed; what it says goes to ``tune.log``."""
        with open(self.log, "a") as log:
            return subprocess.Popen([sys.executable, "-m", "lrsearch", *self.arguments(n_trials)],
                                    start_new_session=True, stdout=log, stderr=log)

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        if self.journal is None and os.path.exists(self.storage):  # one reader, which reads only what is new
            self.journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(self.storage))
        if self.journal is None:
            return []
        try:
            return optuna.load_study(study_name="tiny", storage=self.journal).get_trials(deepcopy=False)
        except KeyError:
            return []

    def trial(self, number: int) -> optuna.trial.FrozenTrial:
        return next(t for t in self.trials() if t.number == number)

    def done(self) -> int:
        return sum(t.state in (State.COMPLETE, State.PRUNED) for t in self.trials())

    def mid_trial(self) -> int | None:
        """The trial that is mid-way (epochs reported, not finished) once one has finished, if any."""
        trials = self.trials()
        if not any(t.state in (State.COMPLETE, State.PRUNED) for t in trials):
            return None
        return next((t.number for t in trials if t.state == State.RUNNING and t.intermediate_values), None)

    def run(self, number: int) -> Run | None:
        """Trial ``number``'s run, None before the tracking process created it."""
        try:
            client = MlflowClient(self.uri)
            runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                                      f"tags.`optuna.trial_number` = '{number}'")
        except Exception:
            return None
        return runs[0] if runs else None

    def created(self, number: int) -> bool:
        """Trial ``number``'s run exists with its params: the tracking process sends tune the run id next."""
        run = self.run(number)
        return run is not None and bool(run.data.params)

    @contextlib.contextmanager
    def mlflow_locked(self) -> Iterator[None]:
        """Hold SQLite's write lock on the MLflow store: the tracking process waits at its next write (MLflow's busy
        timeout, 20 s, and lrsearch's retries); reading goes on."""
        database = sqlite3.connect(urlparse(self.uri).path, timeout=60, isolation_level=None)
        try:
            database.execute("BEGIN IMMEDIATE")
            yield
        finally:
            database.execute("ROLLBACK")
            database.close()

    def stop_when(self, process: subprocess.Popen, what: str, condition) -> None:
        """Stop the whole group at a moment ``condition`` holds, outside a write to the journal (a kill inside one
        leaves Optuna's lock file, which the next process waits 30 s to break)."""
        stop_when(process, what, lambda: condition() and not os.path.lexists(self.storage + ".lock"), group=True)

    def kill(self, process: subprocess.Popen) -> None:
        os.killpg(process.pid, signal.SIGKILL)  # tune, its tracking process and all: nothing cleans up
        process.wait()

    def rerun(self, n_trials: int) -> str:
        """The same ``tune`` once more, run to its end (here, in this process: it is not killed)."""
        result = CliRunner().invoke(cli, self.arguments(n_trials))
        assert result.exit_code == 0, result.output
        return result.stdout

    def sync(self) -> str:
        result = CliRunner().invoke(cli, ["sync", "tiny", "--tracking-uri", self.uri])
        assert result.exit_code == 0, result.output
        return result.stdout

    def check(self) -> None:
        """The mirror is right, and no trial that had finished was lost or changed."""
        study = assert_mirrors(self.storage, self.uri)
        now = {t.number: (t.state.name, t.value) for t in study.trials if t.state.is_finished()}
        assert {n: now.get(n) for n in self.finished} == self.finished
        self.finished = now


@pytest.mark.slow
def test_a_kill_of_the_whole_group_at_any_moment_is_repaired_by_one_rerun_or_one_sync(tmp_path, mlflow_uri) -> None:
    study = _Study(tmp_path, mlflow_uri)

    # 1. Inside a trial (epochs reported, not finished), after one finished; one rerun.
    process = study.start(3)
    study.stop_when(process, "a trial mid-way", lambda: study.mid_trial() is not None)
    killed = study.mid_trial()
    study.kill(process)
    study.rerun(3)
    assert study.trial(killed).state == State.FAIL
    assert any(t.system_attrs.get("failed_trial") == killed for t in study.trials())  # its parameters retried
    study.check()

    # 2. Between Optuna's tell and the MLflow write, at the run's last trial; one sync. The second trial of the run:
    # the first one trains while the tracking process reconciles MLflow with the study.
    last = len(study.trials()) + 1
    process = study.start(5)
    wait_for(process, f"trial {last}'s run", lambda: study.created(last), every=0.05)
    with study.mlflow_locked():  # tune has all it needs from the tracking process: the run id
        assert study.run(last).info.status == "RUNNING", "the trial ended before the test could hold MLflow back"
        study.stop_when(process, f"trial {last} told", lambda: study.done() == 5)
        study.kill(process)
    run, trial = study.run(last), study.trial(last)
    assert trial.state == State.COMPLETE
    assert run.info.status == "RUNNING" and run.data.tags["state"] == "RUNNING"  # MLflow was behind
    history = MlflowClient(study.uri).get_metric_history(run.info.run_id, "val_loss")
    assert len(history) < len(trial.intermediate_values)
    assert "matches its" in study.sync()
    study.check()

    # 3. After the last trial, while the study's last artifacts are written (best configuration written, plots not
    # yet); one rerun, of a study that is finished (issue 14: such a rerun said "finished" and left it all RUNNING).
    client = MlflowClient(study.uri)
    parent = load_study("tiny", study.storage).user_attrs[PARENT_ATTR]
    artifacts = Path(urlparse(client.get_run(parent).info.artifact_uri).path)
    best = artifacts / "best_optimizer.json"
    written = best.stat().st_mtime_ns
    process = study.start(6)
    tracking = _tracking_process(process.pid)
    wait_for(process, "best_optimizer.json rewritten", lambda: best.stat().st_mtime_ns != written, every=0.005)
    os.kill(tracking, signal.SIGSTOP)
    assert study.done() == 6
    plots = [p.stat().st_mtime_ns for p in (artifacts / "plots").iterdir()]
    assert max(plots) < best.stat().st_mtime_ns, "the plots were redrawn before the test stopped the writer"
    study.kill(process)
    assert client.get_run(parent).info.status == "RUNNING"
    assert "is finished" in study.rerun(6)
    study.check()
    before = _snapshot(MlflowClient(study.uri))
    assert "(nothing to change)" in study.sync()
    assert _snapshot(MlflowClient(study.uri)) == before
