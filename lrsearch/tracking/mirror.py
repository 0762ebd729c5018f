"""MLflow as a mirror of the Optuna study: :func:`reconcile` makes a study's MLflow record match its storage,
whatever killed the processes that were writing it, and writes only what differs (reconciling twice writes nothing).

The storage is the truth. Each ``tune`` records trials live (:mod:`lrsearch.tracking.recorder`); a kill of the whole
process group, between Optuna's ``tell`` and the tracking process's write or in the middle of the study's last
writes, or the death of the tracking process alone, leaves MLflow behind. Reconciling then brings it level:

- every started trial has exactly one child run, created if missing, whose status follows the trial (COMPLETE →
  FINISHED, PRUNED → KILLED, FAIL → FAILED); a trial still RUNNING in the storage has a live heartbeat (stale ones
  are failed first) and its run is left to the process training it;
- each run carries the trial's params, final metrics and result tags, from what Optuna keeps of the trial;
- the parent run's ``best_value`` has one point per trial that improved on every earlier-numbered trial, at that
  trial's number; with ``parent``, its ``best.*`` tags, best-configuration artifacts, plots and status match too.

It runs at every ``tune``'s start (in the tracking process, while training starts), at the end of a study (the
process owning the parent run), on an already finished study, and as ``lrsearch sync``. Trials that never trained
(:data:`~lrsearch.study.budget.NEVER_TRAINED`: refused a slot of the budget, or queued when it was complete) have no
run. Every metric point of a trial carries the trial's start time, in the live record and here alike: when a
reconciliation and a live record write the same point at once, MLflow's SQL store keeps one row.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrsearch.errors import LrsearchError, TrackingError, UsageError, first_line
from lrsearch.study.heartbeat import fail_stale_trials
from lrsearch.study.states import NEVER_TRAINED
from lrsearch.tracking.recorder import N_TRIALS_TAG, Recorder, log_in_batches, retry
from lrsearch.tracking.runs import (
    PARENT_ATTR,
    PROCESS_STOPPED,
    RUN_ATTR,
    STATUS,
    TRIAL_ROLE,
    final_metrics,
    point_time,
    role_tags,
    trial_params,
    trial_result_tags,
)

if TYPE_CHECKING:
    import optuna
    from mlflow.entities import Run

MIRROR_TAG = "lrsearch.mirrored"
"""Tag of the parent run: which state of the study its best configuration and plots show (finished trials, last
finish, best trial), so they are redrawn only when the study changed."""


@dataclass
class MirrorReport:
    """What one reconciliation found and changed."""

    trials: int = 0
    """Finished trials mirrored."""
    running: int = 0
    """Trials running with a live heartbeat, left to their process."""
    created: int = 0
    repaired: int = 0
    removed: int = 0
    """Duplicate child runs deleted."""
    parent: str = ""
    """The parent run's status afterwards (empty when the parent was not reconciled)."""
    parent_changed: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.created or self.repaired or self.removed or self.parent_changed)


def reconcile(recorder: Recorder, study: optuna.Study, storage: Any, *, n_trials: int | None = None,
              parent: bool = True, status: str | None = None) -> MirrorReport:
    """Make the study's MLflow record (its experiment, through ``recorder``, whose parent run is open) match
    ``study`` on ``storage``.

    Args:
        n_trials: The budget the parent's status is judged by (None: the parent run's :data:`N_TRIALS_TAG`).
        parent: Also the parent's best configuration, plots and status (the process that owns the parent run).
        status: The parent's status to set (a ``tune`` ending); None: FINISHED once the budget is complete, else
            FAILED if it was left RUNNING with no trial alive, else as it is.
    """
    import optuna

    fail_stale_trials(study, storage)  # a trial of a dead process is failed (and retried), never left RUNNING
    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    runs = _runs_by_number(recorder)
    report = MirrorReport(running=sum(t.state == states.RUNNING for t in trials))
    mirrored = [t for t in trials if t.state.is_finished() and t.user_attrs.get("fail_reason") not in NEVER_TRAINED]
    for trial in mirrored:
        _reconcile_trial(recorder, study, trial, runs.pop(trial.number, []), report)
    live = {t.number for t in trials if not t.state.is_finished()}
    for number, orphans in runs.items():  # runs of no started trial of this study: none may stay RUNNING
        for run in orphans:
            if number not in live and run.info.status == "RUNNING":
                _write(recorder, run.info.run_id, tags={"state": "FAIL", "fail_reason": PROCESS_STOPPED})
                retry(lambda run=run: recorder.client.set_terminated(run.info.run_id, status="FAILED"))
                report.repaired += 1
    report.trials = len(mirrored)
    report.parent_changed = log_best_values(recorder, study, trials)
    if parent:
        _reconcile_parent(recorder, study, trials, n_trials, status, report)
    return report


