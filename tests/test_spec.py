from __future__ import annotations

from pathlib import Path

import pytest
from conftest import STUDIES, tiny_study, write_study

from lrsearch.config.spec import load_spec, spec_from_dict
from lrsearch.errors import SpecError


@pytest.mark.parametrize("path", sorted(STUDIES.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_study_validates_and_says_how_to_run_it(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# lrsearch ") and path.name in first_line


def test_a_bad_study_reports_all_its_problems_at_once() -> None:
    bad = tiny_study(
        task="mnist",
        budget={"n_trials": 0, "epochs": -1},
        search={"optimizers": ["adam", "lamb"], "adam": {"lr": {"low": -1.0, "high": 1.0}, "beta2": 1.5}},
        sampler={"name": "annealing"},
        colour="blue",
    )
    with pytest.raises(SpecError) as info:
        spec_from_dict(bad, "bad.yaml")
    problems = info.value.problems
    expected = [
        "task: unknown task 'mnist'",
        "budget.n_trials:",
        "budget.epochs:",
        "search.optimizers.1: 'lamb' is not allowed",
        "search.adam.lr: low must be > 0 (got -1.0)",
        "search.adam.beta2: must be in (0, 1) (got 1.5)",
        "sampler.name: 'annealing' is not allowed",
        "colour: unknown key (allowed: name, task,",
    ]
    for fragment in expected:
        assert any(p.startswith(fragment) for p in problems), (fragment, problems)
    assert len(problems) == len(expected)
    assert str(info.value).startswith("8 problems in bad.yaml: ")


def test_problem_names_the_allowed_values() -> None:
    with pytest.raises(SpecError) as info:
        spec_from_dict(tiny_study(search={"optimizers": ["adam"], "adam": {"momentum": 0.9}}))
    assert info.value.problems == [
        "search.adam.momentum: unknown hyperparameter for adam (allowed: lr, beta1, beta2, eps, weight_decay)"
    ]


def test_invalid_yaml_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ntask: digits-mlp\nbudget: {n_trials: 3\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "invalid YAML: line 4" in str(info.value)


def test_missing_file_is_one_problem(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="study file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_overrides_narrow_or_fix_a_preset(tmp_path: Path) -> None:
    spec = load_spec(write_study(tmp_path, tiny_study(
        search={"optimizers": ["adam"], "adam": {"lr": {"low": 1e-4, "high": 1e-2}, "beta2": 0.999}})))
    hyper = spec.search.space().hyperparameters("adam")
    assert (hyper["lr"].low, hyper["lr"].high) == (1e-4, 1e-2)
    assert hyper["beta2"] == 0.999
    assert hyper["beta1"].scale == "log1m"


@pytest.mark.parametrize(("train", "search", "problem"), [
    ({"nproc_per_trial": 2}, {}, "train.nproc_per_trial: task.function trains in your own loop"),
    ({"batch_trials": 2}, {}, "train.batch_trials: 2 trials at once: a training function"),
    ({}, {"lr_range": "auto"}, "search.lr_range: 'auto' runs the LR range test on a Task"),
])
def test_settings_function_mode_cannot_honour_are_study_file_problems(train: dict, search: dict,
                                                                      problem: str) -> None:
    with pytest.raises(SpecError) as error:
        spec_from_dict(tiny_study(task={"function": "user_loop:train"}, train=train, search=search))
    assert len(error.value.problems) == 1 and error.value.problems[0].startswith(problem)


def test_the_default_samplers_and_pruners_settings_are_checked_and_belong_to_them() -> None:
    spec = spec_from_dict(tiny_study(sampler={"name": "prior", "uniform_share": 0.25},
                                     pruner={"name": "halving", "epoch_budget": 1.0, "first_rung": 1 / 3}))
    assert spec.sampler.options() == {"uniform_share": 0.25}
    assert spec.pruner.options() == {"epoch_budget": 1.0, "first_rung": 1 / 3}
    assert spec_from_dict(tiny_study()).pruner.options() == {}  # none given: the defaults
    bad = tiny_study(sampler={"name": "tpe", "prior_share": 0.5}, pruner={"name": "median", "keep": 0.5})
    with pytest.raises(SpecError) as info:
        spec_from_dict(bad)
    assert info.value.problems == [
        "sampler: prior_share: a setting of the prior sampler only (sampler.name is 'tpe')",
        "pruner: keep: a setting of the halving pruner only (pruner.name is 'median')"]
    for section, settings, problem in [
            ("sampler", {"prior_share": 0.9, "uniform_share": 0.2}, "sampler: prior_share + uniform_share must be"),
            ("sampler", {"uniform_share": 0.8}, "sampler: prior_share + uniform_share must be <= 1 (got 0.25 + 0.8)"),
            ("pruner", {"epoch_budget": 0}, "pruner.epoch_budget: input should be greater than 0"),
            ("pruner", {"first_rung": 0.7}, "pruner.first_rung: input should be less than or equal to 0.5"),
            ("pruner", {"keep": 1}, "pruner.keep: input should be less than 1")]:
        with pytest.raises(SpecError) as info:
            name = {"sampler": "prior", "pruner": "halving"}[section]
            spec_from_dict(tiny_study(**{section: {"name": name, **settings}}))
        assert info.value.problems[0].startswith(problem), info.value.problems
