"""The budget: ``n_trials`` is the study's total of complete + pruned trials, shared by every process.

A rerun runs only the remainder, and several processes sharing one study stop at exactly ``n_trials``: a trial
trains only if fewer than ``n_trials`` live or finished trials come before it; a trial that loses that race is
failed with the reason :data:`BUDGET_TAKEN`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from lrsearch.study.heartbeat import beat, fail_stale_trials
from lrsearch.study.states import BUDGET_TAKEN, NOT_NEEDED

if TYPE_CHECKING:
    import optuna

    from lrsearch.config.spec import Budget

POLL_SECONDS = 1.0
"""How often a process whose budget is all running elsewhere looks again."""


def count_free_slots(study: optuna.Study, n_trials: int) -> int | None:
    """How many trials this process may start now: None when the budget is complete; 0 while the rest of it runs
    elsewhere (or in a dead process, whose trials are failed once stale and queued for retry); else at least 1."""
    import optuna

    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    done = sum(t.state in (states.COMPLETE, states.PRUNED) for t in trials)
    running = sum(t.state == states.RUNNING for t in trials)
    waiting = sum(t.state == states.WAITING for t in trials)
    if done >= n_trials:
        return None
    if done + running + waiting >= n_trials and waiting == 0:
        return 0
    return max(1, n_trials - done - running)


def open_slots(study: optuna.Study, storage: Any, budget: Budget) -> Iterator[int]:
    """Yield how many trials this process may start, each time it may start some, until the study's budget
    (``n_trials``, ``timeout``) is spent. While every free slot is taken, it waits and fails trials whose process
    died (their heartbeat is stale), which Optuna then queues for retry."""
    deadline = time.monotonic() + budget.timeout if budget.timeout else None
    while deadline is None or time.monotonic() < deadline:
        free = count_free_slots(study, budget.n_trials)
        if free is None:
            drop_waiting(study, storage)
            return
        if free:
            yield free
        else:
            time.sleep(POLL_SECONDS)
            fail_stale_trials(study, storage)


def drop_waiting(study: optuna.Study, storage: Any) -> None:
    """A complete study keeps no queued trial: each one still WAITING is failed with the reason
    :data:`NOT_NEEDED`. A trial is claimed first, as a worker claims one to train it, and failed only if this
    process won the claim: one read as WAITING that another process starts meanwhile is left to that process (whose
    budget check then refuses it a slot), never failed while it trains."""
    import optuna

    states = optuna.trial.TrialState
    waiting = study.get_trials(deepcopy=False, states=(states.WAITING,))
    if not waiting:
        return
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in waiting:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            if not storage.set_trial_state_values(trial_id, state=states.RUNNING):
                continue  # another process claimed it first
            beat(storage, [trial_id])  # if this process dies right here, the claim goes stale and is retried
            storage.set_trial_user_attr(trial_id, "fail_reason", NOT_NEEDED)
            storage.set_trial_state_values(trial_id, state=states.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process ended it first


def ask_within_budget(study: optuna.Study, count: int, n_trials: int) -> list[optuna.Trial]:
    """Ask Optuna for ``count`` trials (retries of failed ones first) and keep those within the budget; any that
    another worker's trials put beyond ``n_trials`` are failed at once with the reason :data:`BUDGET_TAKEN`."""
    import optuna

    states = optuna.trial.TrialState
    with warnings.catch_warnings():
        # "Heartbeat of storage is supposed to be used with Study.optimize": the study loop keeps the heartbeat.
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        asked = [study.ask() for _ in range(count)]
    live = (states.COMPLETE, states.PRUNED, states.RUNNING, states.WAITING)
    numbers = [t.number for t in study.get_trials(deepcopy=False, states=live)]
    within = []
    for trial in asked:
        if sum(n < trial.number for n in numbers) >= n_trials:
            trial.set_user_attr("fail_reason", BUDGET_TAKEN)
            study.tell(trial, state=states.FAIL)
        else:
            within.append(trial)
    return within
