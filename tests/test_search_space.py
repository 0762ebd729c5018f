from __future__ import annotations

import optuna
import pytest

from lrsearch.config.presets import PRESETS, Range, torch_kwargs
from lrsearch.config.search_space import SearchSpace, log_grid


def _sample(space: SearchSpace, seed: int = 0, n: int = 30) -> list[tuple[optuna.trial.FrozenTrial, dict]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        config = space.suggest(trial)
        study.tell(trial, 0.0)
        out.append((study.trials[-1], config))
    return out


def test_only_the_chosen_optimizers_parameters_are_suggested() -> None:
    for frozen, config in _sample(SearchSpace(("adam", "sgd", "rmsprop"))):
        chosen = config["optimizer"]
        for name in frozen.params:
            assert name in ("optimizer", "schedule") or name.startswith(chosen + "."), (chosen, frozen.params)


def test_sampled_values_stay_inside_the_preset_ranges() -> None:
    for _, config in _sample(SearchSpace(tuple(PRESETS)), n=80):
        preset = PRESETS[config["optimizer"]]
        for name, value in config["params"].items():
            spec = preset.hyperparameters[name]
            if name == "weight_decay" and value == 0.0:
                continue
            assert spec.low <= value <= spec.high, (config, name)


def test_betas_are_sampled_as_one_minus_on_a_log_scale() -> None:
    frozen, _ = next(iter(_sample(SearchSpace(("adam",)), n=1)))
    dist = frozen.distributions["adam.one_minus_beta2"]
    assert dist.log and (dist.low, dist.high) == pytest.approx((1e-4, 0.1))


def test_fixed_values_are_used_as_given() -> None:
    space = SearchSpace(("adam",), overrides={"adam": {"beta2": 0.95, "lr": Range(1e-3, 1e-3)}})
    for _, config in _sample(space, n=5):
        assert config["params"]["beta2"] == 0.95
        assert config["params"]["lr"] == 1e-3


def test_shared_names_give_one_lr_parameter() -> None:
    names = {n for frozen, _ in _sample(SearchSpace(("adam", "sgd"), param_names="shared")) for n in frozen.params}
    assert "lr" in names and not any(n.endswith(".lr") for n in names)


def test_torch_kwargs_pair_the_betas_and_add_nesterov() -> None:
    assert torch_kwargs("adamw", {"lr": 1e-3, "beta1": 0.8, "beta2": 0.99}) == {"lr": 1e-3, "betas": [0.8, 0.99]}
    assert torch_kwargs("nesterov", {"lr": 0.1, "momentum": 0.9}) == {"lr": 0.1, "momentum": 0.9, "nesterov": True}


def test_log_grid_spans_the_interval() -> None:
    assert log_grid(1e-4, 1.0, 5) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