def _runs_by_number(recorder: Recorder) -> dict[int, list[Run]]:
    runs: dict[int, list[Run]] = {}
    for run in recorder.search(TRIAL_ROLE):
        runs.setdefault(int(run.data.tags.get("optuna.trial_number", -1)), []).append(run)
    return runs


def _ms(moment: Any) -> int | None:
    return int(moment.timestamp() * 1000) if moment is not None else None



def _reconcile_trial(recorder: Recorder, study: optuna.Study, trial: optuna.trial.FrozenTrial, found: list[Run],
                     report: MirrorReport) -> None:
    run = _keep_one(recorder, trial, found, report)
    created = run is None
    if run is None:
        run = _create_trial_run(recorder, trial)
    config = trial.user_attrs.get("config")
    tags = {**recorder.trial_tags(trial.number, config["optimizer"] if config else ""), **role_tags(trial.user_attrs),
            **trial_result_tags(trial)}
    if trial.state.name == "FAIL" and "fail_reason" not in tags and "fail_reason" not in run.data.tags:
        tags["fail_reason"] = PROCESS_STOPPED  # failed as stale: its process never said why
    params = trial_params(config, trial.user_attrs.get("training", {}), trial.user_attrs.get("param_split")) \
        if config else {}
    history = _missing_metrics(recorder, study, trial, run)
    missing_tags = {k: v for k, v in tags.items() if run.data.tags.get(k) != v}
    missing_params = {k: v for k, v in params.items() if k not in run.data.params}
    status = STATUS[trial.state.name]
    if not (history or missing_tags or missing_params or run.info.status != status):
        return
    # Data first, the status last: a reconciliation cut short leaves the run RUNNING, so the next one looks again.
    _write(recorder, run.info.run_id, history, missing_params, missing_tags, point_time(trial))
    if run.info.status != status:
        retry(lambda: recorder.client.set_terminated(run.info.run_id, status=status,
                                                     end_time=_ms(trial.datetime_complete)))
    report.created += created
    report.repaired += not created


def _missing_metrics(recorder: Recorder, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                     run: Run) -> dict[tuple[str, int], float]:
    """``{(key, step): value}`` the run lacks: each final metric whose latest value is missing or another, at the
    trial's last epoch; and where the live record lost epochs of the objective, those Optuna kept."""
    last_epoch = max(trial.intermediate_values, default=0)
    logged = run.data.metrics
    missing = {(k, last_epoch): v for k, v in final_metrics(trial).items()
               if k not in logged or not math.isclose(logged[k], v, rel_tol=1e-12)}
    objective = study.user_attrs.get("spec", {}).get("objective", {}).get("metric", "val_loss")
    if any(k == objective for k, _ in missing) or objective not in logged:
        steps = {m.step for m in retry(lambda: recorder.client.get_metric_history(run.info.run_id, objective))}
        missing.update({(objective, step): v for step, v in trial.intermediate_values.items()
                        if step not in steps and math.isfinite(v)})
    return missing


def _keep_one(recorder: Recorder, trial: optuna.trial.FrozenTrial, found: list[Run],
              report: MirrorReport) -> Run | None:
    """The trial's run: the one Optuna names, else the oldest; any other is a duplicate and is deleted."""
    if not found:
        return None
    named = [r for r in found if r.info.run_id == trial.user_attrs.get(RUN_ATTR)]
    keep = named[0] if named else min(found, key=lambda r: (r.info.start_time, r.info.run_id))
    for run in found:
        if run is not keep:
            retry(lambda run=run: recorder.client.delete_run(run.info.run_id))
            report.removed += 1
    return keep


def _create_trial_run(recorder: Recorder, trial: optuna.trial.FrozenTrial) -> Run:
    """A missing run, created as the live record would have, at the trial's start; when another process created
    one at the same moment, both keep the same one (the oldest, then the smallest id)."""
    config = trial.user_attrs.get("config") or {}
    tags = recorder.trial_tags(trial.number, config.get("optimizer", ""))
    retry(lambda: recorder.client.create_run(recorder.experiment_id, start_time=_ms(trial.datetime_start),
                                             run_name=f"trial-{trial.number}", tags=tags))
    same = recorder.search(TRIAL_ROLE, f" and tags.`optuna.trial_number` = '{trial.number}'")
    keep = min(same, key=lambda r: (r.info.start_time, r.info.run_id))
    for run in same:
        if run is not keep:
            retry(lambda run=run: recorder.client.delete_run(run.info.run_id))
    return keep


