"""The MLflow calls behind tracking, run in the tracking process (see :mod:`lrsearch.tracking.process`).

One parent run per study (reused by every ``tune`` of the study), one nested child run ``trial-<number>`` per
trial; statuses FINISHED (complete), KILLED (pruned, tag ``pruned=true``) and FAILED (exception); the best
configuration, ``best_value`` and plots on the parent.
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

if TYPE_CHECKING:
    import optuna

    from lrsearch.config.spec import StudySpec

T = TypeVar("T")
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
_RETRIES = 8


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


class Recorder:
    """Owns the MlflowClient; every method is one step of the study's record."""

    def __init__(self, uri: str, experiment: str, study_name: str, storage: str) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(uri)
        self.study_name = study_name
        self.storage = storage
        found = retry(lambda: self.client.get_experiment_by_name(experiment))
        self.experiment_id = found.experiment_id if found else self._create_experiment(experiment)
        self.parent_run_id: str | None = None
        self.runs: dict[int, str] = {}
        self.metrics: dict[int, list[Any]] = {}
        self.best: float | None = None

    def _create_experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        try:
            return retry(lambda: self.client.create_experiment(name))
        except MlflowException:  # another worker created it first
            return retry(lambda: self.client.get_experiment_by_name(name)).experiment_id

    def open_parent(self, run_id: str | None, spec: dict[str, Any], masked_storage: str, source: str | None,
                    lr_ranges: dict[str, list[float]] | None = None) -> str:
        """Reuse the study's parent run, else find one another worker made, else create it."""
        run_id = self._find_or_create_parent(run_id, spec, masked_storage, source)
        for optimizer, (low, high) in (lr_ranges or {}).items():  # tune --lr-range auto: the narrowed intervals
            retry(lambda o=optimizer, lo=low, hi=high: self.client.set_tag(run_id, f"lr_range.{o}", f"{lo!r}..{hi!r}"))
        return run_id

    def _find_or_create_parent(self, run_id: str | None, spec: dict[str, Any], masked_storage: str,
                               source: str | None) -> str:
        from mlflow.entities import Param

        if run_id is None or not self._active(run_id):
            found = retry(lambda: self.client.search_runs(
                [self.experiment_id], filter_string=self._filter("study"), order_by=["attributes.start_time ASC"],
                max_results=1))
            run_id = found[0].info.run_id if found else None
        if run_id is not None:
            retry(lambda: self.client.update_run(run_id, status="RUNNING"))
            self.parent_run_id = run_id
            return run_id
        tags = {"optuna.study_name": self.study_name, "lrsearch.role": "study", "lrsearch.storage": masked_storage,
                "mlflow.note.content": f"lrsearch study {self.study_name}: optimizer and learning-rate search"}
        run = retry(lambda: self.client.create_run(self.experiment_id, run_name=self.study_name, tags=tags))
        oldest = retry(lambda: self.client.search_runs(
            [self.experiment_id], filter_string=self._filter("study"), order_by=["attributes.start_time ASC"],
            max_results=1))[0]
        if oldest.info.run_id != run.info.run_id:  # another process created one at the same moment: keep theirs
            retry(lambda: self.client.delete_run(run.info.run_id))
            retry(lambda: self.client.update_run(oldest.info.run_id, status="RUNNING"))
            self.parent_run_id = oldest.info.run_id
            return self.parent_run_id
        self.parent_run_id = run.info.run_id
        params = {"sampler": spec["sampler"]["name"], "pruner": spec["pruner"]["name"],
                  "direction": spec["objective"]["direction"], "metric": spec["objective"]["metric"],
                  **flatten(spec, "spec.")}
        retry(lambda: self.client.log_batch(self.parent_run_id,
                                            params=[Param(k, _text(v)) for k, v in params.items()]))
        retry(lambda: self.client.log_text(self.parent_run_id, json.dumps(spec, indent=2), "study.json"))
        if source and os.path.exists(source):
            retry(lambda: self.client.log_artifact(self.parent_run_id, source))
        return self.parent_run_id

    def _filter(self, role: str) -> str:
        name = self.study_name.replace("'", "\\'")
        return f"tags.`optuna.study_name` = '{name}' and tags.`lrsearch.role` = '{role}'"

    def _active(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return retry(lambda: self.client.get_run(run_id)).info.lifecycle_stage == "active"
        except MlflowException:
            return False

    def trial_started(self, number: int, config: dict[str, Any], training: dict[str, Any]) -> str:
        from mlflow.entities import Param

        tags = {"mlflow.parentRunId": self.parent_run_id, "optuna.trial_number": str(number),
                "optuna.study_name": self.study_name, "lrsearch.role": "trial", "optimizer": config["optimizer"],
                "state": "RUNNING"}
        run = retry(lambda: self.client.create_run(self.experiment_id, run_name=f"trial-{number}", tags=tags))
        run_id = run.info.run_id
        self.runs[number], self.metrics[number] = run_id, []
        schedule = {("schedule" if k == "name" else f"schedule.{k}"): v for k, v in config["schedule"].items()}
        params = {"optimizer": config["optimizer"], **config["params"], **schedule, **training}
        retry(lambda: self.client.log_batch(run_id, params=[Param(k, _text(v)) for k, v in params.items()]))
        return run_id

    def epoch(self, number: int, epoch: int, values: dict[str, float], timestamp: int) -> None:
        from mlflow.entities import Metric

        self.metrics[number] += [Metric(k, float(v), timestamp, epoch) for k, v in values.items() if math.isfinite(v)]

    def flush(self) -> None:
        """Metrics are sent in batches: one write per trial (or per few seconds) instead of one per value."""
        for number, metrics in self.metrics.items():
            for start in range(0, len(metrics), 900):  # MLflow caps a batch at 1000 metrics
                chunk = metrics[start : start + 900]
                retry(lambda run=self.runs[number], chunk=chunk: self.client.log_batch(run, metrics=chunk))
            metrics.clear()

    def trial_ended(self, number: int, state: str, tags: dict[str, str], value: float | None,
                    minimize: bool) -> None:
        from mlflow.entities import RunTag

        run_id = self.runs.pop(number)
        metrics = self.metrics.pop(number, [])
        # The trial's last metrics and its result tags go in one write (a batch holds up to 1000 entries).
        run_tags = [RunTag(k, v) for k, v in tags.items()]
        for start in range(0, max(len(metrics), 1), 900):
            chunk, chunk_tags = metrics[start : start + 900], run_tags if start == 0 else []
            retry(lambda chunk=chunk, chunk_tags=chunk_tags: self.client.log_batch(run_id, metrics=chunk,
                                                                                   tags=chunk_tags))
        retry(lambda: self.client.set_terminated(run_id, status=STATUS[state]))
        if state == "COMPLETE" and value is not None and math.isfinite(value):
            if self.best is None or (value < self.best if minimize else value > self.best):
                self.best = value
                retry(lambda: self.client.log_metric(self.parent_run_id, "best_value", value, step=number))

    def close_open_runs(self, status: str, reason: str) -> None:
        """The tune process is gone or interrupted: nothing it started may stay RUNNING."""
        from mlflow.entities import RunTag

        self.flush()
        for run_id in list(self.runs.values()):
            retry(lambda run_id=run_id: self.client.log_batch(
                run_id, tags=[RunTag("state", "FAIL"), RunTag("fail_reason", reason)]))
            retry(lambda run_id=run_id: self.client.set_terminated(run_id, status=status))
        self.runs.clear()

    def close_orphaned_runs(self, study: optuna.Study) -> None:
        """Child runs still RUNNING whose trial is over (their process was killed) end as their trial did."""
        import optuna

        states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
        running = retry(lambda: self.client.search_runs(
            [self.experiment_id], filter_string=self._filter("trial") + " and attributes.status = 'RUNNING'",
            max_results=10000))
        for run in running:
            number = int(run.data.tags.get("optuna.trial_number", -1))
            state = states.get(number)
            if number in self.runs or state == optuna.trial.TrialState.RUNNING:
                continue
            name = state.name if state is not None else "FAIL"
            retry(lambda run=run, name=name: self.client.set_tag(run.info.run_id, "state", name))
            retry(lambda run=run, name=name: self.client.set_terminated(run.info.run_id,
                                                                        status=STATUS.get(name, "FAILED")))

    def study_ended(self, study: optuna.Study, status: str, owns_parent: bool = True) -> None:
        """Close orphans; the owner of the parent run also records the best configuration and plots, and closes
        the parent run."""
        self.close_orphaned_runs(study)
        if not owns_parent:
            return
        try:
            self._log_best(study)
            self._log_plots(study)
        finally:
            retry(lambda: self.client.set_terminated(self.parent_run_id, status=status))

    def _log_best(self, study: optuna.Study) -> None:
        from mlflow.entities import RunTag

        from lrsearch.errors import LrsearchError
        from lrsearch.study.results import best_trial, plain_params
        from lrsearch.tracking.export import render, trial_config

        try:
            best = best_trial(study)
        except LrsearchError:
            return
        config = trial_config(study, best)
        retry(lambda: self.client.log_metric(self.parent_run_id, "best_value", best.value, step=best.number))
        tags = {f"best.{k}": str(v) for k, v in plain_params(best).items()}
        tags["best.trial"] = str(best.number)
        retry(lambda: self.client.log_batch(self.parent_run_id, tags=[RunTag(k, v) for k, v in tags.items()]))
        retry(lambda: self.client.log_text(self.parent_run_id, render(config, "json"), "best_optimizer.json"))
        retry(lambda: self.client.log_text(self.parent_run_id, render(config, "yaml"), "best_optimizer.yaml"))

    def _log_plots(self, study: optuna.Study) -> None:
        from lrsearch.tracking.plots import study_figures

        with tempfile.TemporaryDirectory() as tmp:
            for path in study_figures(study, tmp).values():
                retry(lambda path=path: self.client.log_artifact(self.parent_run_id, path, "plots"))


def _text(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


def log_lr_find(uri: str, spec: StudySpec, results: dict[str, Any], ranges: dict[str, tuple[float, float]],
                settings: dict[str, Any]) -> str:
    """Record an LR range test as one MLflow run: curves as metrics (step = index), suggestions, plot as artifact."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    from lrsearch.tracking.plots import plot_lr_find

    client = MlflowClient(uri)
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
        path = plot_lr_find(results, os.path.join(tmp, "lr_find.png"))
        retry(lambda: client.log_artifact(run_id, str(path)))
    retry(lambda: client.set_terminated(run_id, status="FINISHED"))
    return run_id
