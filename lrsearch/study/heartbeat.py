"""Heartbeats of the trials this process trains, so other processes can tell a live trial from a dead one.

Optuna's RDB storage records a trial's heartbeat and, once it is older than the grace period, fails the trial and
retries its parameters. ``study.optimize`` keeps that heartbeat for its one trial; the study loop here trains one or
K trials at a time, so it keeps theirs itself, with the storage's public heartbeat methods.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna


@contextlib.contextmanager
def heartbeats(storage: Any, study: optuna.Study, trials: Sequence[optuna.Trial]) -> Iterator[None]:
    """Record a heartbeat for each of ``trials`` every heartbeat interval while the block runs; nothing for a
    storage without heartbeats."""
    interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
    if not interval or not trials:
        yield
        return
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_ids = [storage.get_trial_id_from_study_id_trial_number(study_id, trial.number) for trial in trials]
    stop = threading.Event()

    def beat() -> None:
        while True:
            for trial_id in trial_ids:
                storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, daemon=True, name="lrsearch-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