def _write(recorder: Recorder, run_id: str, history: dict[tuple[str, int], float] | None = None,
           params: dict[str, str] | None = None, tags: dict[str, str] | None = None,
           timestamp: int | None = None) -> None:
    """Metrics (``{(key, step): value}``), params and tags in as few writes as MLflow's batch limits allow.
    Metrics carry the trial's :func:`point_time`, as the live record's do, so a value written twice is stored once."""
    from mlflow.entities import Metric, Param, RunTag

    metrics = [Metric(k, v, timestamp or 0, step) for (k, step), v in (history or {}).items()]
    params_ = [Param(k, v) for k, v in (params or {}).items()]
    tags_ = [RunTag(k, v) for k, v in (tags or {}).items()]
    if metrics or params_ or tags_:
        log_in_batches(recorder.client, run_id, metrics, params_, tags_)


def best_value_points(trials: list[optuna.trial.FrozenTrial], minimize: bool,
                      pending: dict[int, float] | None = None) -> dict[int, tuple[float, int | None]]:
    """``{trial number: (value, start time in ms)}`` of the trials that improved on every trial numbered before
    them: the optimization history against the trial number. Only as far as every earlier trial has finished, so a
    point once written stays right; ``pending`` holds values of complete trials Optuna was not told of yet.

    The time is the trial's start, which every process reads alike: when the tracking processes of several
    workers write the same point at once, MLflow's SQL store keeps one row (its key is metric, value, time, step).
    """
    import optuna

    pending = pending or {}
    points: dict[int, tuple[float, int | None]] = {}
    best: float | None = None
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.number in pending:
            value = pending[trial.number]
        elif trial.state == optuna.trial.TrialState.COMPLETE and not trial.user_attrs.get("diverged"):
            value = trial.value
        elif trial.state.is_finished():
            continue
        else:
            break  # a trial still running may yet improve: nothing after it is settled
        if value is None or not math.isfinite(value) or (best is not None and (value >= best if minimize else
                                                                                value <= best)):
            continue
        best = value
        points[trial.number] = (value, _ms(trial.datetime_start))
    return points


def log_best_values(recorder: Recorder, study: optuna.Study, trials: list[optuna.trial.FrozenTrial] | None = None,
                    pending: dict[int, float] | None = None) -> bool:
    """Log the parent's ``best_value`` points that :func:`best_value_points` has and MLflow lacks; True if any."""
    import time

    import optuna
    from mlflow.entities import Metric

    trials = study.get_trials(deepcopy=False) if trials is None else trials
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    points = best_value_points(trials, minimize, pending)
    if not points:
        return False
    logged = {m.step for m in retry(lambda: recorder.client.get_metric_history(recorder.parent_run_id,
                                                                                "best_value"))}
    missing = [Metric("best_value", value, started or int(time.time() * 1000), number)
               for number, (value, started) in points.items() if number not in logged]
    if missing:
        retry(lambda: recorder.client.log_batch(recorder.parent_run_id, metrics=missing))
    return bool(missing)


def _reconcile_parent(recorder: Recorder, study: optuna.Study, trials: list[optuna.trial.FrozenTrial],
                      n_trials: int | None, status: str | None, report: MirrorReport) -> None:
    run = retry(lambda: recorder.client.get_run(recorder.parent_run_id))
    finished = [t for t in trials if t.state.is_finished()]
    fingerprint = f"{len(finished)} finished, last {max((t.datetime_complete for t in finished), default=None)}"
    if finished and run.data.tags.get(MIRROR_TAG) != fingerprint:
        _log_best(recorder, study, run)
        _log_plots(recorder, study)
        retry(lambda: recorder.client.set_tag(recorder.parent_run_id, MIRROR_TAG, fingerprint))
        report.parent_changed = True
    if status is None:
        budget = n_trials or int(run.data.tags.get(N_TRIALS_TAG, 0)) or \
            study.user_attrs.get("spec", {}).get("budget", {}).get("n_trials")
        status = _parent_status(run.info.status, trials, budget)
    if status != run.info.status:
        end = max((t.datetime_complete for t in finished), default=None) if status != "RUNNING" else None
        retry(lambda: recorder.client.set_terminated(recorder.parent_run_id, status=status, end_time=_ms(end)))
        report.parent_changed = True
    report.parent = status


