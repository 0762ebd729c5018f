"""The MLflow calls of the live record, run in the tracking process (see :mod:`lrsearch.tracking.process`).

One parent run per study (reused by every ``tune`` of the study), one nested child run ``trial-<number>`` per
trial; statuses FINISHED (complete), KILLED (pruned, tag ``pruned=true``) and FAILED (exception). What the live
record misses (a crash, a kill) and what sums up the study (``best_value``, the best configuration, plots) is
written by :mod:`lrsearch.tracking.mirror`, which makes MLflow match the study.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from lrsearch.tracking.runs import PROCESS_STOPPED, STATUS, STUDY_ROLE, TRIAL_ROLE, param_text, trial_params

if TYPE_CHECKING:
    from mlflow.entities import Run

    from lrsearch.config.spec import StudySpec

T = TypeVar("T")
_RETRIES = 8
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
"""MLflow 3's mark of an experiment of model training (not GenAI), so its UI opens on the runs."""
N_TRIALS_TAG = "lrsearch.n_trials"
"""Tag of the parent run: the budget of the last ``tune``, which ``lrsearch sync`` judges the study's end by."""


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"budget": {"epochs": 20}}`` -> ``{"budget.epochs": 20}``: MLflow params are flat."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def retry(call: Callable[[], T]) -> T:
    """Concurrent workers writing one SQLite tracking store can hit "database is locked": wait and retry, so
    no metric or run is lost to a lock."""
    for attempt in range(_RETRIES):
        try:
            return call()
        except Exception as exc:
            if "locked" not in str(exc).lower() or attempt == _RETRIES - 1:
                raise
            time.sleep(min(5.0, 0.05 * 2**attempt) * (1 + random.random()))
    raise AssertionError("unreachable")


METRICS_PER_BATCH, PARAMS_PER_BATCH, TAGS_PER_BATCH = 900, 90, 90
"""Entries per ``log_batch``, under MLflow's caps (1000 metrics, 100 params, 100 tags, 1000 entries in all)."""


def log_in_batches(client: Any, run_id: str, metrics: list[Any] = (), params: list[Any] = (),
                   tags: list[Any] = ()) -> None:
    """Metrics, params and tags of one run in as few ``log_batch`` writes as MLflow's caps allow (at least one)."""
    metrics, params, tags = list(metrics), list(params), list(tags)
    while True:
        retry(lambda m=metrics[:METRICS_PER_BATCH], p=params[:PARAMS_PER_BATCH], t=tags[:TAGS_PER_BATCH]:
              client.log_batch(run_id, metrics=m, params=p, tags=t))
        metrics, params, tags = metrics[METRICS_PER_BATCH:], params[PARAMS_PER_BATCH:], tags[TAGS_PER_BATCH:]
        if not (metrics or params or tags):
            return


