"""The default search: the prior sampler, the halving pruner with its epoch budget, and a default study end to end
(portfolio first, reproducible, resumable)."""

from __future__ import annotations

import math
import statistics

import optuna
import pytest
from conftest import tiny_study
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from lrsearch.config.priors import RelativeSpace
from lrsearch.config.search_space import SearchSpace
from lrsearch.config.spec import spec_from_dict
from lrsearch.study.prior_search import PORTFOLIO_ATTR, HalvingPruner, PriorSampler
from lrsearch.study.storage import create_study
from lrsearch.study.tune import tune

SPACE = SearchSpace(("sgd", "momentum", "adam", "adamw"), ("constant", "cosine"), param_names="relative")


def _objective(trial: optuna.Trial) -> float:
    """A smooth function of the relative coordinates, best near adam at lr_scale 0.5."""
    config = RelativeSpace(SPACE).suggest(trial)
    return abs(trial.params["lr_scale"] - 0.5) + (0.0 if config["optimizer"] == "adam" else 0.3)


def _study(seed: int, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    study = optuna.create_study(sampler=sampler or PriorSampler(RelativeSpace(SPACE).distributions(), seed=seed))
    study.optimize(_objective, n_trials=40)
    return study


def test_the_sampler_stays_in_bounds_is_reproducible_and_follows_the_best_trials() -> None:
    first, again, other = _study(0), _study(0), _study(1)
    assert [t.params for t in first.trials] == [t.params for t in again.trials]
    assert [t.params for t in first.trials] != [t.params for t in other.trials]
    distributions = RelativeSpace(SPACE).distributions()
    for trial in first.trials:
        for name, value in trial.params.items():
            assert distributions[name]._contains(distributions[name].to_internal_repr(value)), (name, value)
    uniform = _study(0, optuna.samplers.RandomSampler(seed=0))
    late = statistics.median(t.value for t in first.trials[20:])
    assert late < statistics.median(t.value for t in uniform.trials[20:]) / 1.5  # it searches near good trials
    best = [_study(seed).best_value for seed in range(6)]  # over seeds: one seed's best is luck either way
    uniform_best = [_study(seed, optuna.samplers.RandomSampler(seed=seed)).best_value for seed in range(6)]
    assert statistics.median(best) < statistics.median(uniform_best)


def test_workers_with_one_seed_draw_different_trials_and_a_resume_draws_what_a_whole_run_would() -> None:
    distributions = RelativeSpace(SPACE).distributions()
    whole = _study(0)
    # Two workers, each with its own sampler of seed 0, ask at once on one study: different trial numbers, so
    # different draws (one random stream per worker would give both the same configuration).
    shared = optuna.create_study()
    shared.add_trials(whole.trials[:10])
    first = shared.ask()
    second = shared.ask()
    draws = [PriorSampler(distributions, seed=0).sample_relative(shared, trial._cached_frozen_trial, distributions)
             for trial in (first, second)]
    assert draws[0] != draws[1]
    # A fresh sampler (a resumed tune) draws trial 10 exactly as the uninterrupted study did.
    resumed = optuna.create_study(sampler=PriorSampler(distributions, seed=0))
    resumed.add_trials(whole.trials[:10])
    resumed.optimize(_objective, n_trials=1)
    assert resumed.trials[10].params == whole.trials[10].params


def _trial(number: int, values: list[float], state: TrialState = TrialState.COMPLETE,
           portfolio: str | None = None) -> optuna.trial.FrozenTrial:
    trial = create_trial(state=state, value=values[-1] if state == TrialState.COMPLETE else None,
                         params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                         intermediate_values=dict(enumerate(values)),
                         user_attrs={PORTFOLIO_ATTR: portfolio} if portfolio else {})
    trial.number = number
    return trial


def _pruned(pruner: HalvingPruner, history: list[optuna.trial.FrozenTrial], candidate: list[float],
            portfolio: str | None = None) -> bool:
    study = optuna.create_study(pruner=pruner)
    frozen = _trial(len(history), candidate, TrialState.RUNNING, portfolio)
    study.add_trials([*history, frozen])  # the trial being judged is in the study, as when it trains
    return pruner.prune(study, frozen)


def test_halving_judges_at_a_quarter_and_a_half_keeping_the_best_third() -> None:
    pruner = HalvingPruner(epochs=8, n_trials=100)
    assert pruner.rungs == [2, 4]
    # Values 1.0 .. 1.4, the first two pruned after 4 epochs, the others after 2: with the candidate's epochs and
    # those it trains if it goes on, 22 epochs, within half of 6 full trials.
    full = [_trial(n, [1.0 + n / 10] * (4 if n < 2 else 2), TrialState.PRUNED) for n in range(5)]
    assert not _pruned(pruner, full, [1.05, 1.05])  # second of 6: in the best third
    assert _pruned(pruner, full, [1.25, 1.25])  # fourth of 6: out
    assert not _pruned(pruner, full, [9.0])  # not at a rung: never asked
    assert not _pruned(pruner, full, [9.0, 9.0, 9.0])
    assert _pruned(pruner, full, [9.0, 9.0, 9.0, 9.0])  # the second rung
    assert not _pruned(pruner, full, [9.0, 9.0], portfolio="adam")  # the textbook runs are never stopped
    assert _pruned(pruner, full, [math.nan, math.nan])


def test_halving_keeps_only_a_rungs_best_while_the_searched_trials_are_over_their_epoch_share() -> None:
    # 10 trials in the budget, 2 of them the portfolio: the 8 others share 0.5 * 10 - 2 = 3 full trials' epochs.
    pruner = HalvingPruner(epochs=8, n_trials=10)
    portfolio = [_trial(0, [1.0 + 0.1 * e for e in range(8)][::-1], portfolio="adam"),
                 _trial(1, [2.0] * 8, portfolio="adamw")]
    # 5 trials of 2 epochs, the candidate's 2 and the 6 it trains if it goes on, and the first rung of the 2 still to
    # come: 22, within the study's 24 searched epochs
    thrifty = [_trial(2 + n, [1.5, 1.3 + n / 10], TrialState.PRUNED) for n in range(5)]
    assert not _pruned(pruner, portfolio + thrifty, [1.5, 1.35])  # second of 6: the best third goes on
    # In a study of 20 trials (8 * 18 * 8 / 18 = 64 searched epochs): 3 trials of 8 epochs and the candidate's 8 are
    # over the share of 4 searched trials so far (14.2), not over the study's once the 14 to come get 2 each (60).
    spendthrift = [_trial(2 + n, [1.5, 1.2 + n / 10] + [1.0] * 6) for n in range(3)]
    roomy = HalvingPruner(epochs=8, n_trials=20)
    assert _pruned(roomy, portfolio + spendthrift, [1.5, 1.25])  # second best, but only the best goes on now
    assert not _pruned(roomy, portfolio + spendthrift, [1.5, 1.1])  # the best at the rung still goes on
    # With 10 trials the same 24 epochs are the study's whole share: not even the best goes on (the study keeps to
    # half its full epochs, confirmations and portfolio included).
    assert _pruned(pruner, portfolio + spendthrift, [1.5, 1.1])
    # Given the epochs of all 10 full trials (epoch_budget 1), the best third goes on again.
    assert not _pruned(HalvingPruner(epochs=8, n_trials=10, epoch_budget=1.0), portfolio + spendthrift, [1.5, 1.1])


def test_the_study_files_settings_set_the_samplers_shares_and_the_pruners_rungs_and_epochs() -> None:
    spec = spec_from_dict(tiny_study(sampler={"name": "prior", "prior_share": 0.0, "uniform_share": 1.0},
                                     pruner={"name": "halving", "epoch_budget": 1.0, "first_rung": 1 / 3},
                                     budget={"n_trials": 10, "epochs": 12}))
    study = create_study(spec, optuna.storages.InMemoryStorage(), "settings", queue=False)
    assert (study.sampler.prior_share, study.sampler.uniform_share) == (0.0, 1.0)
    assert (study.pruner.rungs, study.pruner.epoch_budget) == ([4, 8], 1.0)
    # Uniform draws cover the lr range where the default's stay near the best trials.
    lr = {name: [t.params["lr_scale"] for t in _study(0, PriorSampler(RelativeSpace(SPACE).distributions(), seed=0,
                                                                      **shares)).trials[1:]]
          for name, shares in {"uniform": {"prior_share": 0.0, "uniform_share": 1.0}, "default": {}}.items()}
    low, high = RelativeSpace(SPACE).lr_scale
    assert min(lr["uniform"]) < low + (high - low) / 10 and max(lr["uniform"]) > high - (high - low) / 10
    spread = {name: statistics.fmean(abs(x - 0.5) for x in values) for name, values in lr.items()}
    assert spread["uniform"] > 2 * spread["default"]


def test_a_default_study_runs_the_portfolio_first_and_prunes_only_at_its_rungs(storage: str) -> None:
    spec = tiny_study(budget={"n_trials": 10, "epochs": 8},
                      search={"optimizers": ["sgd", "momentum", "adam", "adamw"], "schedules": ["constant", "cosine"]})
    del spec["pruner"]
    spec["sampler"] = {"seed": 3}  # the study file names no sampler and no pruner: lrsearch's default search
    study = tune(spec, storage=storage)
    trials = study.trials
    labels = [t.user_attrs.get(PORTFOLIO_ATTR) for t in trials]
    assert labels[:3] == ["adam", "adamw", "momentum-cosine"] and labels[3:] == [None] * 7
    assert trials[0].user_attrs["config"]["params"] == {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                                                        "weight_decay": 0.0}
    assert {"lr_scale", "optimizer", "schedule"} <= set(trials[5].params)  # the relative space
    assert all(t.state == TrialState.COMPLETE for t in trials[:3])
    pruned = [t for t in trials if t.state == TrialState.PRUNED and not t.user_attrs["diverged"]]
    assert pruned and all(len(t.intermediate_values) in (2, 4) for t in pruned)
    assert sum(len(t.intermediate_values) for t in trials) <= 0.6 * 10 * 8
    again = tune(spec, storage=storage.replace("studies.db", "again.db"))
    assert [t.params for t in again.trials] == [t.params for t in trials]  # the same seed, the same search
    spec["budget"]["n_trials"] = 12
    resumed = tune(spec, storage=storage)
    assert len(resumed.trials) == 12 and [t.params for t in resumed.trials[:10]] == [t.params for t in trials]
    assert sum(t.user_attrs.get(PORTFOLIO_ATTR) is not None for t in resumed.trials) == 3  # queued once


def test_the_default_search_refuses_names_it_cannot_sample(storage: str) -> None:
    from lrsearch.errors import SpecError

    with pytest.raises(SpecError, match="prior sampler searches the space shared by every optimizer"):
        tune(tiny_study(sampler={"name": "prior"}, search={"param_names": "per_optimizer"}), storage=storage)
    with pytest.raises(SpecError, match="grid sampler runs its own grid"):
        tune(tiny_study(sampler={"name": "grid"}, search={"portfolio": "textbook"}), storage=storage)
