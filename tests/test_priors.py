"""The textbook portfolio and the relative space the default search samples."""

from __future__ import annotations

import math
import random

import pytest

from lrsearch.config.presets import PRESETS, Range
from lrsearch.config.priors import TEXTBOOK, RelativeSpace, coordinates, fit_to_space, portfolio
from lrsearch.config.search_space import SearchSpace

DEFAULT = SearchSpace(("sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw"), ("constant", "cosine"),
                      param_names="relative")


def test_the_portfolio_is_the_textbook_runs_the_study_can_make() -> None:
    assert list(portfolio(DEFAULT)) == ["adam", "adamw", "momentum-cosine", "nesterov-cosine"]
    assert portfolio(DEFAULT)["adam"] == TEXTBOOK["adam"]
    assert portfolio(DEFAULT)["momentum-cosine"]["params"] == {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}
    narrow = SearchSpace(("momentum", "adam"), ("constant",),
                         {"momentum": {"lr": Range(1e-4, 1e-2)}, "adam": {"beta2": 0.99}})
    fitted = portfolio(narrow)
    assert list(fitted) == ["adam", "momentum-cosine"]
    assert fitted["momentum-cosine"]["params"]["lr"] == 1e-2  # clipped to the study's range
    assert fitted["momentum-cosine"]["schedule"] == {"name": "constant"}  # a schedule the study does not search
    assert fitted["adam"]["params"]["beta2"] == 0.99  # the study's fixed value wins


def test_a_study_of_other_optimizers_starts_from_their_textbook_lr() -> None:
    space = SearchSpace(("rmsprop", "adagrad", "radam", "nadam"), ("cosine",))
    assert list(portfolio(space)) == ["rmsprop-textbook", "adagrad-textbook", "radam-textbook"]
    assert [c["params"]["lr"] for c in portfolio(space).values()] == [1e-3, 1e-2, 1e-3]
    assert fit_to_space(TEXTBOOK["adam"], space) is None


def test_every_relative_point_decodes_inside_the_study_and_round_trips() -> None:
    space = SearchSpace(("sgd", "momentum", "rmsprop", "adam", "adamw", "adagrad", "nadam"), ("constant",),
                        {"adam": {"lr": Range(1e-4, 1e-2), "eps": 1e-8}, "sgd": {"weight_decay": 0.0}},
                        param_names="relative")
    relative = RelativeSpace(space)
    rng = random.Random(0)
    for _ in range(300):
        values = {name: rng.choice(d.choices) if hasattr(d, "choices") else
                  (10 ** rng.uniform(math.log10(d.low), math.log10(d.high)) if d.log else rng.uniform(d.low, d.high))
                  for name, d in relative.distributions().items()}
        config = relative.decode(values)
        for hp, spec in space.hyperparameters(config["optimizer"]).items():
            value = config["params"][hp]
            if isinstance(spec, Range):
                assert value == 0.0 or spec.low <= value <= spec.high, (hp, value)
            else:
                assert value == spec  # fixed by the study
        assert set(config["params"]) == set(PRESETS[config["optimizer"]].hyperparameters)
        again = relative.decode(relative.encode(config))
        assert again["optimizer"] == config["optimizer"]
        assert again["params"] == pytest.approx(config["params"], rel=1e-9)


def test_the_textbook_lr_is_the_middle_of_the_scale_for_every_optimizer() -> None:
    relative = RelativeSpace(DEFAULT)
    for name in DEFAULT.optimizers:
        values = relative.encode(fit_to_space({"optimizer": name, "params": {"lr": PRESETS[name].textbook_lr},
                                               "schedule": {"name": "constant"}}, DEFAULT))
        assert values["lr_scale"] == 0.0
        assert relative.decode(values)["params"]["lr"] == PRESETS[name].textbook_lr
    lrs = [relative.decode({**relative.encode(TEXTBOOK["adam"]), "lr_scale": s})["params"]["lr"]
           for s in (-3, -1, 0, 1, 2)]
    assert lrs == sorted(lrs) and lrs[0] >= 1e-5 and lrs[-1] <= 1e-1  # one scale, monotone, inside adam's range


def test_coordinates_follow_the_study_names() -> None:
    assert isinstance(coordinates(DEFAULT), RelativeSpace)
    per_optimizer = SearchSpace(("sgd",))
    assert coordinates(per_optimizer) is per_optimizer
    assert per_optimizer.encode({"optimizer": "sgd", "params": {"lr": 0.1, "weight_decay": 1e-4},
                                 "schedule": {"name": "constant"}}) == \
        {"optimizer": "sgd", "sgd.lr": 0.1, "sgd.weight_decay_on": True, "sgd.weight_decay": 1e-4,
         "schedule": "constant"}
