"""The default search (``sampler: prior``, ``pruner: halving``): start from what the literature knows, then search
around the best trials so far, and stop slow trials only where their partial runs say something.

- **The portfolio** (:func:`enqueue_portfolio`): the study's textbook configurations
  (:func:`lrsearch.config.priors.portfolio`) run first, in full, never pruned. In a deterministic search they make
  the best of the first trials at least as good as the best textbook run.
- :class:`PriorSampler` samples the relative space (:class:`lrsearch.config.priors.RelativeSpace`): each trial is
  drawn from a prior centred on the textbook values, or as a mutation of one of the best finished trials (lr moved
  by half a decade at a time, optimizer or schedule switched now and then), in the spirit of PriorBand's prior /
  incumbent mix (Mallik et al. 2023) and piBO's prior (Hvarfner et al. 2022).
- :class:`HalvingPruner` is one bracket of successive halving (ASHA; Li et al. 2018) with real minimum resources:
  at 1/4 and 1/2 of the epochs a trial goes on only if it is in the best third of the trials that reached that
  point. The searched trials share what the portfolio leaves of half the epochs of ``n_trials`` full trials: while
  they have spent more than their share, only the best trial at a rung goes on. So the whole search costs about
  half the epochs of full trials, whatever the sampler proposes.

The settings (:mod:`lrsearch.config.algorithms`: the prior and uniform shares, the rungs, the share that goes on, the
epoch budget) are round numbers fixed before measuring; a study file can change each. ``bench/search/`` measures
the whole against random search, Optuna out of the box, the textbook defaults and Syne Tune's ASHA on seven tasks,
two of them held out while the default was chosen, and each setting changed alone (its ablation arms). At 10 seeds
none did better than the defaults across the tasks on half the epochs: the clearest gain, a uniform share
(PriorBand's third source) on diabetes-mlp (t = 2.1), came with losses on quadratic and char-lm (t = -1.8, -1.6).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from lrsearch.config.algorithms import EPOCH_BUDGET, FIRST_RUNG, KEEP, PRIOR_SHARE, UNIFORM_SHARE
from lrsearch.config.priors import coordinates, portfolio
from lrsearch.study.confirmation import CONFIRMS_ATTR

if TYPE_CHECKING:
    from lrsearch.config.search_space import SearchSpace
    from lrsearch.config.spec import StudySpec

PORTFOLIO_ATTR = "portfolio"
"""User attribute of a portfolio trial: the label of its textbook configuration (``adam``, ``momentum-cosine``)."""


WARM_ATTR = "warm_start"
"""Study user attribute: the warm-start configurations by label (``warm:<source>``), resolved by the first ``tune``
(:mod:`lrsearch.study.warm_start`) so every rerun and worker runs the same ones."""


def fixed_configs(study: optuna.Study, spec: StudySpec, space: SearchSpace | None = None) -> dict[str, dict[str, Any]]:
    """The configurations a study runs first, in order, by label: its warm-start configurations, then the textbook
    portfolio fitted to its space (``space``: the study's, narrowed by an LR range test) where the study runs it
    (``search.portfolio``; with ``auto`` a warm start replaces it)."""
    warm = dict(study.user_attrs.get(WARM_ATTR, {}))
    textbook = spec.runs_portfolio and (not warm or spec.search.portfolio == "textbook")
    return {**warm, **(portfolio(space or spec.space()) if textbook else {})}


def enqueue_portfolio(study: optuna.Study, spec: StudySpec) -> None:
    """Queue the study's fixed configurations (:func:`fixed_configs`) that no trial has run or holds yet, as far as
    the budget (``n_trials``) has room for them: run again, it queues nothing new; a study whose budget was raised
    gets the rest. A trial that was queued but never trained (the budget was complete first) does not count as run.
    """
    from lrsearch.study.states import NEVER_TRAINED

    trials = study.get_trials(deepcopy=False)
    held = {t.user_attrs.get(PORTFOLIO_ATTR) for t in trials if t.user_attrs.get("fail_reason") not in NEVER_TRAINED}
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    room = spec.budget.n_trials - sum(t.state in live for t in trials)
    missing = [(label, config) for label, config in fixed_configs(study, spec).items() if label not in held]
    for label, config in missing[:max(0, room)]:
        study.enqueue_trial(coordinates(spec.space()).encode(config), user_attrs={PORTFOLIO_ATTR: label})


def is_portfolio(trial: FrozenTrial) -> bool:
    return PORTFOLIO_ATTR in trial.user_attrs


def trains_in_full(trial: FrozenTrial) -> bool:
    """A trial the pruner never stops: a fixed configuration (textbook, warm start) or a confirmation."""
    return PORTFOLIO_ATTR in trial.user_attrs or CONFIRMS_ATTR in trial.user_attrs


class PriorSampler(optuna.samplers.BaseSampler):
    """The prior or a mutation of one of the best trials, over the relative space (see the module docstring).

    Args:
        distributions: :meth:`RelativeSpace.distributions` of the study's space.
        seed: For reproducible studies.
        centres: Where the prior is centred instead of the textbook: relative coordinates of known good
            configurations (a warm start's), one drawn per prior trial.
        prior_share: How often a trial comes from the prior.
        uniform_share: How often a trial is drawn uniformly over the whole space; the rest mutate a good trial.
    """

    ELITE = 0.25
    """A parent is drawn from the best quarter of the finished trials (at least the best one)."""
    P_SWITCH = 0.25
    """How often a mutation switches the optimizer, and the schedule."""
    PRIOR = {"lr_scale": (0.0, 1.0), "one_minus_momentum": (-1.0, 0.5), "one_minus_beta2": (-3.0, 0.5),
             "eps": (-8.0, 1.0), "wd_scale": (0.0, 1.0), "aux_lr_scale": (0.0, 1.0),
             "aux_one_minus_beta1": (-1.0, 0.5), "warmup": (math.log10(0.05), 0.5)}
    """Centre and spread of each continuous parameter's prior, in decades (log10) where it is log-scaled: the
    textbook lr, momentum and beta1 0.9, beta2 0.999, eps 1e-8, the centre of the decay range."""
    STEP = {"lr_scale": 0.5, "one_minus_momentum": 0.3, "one_minus_beta2": 0.3, "eps": 0.5, "wd_scale": 0.5,
            "aux_lr_scale": 0.5, "aux_one_minus_beta1": 0.3, "warmup": 0.3}
    """Spread of a mutation, in the same units; lr always moves, the others half the time."""

    def __init__(self, distributions: dict[str, Any], seed: int | None = None,
                 centres: list[dict[str, Any]] | None = None, prior_share: float = PRIOR_SHARE,
                 uniform_share: float = UNIFORM_SHARE) -> None:
        self.distributions = distributions
        self.seed = seed
        self.centres = list(centres or [])
        self.prior_share, self.uniform_share = prior_share, uniform_share

    def reseed_rng(self) -> None:
        self.seed = None

    def _rng(self, trial: FrozenTrial, *stream: int) -> np.random.Generator:
        """The trial's own random stream: from the seed and the trial's number, so that workers sharing a study (and
        a seed) draw different trials, and a resumed study draws what an uninterrupted one would have."""
        return np.random.default_rng(None if self.seed is None else (self.seed, trial.number, *stream))

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return dict(self.distributions)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        finished = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.value is not None and math.isfinite(t.value) and CONFIRMS_ATTR not in t.user_attrs]
        rng = self._rng(trial)
        if not finished:
            return self._prior(rng)
        source = rng.random()
        if source < self.prior_share:
            return self._prior(rng)
        if source < self.prior_share + self.uniform_share:
            return {name: _draw(rng, dist, None) for name, dist in self.distributions.items()}
        finished.sort(key=lambda t: t.value, reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)
        elite = finished[: max(1, math.ceil(self.ELITE * len(finished)))]
        parent = elite[rng.integers(len(elite))]
        return self._mutate(rng, {name: parent.params.get(name) for name in self.distributions})

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, name: str,
                           distribution: optuna.distributions.BaseDistribution) -> Any:
        # Only parameters outside the relative space get here (warmup_cosine's warmup fraction): uniform.
        return _draw(self._rng(trial, 1), distribution, None)

    def _prior(self, rng: np.random.Generator) -> dict[str, Any]:
        if not self.centres:
            return {name: _draw(rng, dist, self.PRIOR.get(name)) for name, dist in self.distributions.items()}
        # Around a known good configuration: its values with the prior's spread; its optimizer and schedule
        # kept, but for a switch now and then, as a mutation would.
        centre = self.centres[rng.integers(len(self.centres))]
        prior = {name: (_log(dist, centre[name]), self.PRIOR[name][1]) for name, dist in self.distributions.items()
                 if name in self.PRIOR and centre.get(name) is not None}
        drawn = {name: _draw(rng, dist, prior.get(name)) for name, dist in self.distributions.items()}
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution) and centre.get(name) in dist.choices \
                    and rng.random() >= self.P_SWITCH:
                drawn[name] = centre[name]
        return drawn

    def _mutate(self, rng: np.random.Generator, parent: dict[str, Any]) -> dict[str, Any]:
        child = dict(parent)
        for name, dist in self.distributions.items():
            if child[name] is None:
                child[name] = _draw(rng, dist, self.PRIOR.get(name))
            elif isinstance(dist, CategoricalDistribution):
                if len(dist.choices) > 1 and rng.random() < self.P_SWITCH:
                    others = [c for c in dist.choices if c != child[name]]
                    child[name] = others[rng.integers(len(others))]
            elif name == "lr_scale" or rng.random() < 0.5:
                centre = math.log10(child[name]) if dist.log else child[name]
                child[name] = _draw(rng, dist, (centre, self.STEP[name]))
        return child


def _log(dist: Any, value: float) -> float:
    """``value`` on the scale a prior spread is counted in: decades for a log-scaled distribution."""
    return math.log10(value) if dist.log else value


def _draw(rng: np.random.Generator, dist: Any, normal: tuple[float, float] | None) -> Any:
    """A value of ``dist``: uniform (on the log scale where it is logged), or normal around ``normal`` =
    (centre, spread) on that scale, clipped to the range."""
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[rng.integers(len(dist.choices))]
    assert isinstance(dist, FloatDistribution)
    low, high = (math.log10(dist.low), math.log10(dist.high)) if dist.log else (dist.low, dist.high)
    x = rng.uniform(low, high) if normal is None else rng.normal(*normal)
    x = min(max(x, low), high)
    return float(10.0 ** x) if dist.log else float(x)


class HalvingPruner(optuna.pruners.BasePruner):
    """One bracket of successive halving with an epoch budget (see the module docstring).

    Args:
        epochs: The trials' full epochs.
        n_trials: The study's budget of trials.
        keep: The share of the trials at a rung that goes on (at least the best one).
        epoch_budget: The share of ``n_trials`` full trials' epochs the study aims to spend.
        reserved: Full trials still to come that no searched trial may take the epochs of (the confirmations).
        first_rung: The first rung as a share of the epochs (at least 1 epoch); the second is at twice it.
    """

    def __init__(self, epochs: int, n_trials: int, keep: float = KEEP, epoch_budget: float = EPOCH_BUDGET,
                 reserved: int = 0, first_rung: float = FIRST_RUNG) -> None:
        first = max(1, round(epochs * first_rung))
        self.rungs = sorted({first, 2 * first} & set(range(1, epochs)))
        """Epochs after which a trial is judged (1-based; epoch k is reported as step k - 1)."""
        self.epochs, self.n_trials, self.keep, self.epoch_budget = epochs, n_trials, keep, epoch_budget
        self.reserved = reserved

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step + 1 not in self.rungs or trains_in_full(trial):
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        trials = study.get_trials(deepcopy=False)
        others = [t.intermediate_values[step] for t in trials
                  if t.number != trial.number and step in t.intermediate_values]
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        ranked = sorted([value, *(v for v in others if not math.isnan(v))], reverse=maximize)
        spend = self._spend(trials, self.epochs - step - 1)
        if spend == "spent":
            return True  # going on would take the study over its epochs, the first rungs still owed included
        kept = 1 if spend == "over" else max(1, int(len(ranked) * self.keep))
        cutoff = ranked[kept - 1]
        return value < cutoff if maximize else value > cutoff

    def _spend(self, trials: list[FrozenTrial], committed: int) -> str:
        """Where the searched trials (neither fixed nor confirmations) stand against their share of the epochs, if
        the trial at this rung goes on (``committed``: the epochs it would still train): ``"under"``; ``"over"``
        the share of the searched trials so far (then only a rung's best goes on); or ``"spent"``: over the whole
        study's share once every searched trial still to come is given its first rung (then none goes on, so
        the study ends within ``epoch_budget``). Fixed trials and confirmations, those still to come included,
        train in full, outside the share."""
        live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        searched = [t for t in trials if t.state in live and not trains_in_full(t)]
        confirming = sum(CONFIRMS_ATTR in t.user_attrs for t in trials)
        full = sum(PORTFOLIO_ATTR in t.user_attrs for t in trials) + max(confirming, self.reserved)
        share = (self.epoch_budget * self.n_trials - full) / max(1, self.n_trials - full)
        spent = sum(len(t.intermediate_values) for t in searched) + committed
        to_come = max(0, self.n_trials - full - len(searched))
        if spent + to_come * self.rungs[0] > share * self.epochs * (self.n_trials - full):
            return "spent"
        return "over" if spent > share * self.epochs * len(searched) else "under"
