"""The tracking process, ``python -m lrsearch.tracking.process FD``: applies the tune process's messages to MLflow.

Every message is a tuple ``(kind, *args)`` from :class:`~lrsearch.tracking.tracker.MlflowTracker`; each kind has
one handler here. Once the parent run is open (and the tune process told so), MLflow is reconciled with the study
(:func:`~lrsearch.tracking.mirror.reconcile`) while the first trial trains; again when the study ends. If the tune
process goes away
(its end of the socket closes), every run it left open is ended as FAILED, so no run stays RUNNING. A failure here
is sent to the tune process as one line (``("error", text)``), which warns once and trains on; nothing is printed
here unless ``LRSEARCH_DEBUG`` is set.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from lrsearch.errors import first_line
from lrsearch.study.storage import mask_password
from lrsearch.tracking.tracker import tracking_uri

if TYPE_CHECKING:
    import optuna

    from lrsearch.tracking.recorder import Recorder

FLUSH_SECONDS = 2.0
"""Metrics of a running trial reach MLflow at least this often, so the UI follows long trials live."""


class TrackingProcess:
    """One study's record: a handler per message kind, and the clean-up when the tune process is gone."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.recorder: Recorder | None = None
        self.study: optuna.Study | None = None
        self.storage: Any = None
        self.owns_parent = True
        self.best: float | None = None
        self.last_flush = time.monotonic()
        self.done = False

    def serve(self) -> None:
        """Handle messages until the study ends or the tune process goes away."""
        try:
            while not self.done:
                if not self.conn.poll(FLUSH_SECONDS):
                    if self.recorder is not None:
                        self.recorder.flush()
                    continue
                kind, *args = self.conn.recv()
                getattr(self, f"on_{kind}")(*args)
        except (EOFError, ConnectionResetError):
            pass  # the tune process is gone (closed, or killed mid-message): close what it left open
        except Exception as exc:
            if os.environ.get("LRSEARCH_DEBUG") == "1":
                traceback.print_exc()
            with contextlib.suppress(OSError):
                self.conn.send(("error", f"MLflow could not be written ({first_line(exc)})"))
        with contextlib.suppress(Exception):  # MLflow itself may be what failed: the next sync repairs it
            self.abandon()

    def on_open(self, uri: str | None, experiment: str, study_name: str, storage: str, masked: str,
                parent_id: str | None, spec: dict[str, Any], source: str | None,
                lr_ranges: dict[str, list[float]] | None, owns_parent: bool, n_trials: int) -> None:
        from lrsearch.study.storage import load_study, open_storage
        from lrsearch.tracking.recorder import Recorder

        self.owns_parent = owns_parent
        try:
            self.storage = open_storage(storage)  # opened once: a journal is read from its start on opening
            self.study = load_study(study_name, storage, self.storage)
            self.recorder = Recorder(tracking_uri(uri), experiment, study_name)
            run_id = self.recorder.open_parent(parent_id, spec, masked, source, lr_ranges, n_trials)
        except Exception as exc:
            self.conn.send(("error", f"cannot record to MLflow at {mask_password(tracking_uri(uri))}: "
                                     f"{first_line(exc)}"))
            self.recorder, self.done = None, True
            return
        self.conn.send(("parent", run_id))
        self.best = _best_value(self.study)
        from lrsearch.tracking.mirror import reconcile

        try:  # while the tune process trains
            reconcile(self.recorder, self.study, self.storage, parent=False)
        except Exception as exc:  # the live record goes on; the study's end or `lrsearch sync` tries again
            if os.environ.get("LRSEARCH_DEBUG") == "1":
                print(f"MLflow was not brought level with study {study_name}: {first_line(exc)}", file=sys.stderr)

    def on_trial_started(self, number: int, config: dict[str, Any], training: dict[str, Any],
                         roles: dict[str, str]) -> None:
        self.conn.send(("run", number, self.recorder.trial_started(number, config, training, roles)))

    def on_epoch(self, number: int, epoch: int, values: dict[str, float], timestamp: int) -> None:
        self.recorder.epoch(number, epoch, values, timestamp)
        if time.monotonic() - self.last_flush > FLUSH_SECONDS:
            self.recorder.flush()
            self.last_flush = time.monotonic()

    def on_trial_ended(self, number: int, state: str, tags: dict[str, str], value: float | None,
                       minimize: bool, params: dict[str, str]) -> None:
        self.recorder.trial_ended(number, state, tags, params)
        if state != "COMPLETE" or value is None or not math.isfinite(value):
            return
        if self.best is None or (value < self.best if minimize else value > self.best):
            from lrsearch.tracking.mirror import log_best_values

            # Its value comes with the message: this process may not have read the trial's end from the storage yet.
            self.best = value
            log_best_values(self.recorder, self.study, pending={number: value})

    def on_study_ended(self, status: str, owns_parent: bool) -> None:
        from lrsearch.tracking.mirror import reconcile

        reconcile(self.recorder, self.study, self.storage, parent=owns_parent, status=status if owns_parent else None)
        self.recorder, self.done = None, True
        self.conn.send(("closed",))

    def abandon(self) -> None:
        """The tune process stopped without ending the study: nothing it started may stay RUNNING."""
        if self.recorder is None:
            return
        self.recorder.close_open_runs("FAILED")
        if self.recorder.parent_run_id is not None and self.owns_parent:
            self.recorder.client.set_terminated(self.recorder.parent_run_id, status="FAILED")




def _best_value(study: optuna.Study) -> float | None:
    from lrsearch.errors import LrsearchError
    from lrsearch.study.results import best_trial

    try:
        return best_trial(study).value
    except LrsearchError:
        return None


def quiet_mlflow() -> None:
    """MLflow's and alembic's info lines ("Creating initial MLflow database tables...") are not the user's
    business; ``LRSEARCH_DEBUG`` keeps them. MLflow sets its loggers' level from ``MLFLOW_LOGGING_LEVEL`` when it is
    imported."""
    if os.environ.get("LRSEARCH_DEBUG") != "1":
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        logging.getLogger("alembic").setLevel(logging.WARNING)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the tune process decides
    quiet_mlflow()
    TrackingProcess(Connection(int(sys.argv[1]))).serve()
