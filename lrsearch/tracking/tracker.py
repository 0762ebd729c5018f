"""MLflow tracking of a study, done in a separate process so logging never slows training.

:class:`MlflowTracker` is a :class:`~lrsearch.study.trials.TuneObserver`: each event becomes one small message on a
socket to a tracking process (``python -m lrsearch.tracking.process``) that owns the MLflow client and does all the
writing (:mod:`lrsearch.tracking.recorder`). The training process never imports mlflow and never waits on the
tracking store, except to learn a trial's run id at the trial's end (normally already there).

If the tune process is killed, the tracking process sees its socket close and ends every open run as FAILED, so
no run is left RUNNING. When both die at once (the whole process group killed, a machine lost), the next ``tune``
of the study, or ``lrsearch sync``, brings MLflow level with the study (:mod:`lrsearch.tracking.mirror`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from multiprocessing.connection import Connection, Pipe
from typing import TYPE_CHECKING, Any

from lrsearch.errors import TrackingError
from lrsearch.study.storage import mask_password
from lrsearch.study.trials import fail_reason
from lrsearch.tracking.runs import PARENT_ATTR, RUN_ATTR, result_tags

if TYPE_CHECKING:
    import optuna

    from lrsearch.config.spec import StudySpec
    from lrsearch.training.trial import EpochMetrics, TrialOutcome

__all__ = ["PARENT_ATTR", "RUN_ATTR", "MlflowTracker", "TrackingError", "tracking_uri"]
START_TIMEOUT = 300.0
"""Seconds to wait for the tracking process to open the parent run (a new SQLite store migrates its schema)."""


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
        self._conn: Connection | None = None
        self._process: subprocess.Popen | None = None
        self._run_ids: dict[int, str] = {}

    def study_started(self, study: optuna.Study, spec: StudySpec) -> None:
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
        study.set_user_attr(PARENT_ATTR, reply[1])

    def trial_started(self, trial: optuna.Trial, config: dict[str, Any]) -> None:
        self._send("trial_started", trial.number, config, trial.user_attrs.get("training", {}))

    def epoch_ended(self, trial: optuna.Trial, epoch: EpochMetrics) -> None:
        values = {**epoch.metrics, "lr": epoch.lr, "epoch_seconds": epoch.epoch_seconds,
                  "samples_per_second": epoch.samples_per_second}
        self._send("epoch", trial.number, epoch.epoch, values, int(time.time() * 1000))

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
        peak = trial.user_attrs.get("peak_memory_mb")  # finish_trial records it before telling observers
        if peak is not None:
            self._send("epoch", trial.number, 0, {"peak_memory_mb": peak}, int(time.time() * 1000))
        self._send("trial_ended", trial.number, state, tags, value, minimize)
        if isinstance(error, KeyboardInterrupt):
            return  # Ctrl-C: don't wait on the tracking process; study_ended closes everything
        run_id = self._run_id(trial.number)
        if run_id is not None:
            trial.set_user_attr(RUN_ATTR, run_id)

    def study_finished(self, study: optuna.Study, spec: StudySpec) -> None:
        """The study was finished before this ``tune`` started: bring MLflow level with it, as ``lrsearch sync``
        does (in this process: nothing trains here)."""
        from lrsearch.tracking.mirror import sync_study

        sync_study(study.study_name, self.storage_url, tracking_uri(self.uri), experiment=self.experiment,
                   n_trials=spec.budget.n_trials, parent=self.owns_parent)

    def study_ended(self, study: optuna.Study, error: BaseException | None = None) -> None:
        if self._conn is None:
            return
        status = "FINISHED" if error is None else "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        try:
            self._send("study_ended", status, self.owns_parent)
            self._reply("closed", START_TIMEOUT)
        finally:
            self._conn.close()
            self._conn = None
            if self._process is not None:
                self._process.wait(timeout=60)

    # -- the socket to the tracking process -----------------------------------------------------------------
    def _send(self, *message: Any) -> None:
        try:
            self._conn.send(message)
        except (BrokenPipeError, ConnectionResetError, OSError) as exc:
            raise TrackingError(f"the MLflow tracking process stopped ({exc})") from None

    def _reply(self, kind: str, timeout: float) -> tuple:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._conn.poll(min(1.0, max(0.0, deadline - time.monotonic()))):
                if self._process is not None and self._process.poll() is not None:
                    raise TrackingError(f"the MLflow tracking process exited with code {self._process.returncode}")
                continue
            try:
                message = self._conn.recv()
            except EOFError:
                raise TrackingError("the MLflow tracking process stopped") from None
            if message[0] == "error":
                raise TrackingError(message[1])
            if message[0] == "run":
                self._run_ids[message[1]] = message[2]
            if message[0] == kind:
                return message
        raise TrackingError(f"no answer from the MLflow tracking process within {timeout:.0f} s")

    def _run_id(self, number: int) -> str | None:
        while number not in self._run_ids:
            self._reply("run", START_TIMEOUT)
        return self._run_ids.pop(number)
