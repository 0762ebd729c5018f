"""MLflow tracking of a study, done in a separate process so logging never slows training.

:class:`MlflowTracker` is a :class:`~lrsearch.tuning.TuneObserver`: each event becomes one small message on a
socket to a tracking process (``python -m lrsearch.tracking``) that owns the MLflow client and does all the
writing (:mod:`lrsearch.mlflow_recorder`). The training process never imports mlflow and never waits on the
tracking store, except to learn a trial's run id at the trial's end (normally already there).

If the tune process is killed, the tracking process sees its socket close and ends every open run as FAILED, so
no run is left RUNNING; runs of a machine that died are closed by the next ``tune`` of the study.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from multiprocessing.connection import Connection, Pipe
from typing import TYPE_CHECKING, Any

from lrsearch.errors import LrsearchError
from lrsearch.studies import mask_password

if TYPE_CHECKING:
    import optuna

    from lrsearch.spec import StudySpec
    from lrsearch.trial_runner import EpochMetrics, TrialOutcome

PARENT_ATTR = "mlflow_parent_run_id"
RUN_ATTR = "mlflow_run_id"
START_TIMEOUT = 300.0
"""Seconds to wait for the tracking process to open the parent run (a new SQLite store migrates its schema)."""
FLUSH_SECONDS = 2.0
"""Metrics of a running trial reach MLflow at least this often, so the UI follows long trials live."""


class TrackingError(LrsearchError):
    """The MLflow tracking store could not be opened or written."""


def tracking_uri(uri: str | None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's default (``sqlite:///mlflow.db`` here)."""
    import mlflow

    return uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()


class MlflowTracker:
    """Records the study in MLflow: a parent run per study, a child run per trial (rank 0 only)."""

    def __init__(self, uri: str | None = None, experiment: str | None = None, storage_url: str = "",
                 owns_parent: bool = True) -> None:
        self.uri = uri
        self.owns_parent = owns_parent
        """False for one of several workers: it records its trials, the process that started it closes the study."""
        self.experiment = experiment
        self.storage_url = storage_url
        self._conn: Connection | None = None
        self._process: subprocess.Popen | None = None
        self._run_ids: dict[int, str] = {}

    def study_started(self, study: optuna.Study, spec: StudySpec) -> None:
        if not self.storage_url:  # the tracking process reads the study back (best trial, plots) from its storage
            backend = getattr(study._storage, "_backend", study._storage)
            self.storage_url = str(getattr(backend, "url", ""))
        parent, child = Pipe()
        self._process = subprocess.Popen([sys.executable, "-m", "lrsearch.tracking", str(child.fileno())],
                                         pass_fds=[child.fileno()])
        child.close()
        self._conn = parent
        experiment = spec.mlflow.experiment or self.experiment or study.study_name
        self._send("open", self.uri, experiment, study.study_name, self.storage_url,
                   mask_password(self.storage_url), study.user_attrs.get(PARENT_ATTR),
                   spec.model_dump(mode="json"), spec.source, study.user_attrs.get("lr_ranges"), self.owns_parent)
        reply = self._reply("parent", START_TIMEOUT)
        study.set_user_attr(PARENT_ATTR, reply[1])
        self.parent_run_id = reply[1]

    def trial_started(self, trial: optuna.Trial, config: dict[str, Any]) -> None:
        self._send("trial_started", trial.number, config, trial.user_attrs.get("training", {}))

    def epoch_ended(self, trial: optuna.Trial, epoch: EpochMetrics) -> None:
        values = {**epoch.metrics, "lr": epoch.lr, "epoch_seconds": epoch.epoch_seconds,
                  "samples_per_second": epoch.samples_per_second}
        self._send("epoch", trial.number, epoch.epoch, values, int(time.time() * 1000))

    def trial_ended(self, trial: optuna.Trial, state: str, outcome: TrialOutcome | None,
                    error: BaseException | None) -> None:
        import optuna

        tags = {"state": state, "diverged": str(bool(outcome and outcome.diverged)).lower(),
                "pruned": str(state == "PRUNED").lower()}
        if outcome is not None:
            tags["optimizer_impl"] = outcome.implementation
            if outcome.stopped:
                tags["stopped"] = f"{outcome.stopped} at epoch {outcome.stopped_epoch}"
        if error is not None:
            tags["fail_reason"] = "interrupted" if isinstance(error, KeyboardInterrupt) else \
                f"{type(error).__name__}: {error}"[:4000]
        metric = trial.study.user_attrs.get("spec", {}).get("objective", {}).get("metric", "val_loss")
        value = outcome.final.get(metric) if outcome is not None else None
        minimize = trial.study.direction == optuna.study.StudyDirection.MINIMIZE
        self._send("trial_ended", trial.number, state, tags, value, minimize)
        if isinstance(error, KeyboardInterrupt):
            return  # Ctrl-C: don't wait on the tracking process; study_ended closes everything
        run_id = self._run_id(trial.number)
        if run_id is not None:
            trial.set_user_attr(RUN_ATTR, run_id)

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


