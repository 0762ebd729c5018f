"""Who watches a study run: the :class:`TuneObserver` protocol (the progress display and MLflow tracking are
observers), and :class:`Observers`, which tells each of them every event and keeps their failures out of training.

The storage is the truth: an observer hears of a trial's end only after Optuna was told, and an observer that
raises is reported in one warning line and dropped, so a broken display or a dead MLflow process never stops a
study, loses a trained result or makes a trial train again.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from lrsearch.errors import first_line

if TYPE_CHECKING:
    import optuna

    from lrsearch.config.spec import StudySpec
    from lrsearch.training.trial import EpochMetrics, TrialOutcome

__all__ = ["Observers", "TuneObserver", "observing", "warn"]
logger = logging.getLogger(__name__)


class TuneObserver(Protocol):
    """Sees a study's progress; the progress display and MLflow tracking are observers. Rank 0 only."""

    def study_started(self, study: optuna.Study, spec: StudySpec) -> None: ...

    def study_finished(self, study: optuna.Study, spec: StudySpec) -> None:
        """The study's budget was complete before this run started: no trial will run, nothing else is called."""
        ...

    def trial_started(self, trial: optuna.Trial, config: dict[str, Any]) -> None: ...

    def epoch_ended(self, trial: optuna.Trial, epoch: EpochMetrics) -> None: ...

    def trial_finishing(self, trial: optuna.Trial) -> None:
        """The trial's last moment to take user attributes (its MLflow run id): Optuna is told its result next.
        Optional; keep it short (the next trial waits)."""
        ...

    def trial_ended(
        self, trial: optuna.Trial, state: str, outcome: TrialOutcome | None, error: BaseException | None
    ) -> None:
        """Called once Optuna holds the trial's result (``trial`` is finished: its attributes are read-only)."""
        ...

    def study_ended(self, study: optuna.Study, error: BaseException | None = None) -> None:
        """``error`` is what ended the run early (KeyboardInterrupt for Ctrl-C), None when it ran to its end."""
        ...


def warn(message: str) -> None:
    """One warning line on stderr (where the progress display draws, which prints it above its bars)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


class Observers:
    """Every event, to every observer, in order; an observer that raises an ``Exception`` is named in one warning
    line and hears nothing more. Ctrl-C and SIGTERM (``KeyboardInterrupt``) still go through."""

    def __init__(self, observers: Iterable[TuneObserver] = (), on_failure: Callable[[str], None] = warn) -> None:
        self.observers = list(observers)
        self.on_failure = on_failure

    def __bool__(self) -> bool:
        return bool(self.observers)

    def __iter__(self) -> Any:
        return iter(list(self.observers))

    def _tell(self, event: str, *args: Any) -> None:
        for observer in list(self.observers):
            call = getattr(observer, event, None)
            if call is None:  # an optional event this observer does not take
                continue
            try:
                call(*args)
            except Exception as exc:
                self.observers.remove(observer)
                logger.debug("observer %r failed in %s", observer, event, exc_info=exc)
                self.on_failure(f"{type(observer).__name__} stopped ({first_line(exc)}); the study goes on without "
                                "it")

    def study_started(self, study: optuna.Study, spec: StudySpec) -> None:
        self._tell("study_started", study, spec)

    def study_finished(self, study: optuna.Study, spec: StudySpec) -> None:
        self._tell("study_finished", study, spec)

    def trial_started(self, trial: optuna.Trial, config: dict[str, Any]) -> None:
        self._tell("trial_started", trial, config)

    def epoch_ended(self, trial: optuna.Trial, epoch: EpochMetrics) -> None:
        self._tell("epoch_ended", trial, epoch)

    def trial_finishing(self, trial: optuna.Trial) -> None:
        self._tell("trial_finishing", trial)

    def trial_ended(self, trial: optuna.Trial, state: str, outcome: TrialOutcome | None,
                    error: BaseException | None) -> None:
        self._tell("trial_ended", trial, state, outcome, error)

    def study_ended(self, study: optuna.Study, error: BaseException | None = None) -> None:
        self._tell("study_ended", study, error)


def observing(observers: Observers | Iterable[TuneObserver] | None) -> Observers:
    """``observers`` as :class:`Observers` (a plain list is wrapped; an ``Observers`` is kept, so a failure seen
    in one part of a run silences the observer in every other part)."""
    return observers if isinstance(observers, Observers) else Observers(observers or ())
