"""The search algorithms a study file names: the default search (:mod:`lrsearch.study.prior_search`), Optuna's
samplers and pruners, and when to ask the pruner."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import optuna  # the study layer runs Optuna; the CLI imports it only inside commands, so --help stays instant

from lrsearch.errors import UsageError
from lrsearch.study.prior_search import HalvingPruner, PriorSampler

if TYPE_CHECKING:
    from lrsearch.config.search_space import SearchSpace


def make_sampler(name: str, seed: int | None, space: SearchSpace, grid_points: int = 5,
                 options: dict[str, Any] | None = None) -> optuna.samplers.BaseSampler:
    """The sampler a study file names, for the study's resolved ``space``; ``options``: the study file's settings of
    the prior sampler (``SamplerSpec.options``). TPE is multivariate and grouped, so it models each optimizer's own
    hyperparameters jointly, and uses the constant liar so parallel workers do not all sample the same point."""
    if name == "prior":
        from lrsearch.config.priors import RelativeSpace

        return PriorSampler(RelativeSpace(space).distributions(), seed=seed, **(options or {}))
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "cmaes":
        # CMA-ES cannot model categorical choices; it falls back to TPE for the optimizer and schedule.
        return optuna.samplers.CmaEsSampler(seed=seed, independent_sampler=optuna.samplers.TPESampler(seed=seed))
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return BudgetedGridSampler(space.grid(grid_points), seed=seed)
    raise UsageError(f"sampler {name!r} is not known")


class BudgetedGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its ``study.stop()`` once every point has run: that works only inside
    ``study.optimize``, and lrsearch's study loop (ask and tell) ends at the budget, as ``tune`` promises. A budget
    larger than the grid re-runs random points of it, as Optuna's sampler does."""

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: optuna.trial.TrialState,
                    values: Sequence[float] | None) -> None:
        pass


MEDIAN_STARTUP_TRIALS = 5
MIN_RESOURCE = 1
"""Epochs before the first successive-halving rung (Optuna's min_resource)."""
REDUCTION_FACTOR = 3


def median_warmup(epochs: int) -> int:
    return min(2, epochs - 1)


_MADE: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
"""The pruners :func:`make_pruner` built, and the names they were built from: their schedules are known."""


def make_pruner(name: str, epochs: int, n_trials: int = 1, reserved: int = 0,
                options: dict[str, Any] | None = None) -> optuna.pruners.BasePruner:
    """The pruner a study file names; resources are epochs (lrsearch reports epoch k as step k - 1). ``n_trials``
    is the study's budget, which the halving pruner keeps to a share of its full epochs (half unless ``options``,
    the study file's settings of the halving pruner, say otherwise), ``reserved`` of them full trials still to
    come (confirmations)."""
    pruner = _build_pruner(name, epochs, n_trials, reserved, options or {})
    _MADE[pruner] = name
    return pruner


def _build_pruner(name: str, epochs: int, n_trials: int, reserved: int,
                  options: dict[str, Any]) -> optuna.pruners.BasePruner:
    if name == "halving":
        return HalvingPruner(epochs, n_trials, reserved=reserved, **options)
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=median_warmup(epochs))
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=MIN_RESOURCE, reduction_factor=REDUCTION_FACTOR)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=MIN_RESOURCE, max_resource=epochs,
                                              reduction_factor=REDUCTION_FACTOR)
    if name == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)
    raise UsageError(f"pruner {name!r} is not known")


class PruningPoints:
    """When to ask the pruner of :func:`make_pruner` whether to stop a trial: only at the steps where it can.

    ``trial.should_prune()`` reads the trial and its competitors back from the storage, about 2.5 ms on SQLite,
    against a digits epoch of 7 ms. The decisions are the same as asking every step: successive halving and
    Hyperband compare a trial only when its step first reaches a rung (``MIN_RESOURCE * REDUCTION_FACTOR ** k``;
    asked earlier they return False and record nothing), the median pruner only after its warm-up, and no pruner
    never. The points are kept per trial, so a function-mode task that reports epochs 0, 2, 4 is still asked at
    4 when it passes the rung at 3. A pruner that :func:`make_pruner` did not build (one set on the study by hand)
    is asked every epoch.
    """

    def __init__(self, pruner: optuna.pruners.BasePruner, epochs: int) -> None:
        self.name, self.pruner = _MADE.get(pruner, "unknown"), pruner
        self.epochs = epochs
        self._last_step: dict[int, int] = {}

    def due(self, trial_number: int, step: int) -> bool:
        """Whether to ask the pruner after ``trial_number`` reported ``step``."""
        last = self._last_step.get(trial_number, -1)
        self._last_step[trial_number] = step
        if self.name == "none":
            return False
        if isinstance(self.pruner, HalvingPruner):
            return step + 1 in self.pruner.rungs
        if self.name == "median":
            return step >= median_warmup(self.epochs)
        if self.name in ("sha", "hyperband"):
            rung = MIN_RESOURCE
            while rung <= step:
                if rung > last:
                    return True
                rung *= REDUCTION_FACTOR
            return False
        return True