class Recorder:
    """Owns the MlflowClient of one study's experiment; every method is one step of the study's record."""

    def __init__(self, uri: str, experiment: str, study_name: str) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(uri)
        self.study_name = study_name
        self.experiment_id = experiment_id(self.client, experiment)
        self.parent_run_id: str | None = None
        self.runs: dict[int, str] = {}
        self.metrics: dict[int, list[Any]] = {}

    def open_parent(self, run_id: str | None, spec: dict[str, Any], masked_storage: str, source: str | None,
                    lr_ranges: dict[str, list[float]] | None = None, n_trials: int | None = None,
                    reopen: bool = True) -> str:
        """Reuse the study's parent run, else find one another worker made, else create it; ``reopen`` marks it
        RUNNING (a ``tune`` starts), and ``n_trials`` is that ``tune``'s budget."""
        from mlflow.entities import RunTag

        run_id = self._find_or_create_parent(run_id, spec, masked_storage, source)
        if reopen:
            retry(lambda: self.client.update_run(run_id, status="RUNNING"))
        tags = {f"lr_range.{o}": f"{low!r}..{high!r}" for o, (low, high) in (lr_ranges or {}).items()}
        if n_trials is not None:
            tags[N_TRIALS_TAG] = str(n_trials)
        if tags:  # tune --lr-range auto: the narrowed intervals
            retry(lambda: self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()]))
        return run_id

    def _find_or_create_parent(self, run_id: str | None, spec: dict[str, Any], masked_storage: str,
                               source: str | None) -> str:
        from mlflow.entities import Param

        if run_id is None or not self._active(run_id):
            found = self.search(STUDY_ROLE, order_by=["attributes.start_time ASC"], max_results=1)
            run_id = found[0].info.run_id if found else None
        if run_id is not None:
            self.parent_run_id = run_id
            return run_id
        tags = {"optuna.study_name": self.study_name, "lrsearch.role": STUDY_ROLE,
                "lrsearch.storage": masked_storage,
                "mlflow.note.content": f"lrsearch study {self.study_name}: optimizer and learning-rate search"}
        run = retry(lambda: self.client.create_run(self.experiment_id, run_name=self.study_name, tags=tags))
        oldest = self.search(STUDY_ROLE, order_by=["attributes.start_time ASC"], max_results=1)[0]
        if oldest.info.run_id != run.info.run_id:  # another process created one at the same moment: keep theirs
            retry(lambda: self.client.delete_run(run.info.run_id))
            self.parent_run_id = oldest.info.run_id
            return self.parent_run_id
        self.parent_run_id = run.info.run_id
        params = {"sampler": spec["sampler"]["name"], "pruner": spec["pruner"]["name"],
                  "direction": spec["objective"]["direction"], "metric": spec["objective"]["metric"],
                  **flatten(spec, "spec.")}
        retry(lambda: self.client.log_batch(self.parent_run_id,
                                            params=[Param(k, param_text(v)) for k, v in params.items()]))
        retry(lambda: self.client.log_text(self.parent_run_id, json.dumps(spec, indent=2), "study.json"))
        if source and os.path.exists(source):
            retry(lambda: self.client.log_artifact(self.parent_run_id, source))
        return self.parent_run_id

    def search(self, role: str, extra: str = "", **kwargs: Any) -> list[Run]:
        """This study's runs of ``role`` (``study``, ``trial``), every page of them unless ``max_results`` says."""
        name = self.study_name.replace("'", "\\'")
        query = f"tags.`optuna.study_name` = '{name}' and tags.`lrsearch.role` = '{role}'" + extra
        if "max_results" in kwargs:
            return list(retry(lambda: self.client.search_runs([self.experiment_id], query, **kwargs)))
        runs: list[Run] = []
        token = None
        while True:
            page = retry(lambda token=token: self.client.search_runs([self.experiment_id], query, max_results=1000,
                                                                     page_token=token))
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def _active(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return retry(lambda: self.client.get_run(run_id)).info.lifecycle_stage == "active"
        except MlflowException:
            return False

    def trial_tags(self, number: int, optimizer: str) -> dict[str, str]:
        """The tags that make a run trial ``number``'s child run of this study."""
        return {"mlflow.parentRunId": self.parent_run_id, "optuna.trial_number": str(number),
                "optuna.study_name": self.study_name, "lrsearch.role": TRIAL_ROLE, "optimizer": optimizer}

    def trial_started(self, number: int, config: dict[str, Any], training: dict[str, Any],
                      roles: dict[str, str] | None = None) -> str:
        from mlflow.entities import Param

        tags = {**self.trial_tags(number, config["optimizer"]), **(roles or {}), "state": "RUNNING"}
        run = retry(lambda: self.client.create_run(self.experiment_id, run_name=f"trial-{number}", tags=tags))
        run_id = run.info.run_id
        self.runs[number], self.metrics[number] = run_id, []
        params = trial_params(config, training)
        retry(lambda: self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()]))
        return run_id

    def epoch(self, number: int, epoch: int, values: dict[str, float], timestamp: int) -> None:
        from mlflow.entities import Metric

        self.metrics[number] += [Metric(k, float(v), timestamp, epoch) for k, v in values.items() if math.isfinite(v)]

    def flush(self) -> None:
        """Metrics are sent in batches: one write per trial (or per few seconds) instead of one per value."""
        for number, metrics in self.metrics.items():
            if metrics:
                log_in_batches(self.client, self.runs[number], metrics)
            metrics.clear()

    def trial_ended(self, number: int, state: str, tags: dict[str, str], params: dict[str, str] | None = None) -> None:
        from mlflow.entities import Param, RunTag

        run_id = self.runs.pop(number)
        metrics = self.metrics.pop(number, [])
        # The trial's last metrics, the params it learned while training and its result tags go in one write, the
        # status last.
        log_in_batches(self.client, run_id, metrics, [Param(k, v) for k, v in (params or {}).items()],
                       [RunTag(k, v) for k, v in tags.items()])
        retry(lambda: self.client.set_terminated(run_id, status=STATUS[state]))

    def close_open_runs(self, status: str, reason: str = PROCESS_STOPPED) -> None:
        """The tune process is gone or interrupted: nothing it started may stay RUNNING."""
        from mlflow.entities import RunTag

        self.flush()
        for run_id in list(self.runs.values()):
            retry(lambda run_id=run_id: self.client.log_batch(
                run_id, tags=[RunTag("state", "FAIL"), RunTag("fail_reason", reason)]))
            retry(lambda run_id=run_id: self.client.set_terminated(run_id, status=status))
        self.runs.clear()


