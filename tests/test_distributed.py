"""DDP trials on CPU: a persistent gang of 2 gloo ranks trains real studies, and survives a rank that dies."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import REPO, tiny_study

from lrsearch.config.spec import spec_from_dict
from lrsearch.distributed.follower import RANK_LOG_ENV
from lrsearch.distributed.gang import open_gang
from lrsearch.errors import TrialRuntimeError, UsageError
from lrsearch.study.loop import run_study
from lrsearch.study.storage import create_study, open_storage
from lrsearch.training.devices import check_batch_size, resolve_nproc, torchrun_env
from lrsearch.training.prepared import Prepared, prepare
from lrsearch.training.runner import train_trial
from lrsearch.training.trial import SINGLE_PROCESS, TrialSettings

State = optuna.trial.TrialState


@pytest.fixture(scope="module")
def digits() -> Prepared:
    """The digits task and data loaded once; each test swaps in its own study spec."""
    return prepare(spec_from_dict(tiny_study()))


QUADRATIC: dict[str, Any] = {"task": "quadratic", "search": {
    "optimizers": ["adam", "momentum"], "adam": {"lr": {"low": 1e-4, "high": 1e-2}},
    "momentum": {"lr": {"low": 1e-4, "high": 1e-2}}}}
"""The quadratic, at learning rates it never diverges at, for the tests that start ranks again and again: a rank
loads it seconds sooner than digits (no sklearn to import)."""


@pytest.fixture(scope="module")
def quadratic() -> Prepared:
    return prepare(spec_from_dict(tiny_study(**QUADRATIC)))


def _prepared(digits: Prepared, **changes: Any) -> Prepared:
    return dataclasses.replace(digits, spec=spec_from_dict(tiny_study(**changes)))


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped by a container's init) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _rank_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class _Observer:
    """Records the state each trial ended in; subclasses act at an epoch."""

    def __init__(self) -> None:
        self.ended: dict[int, str] = {}

    def study_started(self, study: Any, spec: Any) -> None: ...

    def study_finished(self, study: Any, spec: Any) -> None: ...

    def trial_started(self, trial: Any, config: Any) -> None: ...

    def epoch_ended(self, trial: Any, epoch: Any) -> None: ...

    def trial_ended(self, trial: Any, state: str, outcome: Any, error: Any) -> None:
        self.ended[trial.number] = state

    def study_ended(self, study: Any, error: Any = None) -> None: ...


class _PruneTrialZeroAtEpochOne(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == 0 and (trial.last_step or 0) >= 1


def test_two_ranks_train_exactly_the_one_process_trial(storage: str, digits: Prepared, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RANK_LOG_ENV, str(tmp_path / "ranks.jsonl"))
    prepared = _prepared(digits, budget={"n_trials": 1, "epochs": 2})
    opened = open_storage(storage)
    study = create_study(prepared.spec, opened, "ddp")
    with open_gang(prepared, 2) as collective:
        pids = collective.follower_pids
        assert collective.world_size == 2 and len(pids) == 1 and _alive(pids[0])
        run_study(study, opened, prepared, [], collective)
    assert not _alive(pids[0])  # a normal end stops and reaps the follower

    (trial,) = study.trials
    assert trial.state == State.COMPLETE and trial.user_attrs["training"]["world_size"] == 2
    single = train_trial(digits.task, digits.data, trial.user_attrs["config"], TrialSettings(2, 64, 0))
    ddp = [trial.intermediate_values[epoch] for epoch in (0, 1)]
    assert ddp == pytest.approx([e.metrics["val_loss"] for e in single.history], rel=1e-5)
    assert trial.user_attrs["val_accuracy"] == pytest.approx(single.final["val_accuracy"], rel=1e-5)
    (line,) = _rank_log(tmp_path / "ranks.jsonl")  # rank 1 really trained the trial, and saw the same metrics
    assert line["rank"] == 1 and line["pid"] == pids[0] and line["epochs"] == 2
    assert line["val_loss"] == trial.value


def test_a_pruned_trial_stops_on_every_rank_at_the_same_epoch(storage: str, digits: Prepared, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RANK_LOG_ENV, str(tmp_path / "ranks.jsonl"))
    prepared = _prepared(digits, budget={"n_trials": 2, "epochs": 4})
    opened = open_storage(storage)
    study = create_study(prepared.spec, opened, "ddp-prune")
    study.pruner = _PruneTrialZeroAtEpochOne()
    with open_gang(prepared, 2) as collective:
        run_study(study, opened, prepared, [], collective)

    assert [t.state for t in study.trials] == [State.PRUNED, State.COMPLETE]
    assert sorted(study.trials[0].intermediate_values) == [0, 1]
    assert sorted(study.trials[1].intermediate_values) == [0, 1, 2, 3]
    follower = [(line["trial"], line["epochs"], line["stopped"], line["stopped_epoch"])
                for line in _rank_log(tmp_path / "ranks.jsonl")]
    assert follower == [(1, 2, "pruned", 1), (2, 4, None, None)]


def test_a_killed_rank_fails_its_trial_in_bounded_time_and_the_study_goes_on(storage: str,
                                                                             quadratic: Prepared) -> None:
    # A minute (the default): waited out, it would fail the trial with "Timed out"; a killed rank's connection
    # closes at once, and that is what must fail the trial.
    prepared = _prepared(quadratic, **QUADRATIC, budget={"n_trials": 2, "epochs": 2}, train={"rank_timeout": 60.0})
    opened = open_storage(storage)
    study = create_study(prepared.spec, opened, "ddp-kill")

    class KillFollower(_Observer):
        def epoch_ended(self, trial: Any, epoch: Any) -> None:
            if trial.number == 0 and epoch.epoch == 0:
                self.killed = collective.follower_pids[0]
                os.kill(self.killed, signal.SIGKILL)

    observer = KillFollower()
    with open_gang(prepared, 2) as collective:
        run_study(study, opened, prepared, [observer], collective)
        replacement = collective.follower_pids[0]
        assert replacement != observer.killed and _alive(replacement)
    assert not _alive(observer.killed) and not _alive(replacement)

    assert [t.state for t in study.trials] == [State.FAIL, State.COMPLETE, State.COMPLETE]
    assert observer.ended[0] == "FAIL"
    reason = study.trials[0].user_attrs["fail_reason"]
    assert reason and "Timed out" not in reason, reason  # the dead rank's closed connection ended it


@pytest.mark.slow
def test_a_hung_rank_fails_its_trial_after_rank_timeout(storage: str, quadratic: Prepared) -> None:
    # Short enough to wait out once, long enough that the restarted follower's first, cold collectives fit in it
    # on a loaded machine (5 s did not, beside other work).
    rank_timeout = 10.0
    prepared = _prepared(quadratic, **QUADRATIC, budget={"n_trials": 1, "epochs": 2},
                         train={"rank_timeout": rank_timeout})
    opened = open_storage(storage)
    study = create_study(prepared.spec, opened, "ddp-hang")

    class StopFollower(_Observer):
        def epoch_ended(self, trial: Any, epoch: Any) -> None:
            if trial.number == 0 and epoch.epoch == 0:
                self.stopped = collective.follower_pids[0]
                os.kill(self.stopped, signal.SIGSTOP)  # alive but silent: only the timeout can catch it

    observer = StopFollower()
    with open_gang(prepared, 2) as collective:
        run_study(study, opened, prepared, [observer], collective)
    assert observer.ended[0] == "FAIL"
    reason = study.trials[0].user_attrs["fail_reason"]
    assert f"Timed out waiting {rank_timeout * 1000:.0f}ms" in reason, reason  # rank_timeout, and no other, caught it
    assert [t.state for t in study.trials] == [State.FAIL, State.COMPLETE]
    assert not _alive(observer.stopped)


def test_an_interrupt_in_rank_0_leaves_no_follower(storage: str, quadratic: Prepared) -> None:
    prepared = _prepared(quadratic, **QUADRATIC, budget={"n_trials": 2, "epochs": 3})
    opened = open_storage(storage)
    study = create_study(prepared.spec, opened, "ddp-interrupt")

    class Interrupt(_Observer):
        def epoch_ended(self, trial: Any, epoch: Any) -> None:
            raise KeyboardInterrupt

    pids: list[int] = []
    with pytest.raises(KeyboardInterrupt), open_gang(prepared, 2) as collective:
        pids = collective.follower_pids
        run_study(study, opened, prepared, [Interrupt()], collective)
    assert pids and not any(_alive(pid) for pid in pids)
    assert [t.state for t in study.trials] == [State.FAIL]
    assert study.trials[0].user_attrs["fail_reason"] == "interrupted"


def test_followers_die_with_their_parent(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO / "tests")!r})
        from conftest import tiny_study
        from lrsearch.distributed.gang import open_gang
        from lrsearch.config.spec import spec_from_dict
        from lrsearch.training.prepared import prepare
        with open_gang(prepare(spec_from_dict(tiny_study(task="quadratic"))), 2) as collective:
            print(*collective.follower_pids, flush=True)
            time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(pid) for pid in parent.stdout.readline().split()]  # type: ignore[union-attr]
        assert pids and all(_alive(pid) for pid in pids)
    finally:
        parent.kill()  # SIGKILL: the parent runs no cleanup at all
        parent.wait()
    deadline = time.monotonic() + 60  # the kernel's parent-death signal is at once; a loaded machine reaps late
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)


def test_nproc_is_resolved_and_checked() -> None:
    assert resolve_nproc("auto", "cpu") == 1
    assert resolve_nproc(3, "cpu") == 3 and resolve_nproc("2", "cpu") == 2
    for bad in (0, -1, "two", True):
        with pytest.raises(UsageError, match="positive integer"):
            resolve_nproc(bad, "cpu")


def test_a_batch_the_ranks_cannot_split_is_refused(digits: Prepared) -> None:
    check_batch_size(64, 2)
    with pytest.raises(UsageError, match=r"batch_size 66 is not divisible by nproc_per_trial 4.*64 or 68"):
        check_batch_size(66, 4)
    with pytest.raises(UsageError, match="batch_size 65 is not divisible by nproc_per_trial 2"), \
            open_gang(_prepared(digits, train={"batch_size": 65}), 2):
        pass  # refused before any process starts
    with open_gang(digits, 1) as collective:
        assert collective is SINGLE_PROCESS


def test_torchrun_env_is_read_only_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert torchrun_env() is None
    launch = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
              "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}
    for name, value in launch.items():
        monkeypatch.setenv(name, value)
    assert torchrun_env() == {"rank": 3, "world_size": 4, "local_rank": 1, "local_world_size": 2,
                              "master_addr": "node0", "master_port": 29500}
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert torchrun_env() is None  # a single rank is a plain single-process run


@pytest.mark.slow
def test_under_torchrun_rank_0_drives_and_rank_1_follows(storage: str, tmp_path: Path) -> None:
    script = tmp_path / "drive.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        from conftest import tiny_study
        from lrsearch.config.spec import spec_from_dict
        from lrsearch.distributed.torchrun import follow_torchrun, open_torchrun_collective
        from lrsearch.study.loop import run_study
        from lrsearch.study.storage import create_study, open_storage
        from lrsearch.training.devices import torchrun_env
        from lrsearch.training.prepared import prepare_rank
        env = torchrun_env()
        spec = spec_from_dict(tiny_study(**{QUADRATIC!r}, budget={{"n_trials": 2, "epochs": 2}},
                                         train={{"threads": 1}}))
        if env["rank"] != 0:
            print("followed", follow_torchrun(spec, env))
            sys.exit(0)
        prepared = prepare_rank(spec, env["local_rank"])
        with open_torchrun_collective(prepared, env) as collective:
            opened = open_storage({storage!r})
            study = create_study(spec, opened, "torchrun")
            run_study(study, opened, prepared, [], collective)
    """))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, RANK_LOG_ENV: str(tmp_path / "ranks.jsonl")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "followed 2" in result.stdout
    study = optuna.load_study(study_name="torchrun", storage=storage)
    assert [t.state for t in study.trials] == [State.COMPLETE, State.COMPLETE]
    assert [line["val_loss"] for line in _rank_log(tmp_path / "ranks.jsonl")] == [t.value for t in study.trials]


def test_a_follower_that_cannot_load_the_task_is_reported(digits: Prepared, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Importable only through rank 0's sys.path: the followers must get it too, then fail with the task's own error.
    (tmp_path / "tasks_here").mkdir()
    (tmp_path / "tasks_here" / "ddp_task.py").write_text(textwrap.dedent("""
        import os
        from lrsearch.training.tasks import digits_mlp

        def task():
            if os.environ.get("DDP_TASK_FAILS"):
                raise RuntimeError("no data on this rank")
            return digits_mlp()
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "tasks_here"))
    spec = spec_from_dict(tiny_study(task={"entrypoint": "ddp_task:task"}))
    prepared = prepare(spec)
    monkeypatch.setenv("DDP_TASK_FAILS", "1")
    with pytest.raises(TrialRuntimeError, match=r"DDP rank 1 could not start: .*RuntimeError: no data on this rank"), \
            open_gang(prepared, 2):
        pass
