"""One trial's record in the study: its configuration and settings when it starts, its epochs while it trains
(reported to Optuna, which may prune it), and its outcome when it ends, told to Optuna first and then to every
observer (the storage is the truth; MLflow and the terminal follow it)."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from lrsearch.training.memory import OUT_OF_MEMORY, is_out_of_memory

if TYPE_CHECKING:
    import optuna

    from lrsearch.config.spec import ObjectiveSpec, StudySpec
    from lrsearch.study.algorithms import PruningPoints
    from lrsearch.study.observers import Observers
    from lrsearch.training.trial import EpochMetrics, TrialOutcome, TrialSettings

__all__ = ["EpochReporter", "fail_reason", "finish_trial", "start_trial"]
logger = logging.getLogger(__name__)


def start_trial(study: optuna.Study, trial: optuna.Trial, spec: StudySpec, settings: TrialSettings,
                training: dict[str, Any], observers: Observers) -> dict[str, Any]:
    """Sample the trial's configuration and record it with the training settings; returns the configuration.

    A portfolio trial records its sampler parameters too, but trains its textbook configuration exactly as the
    study can run it (no round trip through the sampler's coordinates); a confirmation trial trains the
    configuration of the trial it confirms, with its own seed (``settings.seed``).
    """
    from lrsearch.config.priors import coordinates
    from lrsearch.study.confirmation import CONFIRMS_ATTR
    from lrsearch.study.prior_search import PORTFOLIO_ATTR, fixed_configs

    space = spec.space().with_lr_ranges(study.user_attrs.get("lr_ranges", {}))
    if spec.sampler.name == "grid":
        config = space.suggest_grid(trial, spec.search.grid_points)
    else:
        config = coordinates(space).suggest(trial)
    label = trial.user_attrs.get(PORTFOLIO_ATTR)
    if label is not None:
        config = fixed_configs(study, spec, space).get(label, config)
    confirmed = trial.user_attrs.get(CONFIRMS_ATTR)
    if confirmed is not None:
        config = study.get_trials(deepcopy=False)[confirmed].user_attrs["config"]
    trial.set_user_attr("config", config)
    trial.set_user_attr("training", {"batch_size": settings.batch_size, "epochs": settings.epochs,
                                     "world_size": training["world_size"], "seed": settings.seed,
                                     "device": training["device"], "threads": training["threads"],
                                     "precision": settings.precision,
                                     **({"data": training["data"]} if "data" in training else {})})
    if "batch" in training:
        trial.set_user_attr("batch", training["batch"])
    observers.trial_started(trial, config)
    return config


class EpochReporter:
    """A trial's ``on_epoch`` hook: reports each epoch's objective so far to Optuna (the epoch's metric, or with
    ``objective.at: best`` the best of the trial's epochs so far, what the trial would score if it stopped there),
    passes the epoch to the observers, and answers whether the pruner stops the trial here."""

    def __init__(self, trial: optuna.Trial, objective: ObjectiveSpec, observers: Observers,
                 points: PruningPoints) -> None:
        self.trial, self.objective, self.observers, self.points = trial, objective, observers, points
        self.best: float | None = None

    def __call__(self, epoch: EpochMetrics) -> bool:
        value = epoch.metrics[self.objective.metric]
        if self.objective.at == "best" and self.best is not None:
            value = min(value, self.best) if self.objective.direction == "minimize" else max(value, self.best)
        self.best = value
        self.trial.report(value, epoch.epoch)
        self.observers.epoch_ended(self.trial, epoch)
        return self.points.due(self.trial.number, epoch.epoch) and self.trial.should_prune()


def fail_reason(error: BaseException) -> str:
    """A failed trial's ``fail_reason``: ``interrupted`` (Ctrl-C, SIGTERM), ``out of memory``, else the error."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    return OUT_OF_MEMORY if is_out_of_memory(error) else f"{type(error).__name__}: {error}"


def finish_trial(study: optuna.Study, trial: optuna.Trial, objective: ObjectiveSpec, observers: Observers,
                 outcome: TrialOutcome | None = None, error: BaseException | None = None,
                 peak_memory_mb: float | None = None) -> str:
    """Record how the trial ended, tell Optuna, then the observers; returns its state.

    A trial that raised ``error`` is FAIL with its ``fail_reason`` (:func:`fail_reason`). Else it keeps its
    implementation, ``diverged`` and final metrics as user attributes and is COMPLETE with its objective value
    (``outcome.value``, from the epoch ``objective_epoch``), or PRUNED at the epoch it stopped; a diverged trial is
    reported the worst value at that epoch, so the sampler learns the region is bad. Either way it keeps
    ``peak_memory_mb`` when measured.

    Optuna comes first: whatever an observer does (a dead MLflow process, a broken display), the result is in the
    storage. A trial that another process failed meanwhile (its heartbeat went stale, and its parameters were
    queued for a retry) keeps that state: the retry trains it.
    """
    import optuna

    states = optuna.trial.TrialState
    if peak_memory_mb is not None:
        trial.set_user_attr("peak_memory_mb", round(peak_memory_mb, 1))
    if error is not None or outcome is None:
        error = error or RuntimeError("the trial ended without an outcome")
        reason = fail_reason(error)
        logger.debug("trial %d failed: %s", trial.number, reason, exc_info=error)
        trial.set_user_attr("fail_reason", reason)
        state = "FAIL"
    else:
        trial.set_user_attr("optimizer_impl", outcome.implementation)
        trial.set_user_attr("diverged", outcome.diverged)
        if outcome.skipped_steps:
            trial.set_user_attr("skipped_steps", outcome.skipped_steps)
        if outcome.param_split:
            trial.set_user_attr("param_split", outcome.param_split)
        if outcome.steps_per_epoch:  # what an export needs to rebuild a warm-up share or a schedule
            trial.set_user_attr("training", {**trial.user_attrs.get("training", {}),
                                             "steps_per_epoch": outcome.steps_per_epoch})
        for name, value in outcome.final.items():
            trial.set_user_attr(name, value)
        if outcome.diverged:
            minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
            trial.report(math.inf if minimize else -math.inf, outcome.stopped_epoch)
        elif not outcome.stopped:
            outcome.value, outcome.value_epoch = outcome.objective(objective.metric, objective.direction,
                                                                   objective.at)
            trial.set_user_attr("objective_epoch", outcome.value_epoch)
        state = "PRUNED" if outcome.stopped else "COMPLETE"
    if not isinstance(error, KeyboardInterrupt):  # Ctrl-C, SIGTERM: end now, the mirror finds the run by number
        observers.trial_finishing(trial)
    try:
        if state == "COMPLETE":
            study.tell(trial, outcome.value)
        else:
            study.tell(trial, state=states[state])
    except optuna.exceptions.UpdateFinishedTrialError:
        logger.debug("trial %d was failed by another process before its end was told", trial.number)
        return "FAIL"
    observers.trial_ended(trial, state, outcome if error is None else None, error)
    return state