def log_lr_find(uri: str | None, spec: StudySpec, results: dict[str, Any], ranges: dict[str, tuple[float, float]],
                settings: dict[str, Any]) -> str:
    """Record an LR range test as one MLflow run: curves as metrics (step = index), suggestions, plot as artifact."""
    import tempfile

    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    from lrsearch.lr_finder import plot
    from lrsearch.mlflow_recorder import retry

    client = MlflowClient(tracking_uri(uri))
    name = spec.mlflow.experiment or spec.name
    found = retry(lambda: client.get_experiment_by_name(name))
    experiment_id = found.experiment_id if found else retry(lambda: client.create_experiment(name))
    run = retry(lambda: client.create_run(experiment_id, run_name="lr-find",
                                          tags={"optuna.study_name": spec.name, "lrsearch.role": "lr-find"}))
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(f"{kind}.{optimizer}", value, now, step)
               for optimizer, result in results.items()
               for kind, values in (("lr", result.lrs), ("loss", result.losses))
               for step, value in enumerate(values)]
    for start in range(0, len(metrics), 900):
        chunk = metrics[start : start + 900]
        retry(lambda chunk=chunk: client.log_batch(run_id, metrics=chunk))
    params = [Param(k, str(v)) for k, v in settings.items()] + [Param("optimizers", ",".join(results))]
    tags = [RunTag(f"suggested_lr.{o}", repr(r.suggested_lr)) for o, r in results.items()]
    tags += [RunTag(f"search_range.{o}", f"{low!r}..{high!r}") for o, (low, high) in ranges.items()]
    retry(lambda: client.log_batch(run_id, params=params, tags=tags))
    with tempfile.TemporaryDirectory() as tmp:
        path = plot(results, os.path.join(tmp, "lr_find.png"))
        retry(lambda: client.log_artifact(run_id, str(path)))
    retry(lambda: client.set_terminated(run_id, status="FINISHED"))
    return run_id


def _serve(conn: Connection) -> None:
    """The tracking process: apply each message to MLflow until the study ends or the tune process goes away."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the tune process decides
    recorder = None
    storage = None
    owns_parent = True
    last_flush = time.monotonic()
    try:
        while True:
            if not conn.poll(FLUSH_SECONDS):
                if recorder is not None:
                    recorder.flush()
                continue
            message = conn.recv()
            kind, args = message[0], message[1:]
            if kind == "open":
                from lrsearch.mlflow_recorder import Recorder

                uri, experiment, study_name, storage, masked, parent_id, spec, source, lr_ranges, owns_parent = args
                try:
                    recorder = Recorder(tracking_uri(uri), experiment, study_name, storage)
                    run_id = recorder.open_parent(parent_id, spec, masked, source, lr_ranges)
                    recorder.close_orphaned_runs(_load_study(study_name, storage))
                except Exception as exc:
                    conn.send(("error", f"cannot record to MLflow at {mask_password(tracking_uri(uri))}: "
                                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"))
                    return
                conn.send(("parent", run_id))
            elif kind == "trial_started":
                conn.send(("run", args[0], recorder.trial_started(*args)))
            elif kind == "epoch":
                recorder.epoch(*args)
                if time.monotonic() - last_flush > FLUSH_SECONDS:
                    recorder.flush()
                    last_flush = time.monotonic()
            elif kind == "trial_ended":
                recorder.trial_ended(*args)
            elif kind == "study_ended":
                recorder.study_ended(_load_study(recorder.study_name, storage), *args)
                recorder = None
                conn.send(("closed",))
                return
    except EOFError:
        pass  # the tune process is gone: fall through and close what it left open
    except Exception:
        traceback.print_exc()
    if recorder is not None:
        recorder.close_open_runs("FAILED", "the tune process stopped")
        if recorder.parent_run_id is not None and owns_parent:
            recorder.client.set_terminated(recorder.parent_run_id, status="FAILED")


def _load_study(name: str, storage: str) -> optuna.Study:
    import optuna

    from lrsearch.studies import quiet_optuna

    quiet_optuna()
    return optuna.load_study(study_name=name, storage=storage)


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])))
