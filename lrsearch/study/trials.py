"""One trial's record in the study: its configuration and settings when it starts, its epochs while it trains
(reported to Optuna, which may prune it), and its outcome when it ends, told to Optuna and to every observer."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import optuna

    from lrsearch.config.spec import StudySpec
    from lrsearch.study.algorithms import PruningPoints
    from lrsearch.training.trial import EpochMetrics, TrialOutcome, TrialSettings

logger = logging.getLogger(__name__)


class TuneObserver(Protocol):
    """Sees a study's progress; the progress display and MLflow tracking are observers. Rank 0 only."""

    def study_started(self, study: optuna.Study, spec: StudySpec) -> None: ...

    def study_finished(self, study: optuna.Study, spec: StudySpec) -> None:
        """The study's budget was complete before this run started: no trial will run, nothing else is called."""
        ...

    def trial_started(self, trial: optuna.Trial, config: dict[str, Any]) -> None: ...

    def epoch_ended(self, trial: optuna.Trial, epoch: EpochMetrics) -> None: ...

    def trial_ended(
        self, trial: optuna.Trial, state: str, outcome: TrialOutcome | None, error: BaseException | None
    ) -> None: ...

    def study_ended(self, study: optuna.Study, error: BaseException | None = None) -> None:
        """``error`` is what ended the run early (KeyboardInterrupt for Ctrl-C), None when it ran to its end."""
        ...


def start_trial(study: optuna.Study, trial: optuna.Trial, spec: StudySpec, settings: TrialSettings,
                training: dict[str, Any], observers: list[TuneObserver]) -> dict[str, Any]:
    """Sample the trial's configuration and record it with the training settings; returns the configuration."""
    space = spec.search.space().with_lr_ranges(study.user_attrs.get("lr_ranges", {}))
    if spec.sampler.name == "grid":
        config = space.suggest_grid(trial, spec.search.grid_points)
    else:
        config = space.suggest(trial)
    trial.set_user_attr("config", config)
    trial.set_user_attr("training", {"batch_size": settings.batch_size, "epochs": settings.epochs,
                                     "world_size": training["world_size"], "seed": settings.seed,
                                     "device": training["device"], "threads": training["threads"]})
    if "batch" in training:
        trial.set_user_attr("batch", training["batch"])
    for observer in observers:
        observer.trial_started(trial, config)
    return config


def report_epoch(trial: optuna.Trial, epoch: EpochMetrics, metric: str, observers: list[TuneObserver],
                 points: PruningPoints) -> bool:
    """Report one epoch to Optuna and the observers; True when the pruner stops the trial here."""
    trial.report(epoch.metrics[metric], epoch.epoch)
    for observer in observers:
        observer.epoch_ended(trial, epoch)
    return points.due(trial.number, epoch.epoch) and trial.should_prune()


def finish_trial(study: optuna.Study, trial: optuna.Trial, metric: str, observers: list[TuneObserver],
                 outcome: TrialOutcome | None = None, error: BaseException | None = None) -> str:
    """Record how the trial ended and tell Optuna; returns its state.

    A trial that raised ``error`` is FAIL with its ``fail_reason`` (``interrupted`` for Ctrl-C or SIGTERM). Else it
    keeps its implementation, ``diverged`` and final metrics as user attributes and is COMPLETE with ``metric``,
    or PRUNED at the epoch it stopped; a diverged trial is reported the worst value at that epoch, so the sampler
    learns the region is bad.
    """
    import optuna

    states = optuna.trial.TrialState
    if error is not None or outcome is None:
        error = error or RuntimeError("the trial ended without an outcome")
        reason = "interrupted" if isinstance(error, KeyboardInterrupt) else f"{type(error).__name__}: {error}"
        logger.debug("trial %d failed: %s", trial.number, reason, exc_info=error)
        trial.set_user_attr("fail_reason", reason)
        for observer in observers:
            observer.trial_ended(trial, "FAIL", None, error)
        study.tell(trial, state=states.FAIL)
        return "FAIL"
    trial.set_user_attr("optimizer_impl", outcome.implementation)
    trial.set_user_attr("diverged", outcome.diverged)
    for name, value in outcome.final.items():
        trial.set_user_attr(name, value)
    if outcome.diverged:
        minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
        trial.report(math.inf if minimize else -math.inf, outcome.stopped_epoch)
    state = "PRUNED" if outcome.stopped else "COMPLETE"
    for observer in observers:
        observer.trial_ended(trial, state, outcome, None)
    if outcome.stopped:
        study.tell(trial, state=states.PRUNED)
    else:
        study.tell(trial, outcome.final[metric])
    return state