def experiment_id(client: Any, name: str) -> str:
    """The id of experiment ``name``, created if missing (another worker may create it at the same moment) and
    marked as model training where MLflow has the mark, so MLflow's UI opens it on its runs."""
    from mlflow.exceptions import MlflowException

    found = retry(lambda: client.get_experiment_by_name(name))
    if found is None:
        try:
            found = retry(lambda: client.get_experiment(client.create_experiment(name)))
        except MlflowException:  # another worker created it first
            found = retry(lambda: client.get_experiment_by_name(name))
    key, kind = EXPERIMENT_KIND
    if key not in found.tags:  # a kind the user chose in the UI stays
        retry(lambda: client.set_experiment_tag(found.experiment_id, key, kind))
    return found.experiment_id


def log_lr_find(uri: str, spec: StudySpec, results: dict[str, Any], ranges: dict[str, tuple[float, float]],
                settings: dict[str, Any]) -> str:
    """Record an LR range test as one MLflow run: curves as metrics (step = index), suggestions, plot as artifact."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    from lrsearch.tracking.plots import plot_lr_find

    client = MlflowClient(uri)
    run = retry(lambda: client.create_run(experiment_id(client, spec.mlflow.experiment or spec.name),
                                          run_name="lr-find",
                                          tags={"optuna.study_name": spec.name, "lrsearch.role": "lr-find"}))
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(f"{kind}.{optimizer}", value, now, step)
               for optimizer, result in results.items()
               for kind, values in (("lr", result.lrs), ("loss", result.losses))
               for step, value in enumerate(values)]
    params = [Param(k, str(v)) for k, v in settings.items()] + [Param("optimizers", ",".join(results))]
    tags = [RunTag(f"suggested_lr.{o}", repr(r.suggested_lr)) for o, r in results.items()]
    tags += [RunTag(f"search_range.{o}", f"{low!r}..{high!r}") for o, (low, high) in ranges.items()]
    log_in_batches(client, run_id, metrics, params, tags)
    with tempfile.TemporaryDirectory() as tmp:
        path = plot_lr_find(results, os.path.join(tmp, "lr_find.png"))
        retry(lambda: client.log_artifact(run_id, str(path)))
    retry(lambda: client.set_terminated(run_id, status="FINISHED"))
    return run_id
