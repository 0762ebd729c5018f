"""MLflow tracking of a study, done in a separate process so logging never slows training.

:class:`MlflowTracker` is a :class:`~lrsearch.study.observers.TuneObserver`: each event becomes one small message on a
socket to a tracking process (``python -m lrsearch.tracking.process``) that owns the MLflow client and does all the
writing (:mod:`lrsearch.tracking.recorder`). The training process never imports mlflow and never waits on the
tracking store, except for the parent run when the study starts, a trial's run id when the trial ends (normally
there long before), and the last writes when the study ends.

MLflow is the study's copy, never a condition of training: if the tracking process dies or MLflow cannot be
written, the tracker says so in one warning line and the study goes on without it; the end of ``tune`` (or
``lrsearch sync``) brings MLflow level with the study (:mod:`lrsearch.tracking.mirror`). If the tune process is
killed, the tracking process sees its socket close and ends every open run as FAILED, so no run is left RUNNING.
"""

from __future__ import annotations

import os
import subprocess
import sys
from multiprocessing.connection import Connection, Pipe
from typing import TYPE_CHECKING, Any

from lrsearch.errors import LrsearchError, TrackingError
from lrsearch.study.observers import warn
from lrsearch.study.storage import mask_password
from lrsearch.study.trials import fail_reason
from lrsearch.tracking.runs import PARENT_ATTR, RUN_ATTR, end_params, point_time, result_tags, role_tags

if TYPE_CHECKING:
    import optuna

    from lrsearch.config.spec import StudySpec
    from lrsearch.training.trial import EpochMetrics, TrialOutcome

__all__ = ["PARENT_ATTR", "RUN_ATTR", "MlflowTracker", "TrackingError", "tracking_uri"]
RUN_ID_TIMEOUT = 30.0
"""Seconds a trial's end waits for its run id (the tracking process creates the run as the trial starts; a store
migrating its schema, or the first reconciliation of a large study, can hold it up)."""
START_TIMEOUT = 300.0
"""Seconds to wait for the tracking process to open the parent run (a new SQLite store migrates its schema), and
to write the study's last record when it ends."""