def _parent_status(current: str, trials: list[optuna.trial.FrozenTrial], n_trials: int | None) -> str:
    """FINISHED once the budget is complete; while a trial runs somewhere, as a live ``tune`` set it; a parent left
    RUNNING by a ``tune`` that died, FAILED."""
    import optuna

    states = optuna.trial.TrialState
    if n_trials and sum(t.state in (states.COMPLETE, states.PRUNED) for t in trials) >= n_trials:
        return "FINISHED"
    if any(t.state == states.RUNNING for t in trials):
        return current
    return "FAILED" if current == "RUNNING" else current


def _log_best(recorder: Recorder, study: optuna.Study, run: Run) -> None:
    from mlflow.entities import RunTag

    from lrsearch.errors import LrsearchError
    from lrsearch.study.results import best_trial, plain_params
    from lrsearch.tracking.export import render, trial_config

    try:
        best = best_trial(study)
    except LrsearchError:
        return
    config = trial_config(study, best)
    tags = {f"best.{k}": str(v) for k, v in plain_params(best).items()}
    tags["best.trial"] = str(best.number)
    retry(lambda: recorder.client.log_text(recorder.parent_run_id, render(config, "json"), "best_optimizer.json"))
    retry(lambda: recorder.client.log_text(recorder.parent_run_id, render(config, "yaml"), "best_optimizer.yaml"))
    changed = [RunTag(k, v) for k, v in tags.items() if run.data.tags.get(k) != v]
    if changed:
        retry(lambda: recorder.client.log_batch(recorder.parent_run_id, tags=changed))


def _log_plots(recorder: Recorder, study: optuna.Study) -> None:
    from lrsearch.tracking.plots import study_figures

    with tempfile.TemporaryDirectory() as tmp:
        for path in study_figures(study, tmp).values():
            retry(lambda path=path: recorder.client.log_artifact(recorder.parent_run_id, path, "plots"))


def sync_study(name: str, storage_url: str, uri: str, *, experiment: str | None = None,
               n_trials: int | None = None, parent: bool = True) -> MirrorReport:
    """``lrsearch sync``: reconcile study ``name`` (in ``storage_url``) with MLflow at ``uri``, in the experiment
    its parent run is in, else ``experiment``, else the study file's ``mlflow.experiment``, else the study name.

    Raises:
        StudyNotFoundError: no such study (or storage).
        UsageError: the study was not created by lrsearch.
        TrackingError: MLflow at ``uri`` could not be read or written.
    """
    from lrsearch.study.storage import mask_password

    try:
        return _sync_study(name, storage_url, uri, experiment, n_trials, parent)
    except LrsearchError:
        raise
    except Exception as exc:  # MLflow's errors differ by store: report any in one line
        raise TrackingError(f"cannot record to MLflow at {mask_password(uri)}: {first_line(exc)}") from None


def _sync_study(name: str, storage_url: str, uri: str, experiment: str | None, n_trials: int | None,
                parent: bool) -> MirrorReport:
    from lrsearch.study.storage import load_study, mask_password, open_storage

    storage = open_storage(storage_url, create=False)
    study = load_study(name, storage_url, storage)
    spec = study.user_attrs.get("spec")
    if spec is None:
        raise UsageError(f"study {name!r} in {mask_password(storage_url)} was not created by lrsearch: it has no "
                         "study file to mirror")
    parent_id = study.user_attrs.get(PARENT_ATTR)
    experiment = _parent_experiment(uri, parent_id) or spec.get("mlflow", {}).get("experiment") or experiment or name
    recorder = Recorder(uri, experiment, name)
    run_id = recorder.open_parent(parent_id, spec, mask_password(storage_url), None, reopen=False)
    if run_id != parent_id:
        study.set_user_attr(PARENT_ATTR, run_id)
    return reconcile(recorder, study, storage, n_trials=n_trials, parent=parent)


def _parent_experiment(uri: str, run_id: str | None) -> str | None:
    """The name of the experiment the study's parent run is in at ``uri``, if it is there."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if run_id is None:
        return None
    client = MlflowClient(uri)
    try:
        run = retry(lambda: client.get_run(run_id))
        return retry(lambda: client.get_experiment(run.info.experiment_id)).name
    except MlflowException:
        return None
