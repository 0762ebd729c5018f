from __future__ import annotations

import optuna
import pytest

from lrsearch.study.algorithms import PruningPoints, make_pruner


def asked(name: str, epochs: int, steps: list[int]) -> list[int]:
    schedule = PruningPoints(make_pruner(name, epochs), epochs)
    return [step for step in steps if schedule.due(0, step)]


def test_successive_halving_and_hyperband_are_asked_at_their_rungs_only() -> None:
    for name in ("sha", "hyperband"):
        assert asked(name, 30, list(range(30))) == [1, 3, 9, 27]


def test_a_task_that_skips_epochs_is_asked_when_it_passes_a_rung() -> None:
    assert asked("hyperband", 20, [0, 2, 4, 6, 8, 10, 12]) == [2, 4, 10]


@pytest.mark.parametrize(("name", "expected"), [("none", []), ("median", [2, 3, 4, 5]),
                                                 ("wilcoxon", [0, 1, 2, 3, 4, 5])])
def test_other_pruners(name: str, expected: list[int]) -> None:
    assert asked(name, 6, list(range(6))) == expected


def test_a_pruner_set_by_hand_is_asked_every_epoch() -> None:
    schedule = PruningPoints(optuna.pruners.HyperbandPruner(min_resource=2), 10)
    assert [step for step in range(10) if schedule.due(0, step)] == list(range(10))


def test_trials_keep_their_own_schedule() -> None:
    schedule = PruningPoints(make_pruner("sha", 10), 10)
    assert schedule.due(0, 0) is False and schedule.due(1, 1) is True and schedule.due(0, 1) is True
