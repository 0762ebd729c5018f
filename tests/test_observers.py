"""Observers never cost a result: Optuna is told first, and an observer that raises is dropped with one warning."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from conftest import tiny_study

from lrsearch.config.spec import spec_from_dict
from lrsearch.study.loop import run_study
from lrsearch.study.observers import Observers
from lrsearch.study.storage import create_study, open_storage
from lrsearch.training.prepared import prepare

State = optuna.trial.TrialState


class Broken:
    """Fails at one event; records what it saw, and in which state Optuna held the trial when it ended."""

    def __init__(self, fails_at: str) -> None:
        self.fails_at, self.seen, self.states_at_end = fails_at, [], []

    def __getattr__(self, event: str) -> Any:
        if event.startswith("_"):
            raise AttributeError(event)

        def call(*args: Any) -> None:
            self.seen.append(event)
            if event == "trial_ended":
                trial = args[0]
                self.states_at_end.append(trial.study.get_trials(deepcopy=False)[trial.number].state)
            if event == self.fails_at:
                raise RuntimeError(f"{event} broke\nsecond line")
        return call


@pytest.mark.parametrize("fails_at", ["trial_finishing", "trial_ended", "epoch_ended", "trial_started"])
def test_an_observer_that_raises_costs_no_result(tmp_path, fails_at: str) -> None:
    spec = spec_from_dict(tiny_study(budget={"n_trials": 3, "epochs": 2}))
    storage = open_storage(str(tmp_path / "lrsearch.journal"))
    study = create_study(spec, storage, "tiny")
    broken, healthy = Broken(fails_at), Broken("never")
    warnings: list[str] = []
    run_study(study, storage, prepare(spec), Observers([broken, healthy], on_failure=warnings.append))
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [State.COMPLETE] * 3  # every result reached the storage, none twice
    assert len(warnings) == 1 and "Broken stopped (" + fails_at + " broke)" in warnings[0]
    assert "\n" not in warnings[0]
    assert broken.seen[-1] == fails_at  # dropped at its first failure ...
    assert healthy.states_at_end == [State.COMPLETE] * 3  # ... the others go on, and hear of an end once Optuna has it
    assert healthy.seen.count("trial_finishing") == 3
