"""Heartbeats of the trials this process trains, so other processes can tell a live trial from a dead one, and the
failing (and retrying) of trials whose heartbeat went stale.

Optuna's RDB storage records a trial's heartbeat and fails a stale trial itself (``fail_stale_trials``, with the
retry callback the storage was opened with). Optuna's journal storage has no heartbeats, so lrsearch keeps them
there with public storage calls only: the time of the last beat is the trial's system attribute
:data:`HEARTBEAT_ATTR`, and a running trial whose last sign of life (that beat, or its start) is older than the grace
period is failed and its parameters retried, as Optuna does for RDB storages. ``study.optimize`` keeps the
heartbeat of its one trial; the study loop here trains one or K trials at a time, so it keeps theirs itself.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from lrsearch.study.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL, retry_stale_trial

if TYPE_CHECKING:
    import optuna

HEARTBEAT_ATTR = "lrsearch:heartbeat"
"""System attribute of a running trial on a journal storage: the Unix time of its last heartbeat."""


def _is_journal(storage: Any) -> bool:
    from optuna.storages.journal import JournalStorage

    return isinstance(storage, JournalStorage)


def _interval(storage: Any) -> float | None:
    if _is_journal(storage):
        return HEARTBEAT_INTERVAL
    return storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None


def beat(storage: Any, trial_ids: Sequence[int]) -> None:
    """Record one heartbeat for each of ``trial_ids``; a trial another process already failed as stale is skipped
    (its end will be refused too, and the study goes on)."""
    import optuna

    for trial_id in trial_ids:
        try:
            if _is_journal(storage):
                storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
            else:
                storage.record_heartbeat(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue


@contextlib.contextmanager
def heartbeats(storage: Any, study: optuna.Study, trials: Sequence[optuna.Trial]) -> Iterator[None]:
    """Record a heartbeat for each of ``trials`` every heartbeat interval while the block runs (the first at once);
    nothing for a storage without heartbeats (in memory)."""
    interval = _interval(storage)
    if not interval or not trials:
        yield
        return
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_ids = [storage.get_trial_id_from_study_id_trial_number(study_id, trial.number) for trial in trials]
    stop = threading.Event()

    def loop() -> None:
        while True:
            beat(storage, trial_ids)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=loop, daemon=True, name="lrsearch-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale_trials(study: optuna.Study, storage: Any) -> None:
    """Fail the running trials of ``study`` (on ``storage``) whose heartbeat is stale, their process having died,
    and queue their parameters for a retry."""
    import optuna

    if _is_journal(storage):
        _fail_stale_journal_trials(study, storage)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def last_sign_of_life(trial: optuna.trial.FrozenTrial) -> float:
    """Unix time of a running journal trial's last heartbeat, or of its start when that is later (a trial retried
    from a stale one inherits the old one's attributes; a trial asked a moment ago has not beaten yet)."""
    started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
    return max(float(trial.system_attrs.get(HEARTBEAT_ATTR, 0.0)), started)


def _fail_stale_journal_trials(study: optuna.Study, storage: Any) -> None:
    import optuna

    now = time.time()
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if now - last_sign_of_life(trial) <= GRACE_PERIOD:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            # Written to the journal first, applied in journal order: when two processes fail the same trial,
            # the second one's write is refused, so exactly one of them retries it.
            storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        # A copy: the callback appends to the retry history it finds in the trial's attributes.
        retry_stale_trial()(study, copy.deepcopy(storage.get_trial(trial_id)))