def tracking_uri(uri: str | None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's default (``sqlite:///mlflow.db`` here)."""
    import mlflow

    return uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()


class MlflowTracker:
    """Records the study in MLflow: a parent run per study, a child run per trial (rank 0 only)."""

    def __init__(self, uri: str | None, experiment: str | None, storage_url: str, owns_parent: bool = True) -> None:
        """Args:
            uri: The MLflow tracking URI (None: :func:`tracking_uri`'s default).
            experiment: The experiment, unless the study file names one (None: the study name).
            storage_url: The study's Optuna storage, which the tracking process reads back (best trial, plots).
            owns_parent: False for one of several workers: it records its trials, and the process that started
                it closes the study's parent run.
        """
        self.uri = uri
        self.owns_parent = owns_parent
        self.experiment = experiment
        self.storage_url = storage_url
        self.stopped: str | None = None
        """Why tracking stopped during this run (None while it records); the study goes on without it."""
        self._opened = False
        self._study_name = ""
        self._n_trials: int | None = None
        self._conn: Connection | None = None
        self._process: subprocess.Popen | None = None
        self._run_ids: dict[int, str] = {}

    def study_started(self, study: optuna.Study, spec: StudySpec) -> None:
        self._study_name, self._n_trials = study.study_name, spec.budget.n_trials
        parent, child = Pipe()
        self._process = subprocess.Popen([sys.executable, "-m", "lrsearch.tracking.process", str(child.fileno())],
                                         pass_fds=[child.fileno()])
        child.close()
        self._conn = parent
        experiment = spec.mlflow.experiment or self.experiment or study.study_name
        self._send("open", self.uri, experiment, study.study_name, self.storage_url,
                   mask_password(self.storage_url), study.user_attrs.get(PARENT_ATTR),
                   spec.model_dump(mode="json"), spec.source, study.user_attrs.get("lr_ranges"), self.owns_parent,
                   spec.budget.n_trials)
        reply = self._reply("parent", START_TIMEOUT)
        if reply is not None:
            self._opened = True
            study.set_user_attr(PARENT_ATTR, reply[1])

    def trial_started(self, trial: optuna.Trial, config: dict[str, Any]) -> None:
        attrs = trial.user_attrs
        self._send("trial_started", trial.number, config, attrs.get("training", {}), role_tags(attrs))

    def epoch_ended(self, trial: optuna.Trial, epoch: EpochMetrics) -> None:
        values = {**epoch.metrics, "lr": epoch.lr, "epoch_seconds": epoch.epoch_seconds,
                  "samples_per_second": epoch.samples_per_second}
        self._send("epoch", trial.number, epoch.epoch, values, point_time(trial))

    def trial_finishing(self, trial: optuna.Trial) -> None:
        """Record the trial's run id on the trial (``mlflow_run_id``) before Optuna is told its result."""
        while self._conn is not None and trial.number not in self._run_ids:
            if self._reply("run", RUN_ID_TIMEOUT, required=False) is None:
                return  # late: the trial's run is found by its number (lrsearch sync, the study's end)
        run_id = self._run_ids.pop(trial.number, None)
        if run_id is not None:
            trial.set_user_attr(RUN_ATTR, run_id)

    def trial_ended(self, trial: optuna.Trial, state: str, outcome: TrialOutcome | None,
                    error: BaseException | None) -> None:
        import optuna

        tags = result_tags(state, diverged=bool(outcome and outcome.diverged),
                           implementation=outcome.implementation if outcome else None,
                           stopped_epoch=outcome.stopped_epoch if outcome and outcome.stopped else None,
                           skipped_steps=outcome.skipped_steps if outcome else 0,
                           fail_reason=fail_reason(error) if error is not None else None)
        value = outcome.value if outcome is not None else None
        minimize = trial.study.direction == optuna.study.StudyDirection.MINIMIZE
        peak = trial.user_attrs.get("peak_memory_mb")  # finish_trial records it before Optuna is told
        if peak is not None:
            self._send("epoch", trial.number, 0, {"peak_memory_mb": peak}, point_time(trial))
        self._send("trial_ended", trial.number, state, tags, value, minimize,
                   end_params(outcome) if outcome is not None else {})

    def study_finished(self, study: optuna.Study, spec: StudySpec) -> None:
        """The study was finished before this ``tune`` started: bring MLflow level with it, as ``lrsearch sync``
        does (in this process: nothing trains here)."""
        from lrsearch.tracking.mirror import sync_study

        sync_study(study.study_name, self.storage_url, tracking_uri(self.uri), experiment=self.experiment,
                   n_trials=spec.budget.n_trials, parent=self.owns_parent)

    def study_ended(self, study: optuna.Study, error: BaseException | None = None) -> None:
        if self._conn is not None:
            status = "FINISHED" if error is None else "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
            self._send("study_ended", status, self.owns_parent)
            self._reply("closed", START_TIMEOUT)
            self._close()
        if self.stopped is not None and self._opened and not isinstance(error, KeyboardInterrupt):
            self._bring_level(study)

    # -- when tracking fails ---------------------------------------------------------------------------------
    def _stop(self, reason: str) -> None:
        """Tracking failed: say so once, and go on without it (the storage holds every result)."""
        if self.stopped is None:
            self.stopped = reason
            name = self._study_name or "NAME"
            warn(f"MLflow tracking stopped: {reason}; the study goes on without it, and `lrsearch sync {name}` "
                 "brings MLflow level with it")
        self._close()

    def _close(self) -> None:
        """Close the socket and wait for the tracking process (it ends its open runs first), killing it if it
        hangs."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None:
            try:
                self._process.wait(timeout=60 if self.stopped is None else 10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def _bring_level(self, study: optuna.Study) -> None:
        """After the tracking process died mid-study: make MLflow match the study from this process, once."""
        from lrsearch.tracking.mirror import sync_study

        try:
            sync_study(study.study_name, self.storage_url, tracking_uri(self.uri), experiment=self.experiment,
                       n_trials=self._n_trials, parent=self.owns_parent)
        except LrsearchError as exc:
            warn(f"MLflow was not brought level with study {study.study_name} ({exc}); run "
                 f"`lrsearch sync {study.study_name}` when it can be written")

    # -- the socket to the tracking process -----------------------------------------------------------------
    def _send(self, *message: Any) -> None:
        if self._conn is None:
            return
        try:
            self._conn.send(message)
        except (BrokenPipeError, ConnectionResetError, OSError) as exc:
            self._stop(self._exit_reason() or f"the tracking process is gone ({exc})")
            return
        self._read_errors()

    def _read_errors(self) -> None:
        """What the tracking process sent since the last message: run ids, or an error (it stops after one)."""
        try:
            while self._conn is not None and self._conn.poll(0):
                self._take(self._conn.recv())
        except (EOFError, OSError):
            self._stop(self._exit_reason() or "the tracking process is gone")

    def _reply(self, kind: str, timeout: float, required: bool = True) -> tuple | None:
        """The next message of ``kind`` from the tracking process; None (tracking stopped) on an error or its exit,
        and on no answer within ``timeout`` seconds (which stops tracking only when the answer is ``required``)."""
        import time

        deadline = time.monotonic() + timeout
        while self._conn is not None and time.monotonic() < deadline:
            try:
                if not self._conn.poll(min(1.0, max(0.0, deadline - time.monotonic()))):
                    if self._process is not None and self._process.poll() is not None:
                        self._stop(self._exit_reason())
                    continue
                message = self._conn.recv()
            except (EOFError, OSError):
                self._stop(self._exit_reason() or "the tracking process is gone")
                return None
            self._take(message)
            if message[0] == "error":
                return None
            if message[0] == kind:
                return message
        if self._conn is not None and required:
            self._stop(f"no answer from the tracking process within {timeout:.0f} s")
        return None

    def _take(self, message: tuple) -> None:
        if message[0] == "run":
            self._run_ids[message[1]] = message[2]
        elif message[0] == "error":
            self._stop(message[1])

    def _exit_reason(self) -> str:
        if self._process is None or self._process.poll() is None:
            return ""
        code = self._process.returncode
        return f"the tracking process exited ({'killed by signal ' + str(-code) if code < 0 else 'code ' + str(code)})"
