"""The tracking process, ``python -m lrsearch.tracking.process FD``: applies the tune process's messages to MLflow.

Every message is a tuple ``(kind, *args)`` from :class:`~lrsearch.tracking.tracker.MlflowTracker`; each kind has
one handler here. If the tune process goes away (its end of the socket closes), every run it left open is ended
as FAILED, so no run stays RUNNING.
"""

from __future__ import annotations

import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

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
        self.storage = ""
        self.owns_parent = True
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
        except EOFError:
            pass  # the tune process is gone: fall through and close what it left open
        except Exception:
            traceback.print_exc()
        self.abandon()

    def on_open(self, uri: str | None, experiment: str, study_name: str, storage: str, masked: str,
                parent_id: str | None, spec: dict[str, Any], source: str | None,
                lr_ranges: dict[str, list[float]] | None, owns_parent: bool) -> None:
        from lrsearch.tracking.recorder import Recorder

        self.storage, self.owns_parent = storage, owns_parent
        try:
            self.recorder = Recorder(tracking_uri(uri), experiment, study_name, storage)
            run_id = self.recorder.open_parent(parent_id, spec, masked, source, lr_ranges)
            self.recorder.close_orphaned_runs(_load_study(study_name, storage))
        except Exception as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.conn.send(("error", f"cannot record to MLflow at {mask_password(tracking_uri(uri))}: {first_line}"))
            self.recorder, self.done = None, True
            return
        self.conn.send(("parent", run_id))

    def on_trial_started(self, number: int, config: dict[str, Any], training: dict[str, Any]) -> None:
        self.conn.send(("run", number, self.recorder.trial_started(number, config, training)))

    def on_epoch(self, number: int, epoch: int, values: dict[str, float], timestamp: int) -> None:
        self.recorder.epoch(number, epoch, values, timestamp)
        if time.monotonic() - self.last_flush > FLUSH_SECONDS:
            self.recorder.flush()
            self.last_flush = time.monotonic()

    def on_trial_ended(self, number: int, state: str, tags: dict[str, str], value: float | None,
                       minimize: bool) -> None:
        self.recorder.trial_ended(number, state, tags, value, minimize)

    def on_study_ended(self, status: str, owns_parent: bool) -> None:
        self.recorder.study_ended(_load_study(self.recorder.study_name, self.storage), status, owns_parent)
        self.recorder, self.done = None, True
        self.conn.send(("closed",))

    def abandon(self) -> None:
        """The tune process stopped without ending the study: nothing it started may stay RUNNING."""
        if self.recorder is None:
            return
        self.recorder.close_open_runs("FAILED", "the tune process stopped")
        if self.recorder.parent_run_id is not None and self.owns_parent:
            self.recorder.client.set_terminated(self.recorder.parent_run_id, status="FAILED")


def _load_study(name: str, storage: str) -> optuna.Study:
    import optuna

    from lrsearch.study.storage import quiet_optuna

    quiet_optuna()
    return optuna.load_study(study_name=name, storage=storage)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the tune process decides
    TrackingProcess(Connection(int(sys.argv[1]))).serve()
