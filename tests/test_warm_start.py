"""Start from what you already know: an earlier study or an exported configuration runs first, and the search
centres on it."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import tiny_study, write_study

from lrsearch.cli import cli
from lrsearch.study.prior_search import PriorSampler
from lrsearch.study.results import study_answer
from lrsearch.study.storage import load_study

DEFAULT = {"sampler": {"name": "prior", "seed": 0}, "pruner": {"name": "halving"}}


def _tune(path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["tune", str(path), "--no-progress", "--no-mlflow", *args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def source(tmp_path):
    """A finished study whose answer is what a warm start takes."""
    path = write_study(tmp_path, tiny_study(name="source", budget={"n_trials": 4, "epochs": 1}, **DEFAULT),
                       "source.yaml")
    _tune(path)
    return study_answer(load_study("source", "lrsearch.journal")).config


@pytest.mark.parametrize("how", ["study", "file"])
def test_a_warm_start_runs_the_known_configuration_first_instead_of_the_textbook(tmp_path, source, how) -> None:
    if how == "file":
        assert CliRunner().invoke(cli, ["export", "source", "-o", "best.json"]).exit_code == 0
        entry = "best.json"
    else:
        entry = "source"
    target = write_study(tmp_path, tiny_study(name="target", budget={"n_trials": 4, "epochs": 1},
                                              train={"seed": 7}, **DEFAULT), "target.yaml")
    _tune(target, "--warm-start", entry)
    study = load_study("target", "lrsearch.journal")
    first = study.trials[0]
    assert first.user_attrs["portfolio"] == f"warm:{entry}" and first.user_attrs["config"] == source
    assert [t.user_attrs.get("portfolio") for t in study.trials[1:]] == [None] * 3  # no textbook trial after it
    assert study.user_attrs["warm_start"] == {f"warm:{entry}": source}
    sampler = load_study("target", "lrsearch.journal").sampler  # a plain load: no centres
    assert not isinstance(sampler, PriorSampler) or not sampler.centres

    # Resumed later, even without the file, the study runs the same warm start and its prior is centred on it.
    (tmp_path / "best.json").unlink(missing_ok=True)
    _tune(target, "--warm-start", entry, "--n-trials", "5")
    assert len(load_study("target", "lrsearch.journal").trials) == 5


def test_the_prior_is_centred_on_the_warm_start(tmp_path, source) -> None:
    from lrsearch.config.priors import RelativeSpace
    from lrsearch.config.spec import spec_from_dict
    from lrsearch.study.storage import create_study, open_storage

    spec = spec_from_dict(tiny_study(name="centred", budget={"n_trials": 40, "epochs": 1}, **DEFAULT))
    warm = {"warm:source": source}
    study = create_study(spec, open_storage("lrsearch.journal"), "centred", warm_start=warm)
    assert study.sampler.centres == [RelativeSpace(spec.space()).encode(source)]
    draws = [study.sampler._prior(__import__("numpy").random.default_rng(seed)) for seed in range(200)]
    share = sum(d["optimizer"] == source["optimizer"] for d in draws) / len(draws)
    assert share > 0.7  # the warm start's optimizer, but for a switch now and then
    centre = RelativeSpace(spec.space()).encode(source)["lr_scale"]
    near = sum(abs(d["lr_scale"] - centre) < 1.0 for d in draws) / len(draws)
    assert near > 0.6  # lr within a decade of the warm start's, mostly


@pytest.mark.parametrize(("entry", "fragment"), [
    ("nowhere", "search.warm_start 'nowhere': not a configuration file"),
    ("missing.json", "search.warm_start 'missing.json': no such configuration file"),
    ("bad.json", "optimizer config 'bad.json' is not valid JSON"),
])
def test_a_bad_warm_start_is_one_line_exit_2_and_creates_no_study(tmp_path, entry: str, fragment: str) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    path = write_study(tmp_path, tiny_study(**DEFAULT))
    result = CliRunner().invoke(cli, ["tune", str(path), "--no-progress", "--no-mlflow", "--warm-start", entry])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and fragment in result.stderr, result.stderr
    assert not (tmp_path / "lrsearch.journal").exists()  # nothing created


def test_a_warm_start_whose_optimizer_the_study_does_not_search_is_refused(tmp_path) -> None:
    (tmp_path / "sgd.json").write_text(json.dumps({"optimizer": "sgd", "kwargs": {"lr": 0.1}}))
    path = write_study(tmp_path, tiny_study(**DEFAULT))  # searches adam and momentum
    result = CliRunner().invoke(cli, ["tune", str(path), "--no-progress", "--no-mlflow", "--warm-start", "sgd.json"])
    assert result.exit_code == 2 and "its optimizer 'sgd' is not searched by this study" in result.stderr
