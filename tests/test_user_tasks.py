"""User tasks: an entrypoint Task (studies/examples/charlm.py) and function mode (studies/examples/own_loop.py).

Studies run on real SQLite storage and a real MLflow store in tmp_path.
"""

from __future__ import annotations

import math
import sys
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from click.testing import CliRunner
from conftest import REPO, tiny_study, write_study
from mlflow import MlflowClient

import lrsearch.study.tune
from lrsearch.cli import cli
from lrsearch.config.search_space import flat_params
from lrsearch.config.spec import StudySpec, spec_from_dict
from lrsearch.errors import LrsearchError, TaskError
from lrsearch.tracking.tracker import MlflowTracker
from lrsearch.training.function_mode import (
    ContextError,
    TrialStopped,
    load_function,
    run_function_trial,
)
from lrsearch.training.tasks import import_callable
from lrsearch.training.trial import TrialSettings

EXAMPLES = REPO / "studies" / "examples"
State = optuna.trial.TrialState
ADAM = {"optimizer": "adam", "params": {"lr": 1e-2, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.0},
        "schedule": {"name": "constant"}}
TINY_CHARLM = {"context": 16, "n_chars": 20_000, "d_model": 32, "heads": 2, "layers": 1}


def example(name: str, **changes: Any) -> StudySpec:
    """An example study from studies/examples with some sections changed; its modules resolve next to it."""
    path = EXAMPLES / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    spec = spec_from_dict(data, str(path))
    spec.source = str(path)
    return spec


def example_module(name: str) -> Any:
    """An example's module, imported the way a study file next to it imports it."""
    entrypoint = {"charlm": "make", "own_loop": "train"}[name]
    return sys.modules[import_callable(f"{name}:{entrypoint}", "task.entrypoint", str(EXAMPLES / name)).__module__]


def function_spec(tmp_path: Path, code: str, **changes: Any) -> StudySpec:
    """A function-mode study of ``user_loop:train`` written to tmp_path."""
    (tmp_path / "user_loop.py").write_text(textwrap.dedent(code))
    sys.modules.pop("user_loop", None)  # every test writes its own user_loop.py
    study = tiny_study(**{"task": {"function": "user_loop:train"}, **changes})
    spec = spec_from_dict(study, "study.yaml")
    spec.source = str(write_study(tmp_path, study))
    return spec


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the module: creating its schema is most of a tracked test's time."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def runs_of(uri: str, experiment: str) -> tuple[list, list]:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def check_tracked_study(study: optuna.Study, uri: str, metrics: set[str]) -> None:
    """3 trials in storage with their config and final metrics, and 1 parent + 3 child runs in MLflow."""
    assert [t.state for t in study.trials] == [State.COMPLETE] * 3
    for trial in study.trials:
        attrs = trial.user_attrs
        assert set(attrs["config"]) == {"optimizer", "params", "schedule"}
        assert attrs["optimizer_impl"] in ("fused", "foreach", "default")
        assert metrics <= set(attrs) and attrs["diverged"] is False
        assert trial.value == attrs["val_loss"] and 0 < trial.value < 10
        assert sorted(trial.intermediate_values) == [0, 1]
    parents, children = runs_of(uri, study.study_name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3 and {r.info.status for r in children} == {"FINISHED"}
    by_name = {r.info.run_name: r for r in children}
    client = MlflowClient(uri)
    for trial in study.trials:
        run = by_name[f"trial-{trial.number}"]
        assert run.data.tags["optimizer_impl"] == trial.user_attrs["optimizer_impl"]
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.step for m in history] == sorted(trial.intermediate_values)
        assert [m.value for m in history] == pytest.approx([trial.intermediate_values[m.step] for m in history])


# -- the examples ----------------------------------------------------------------------------------------------
def test_example_studies_validate() -> None:
    for name in ("charlm", "own_loop"):
        path = EXAMPLES / f"{name}.yaml"
        assert path.read_text().startswith(f"# lrsearch tune studies/examples/{name}.yaml\n")
        result = CliRunner().invoke(cli, ["validate", str(path)])
        assert result.exit_code == 0 and result.output == "ok\n", result.output


def test_charlm_windows_are_shifted_by_one_and_split_without_overlap() -> None:
    charlm = example_module("charlm")
    task = charlm.make(**TINY_CHARLM)
    (x, y), (vx, vy) = task.train.tensors, task.val.tensors
    assert x.shape[1] == 16 and x.max() < charlm.VOCAB
    assert (len(x), len(vx)) == (1137, 112)  # 1249 windows; blocks 9, 19, ..., 69 of 16 windows are val
    assert (x[0, 1:] == y[0, :-1]).all()  # each target is the next character of the input
    text = charlm.corpus(20_000).encode("ascii", "replace")
    assert bytes(x[0].tolist()) == text[:16] and bytes(vx[0].tolist()) == text[16 * 16 * 9 : 16 * 16 * 9 + 16]
    again = charlm.make(**TINY_CHARLM)
    assert (again.train.tensors[0] == x).all() and (again.val.tensors[1] == vy).all()  # deterministic
    with pytest.raises(TaskError, match="n_chars 999999999"):
        charlm.make(n_chars=999_999_999)


def test_entrypoint_study_lands_in_storage_and_mlflow(storage: str, mlflow_uri: str) -> None:
    spec = example("charlm", task={"entrypoint": "charlm:make", "args": TINY_CHARLM},
                   budget={"n_trials": 3, "epochs": 2}, train={"device": "cpu", "batch_size": 64},
                   sampler={"name": "random", "seed": 0}, pruner={"name": "none"})
    sys.modules.pop("charlm", None)  # imported afresh, from the study file's directory (the cwd is tmp_path)
    tracker = MlflowTracker(mlflow_uri, None, storage)  # the tracking process reads the study
    study, ran = lrsearch.study.tune.run_tune(spec, storage=storage, observers=[tracker])
    assert ran and sys.modules["charlm"].__file__ == str(EXAMPLES / "charlm.py")
    check_tracked_study(study, mlflow_uri, {"val_loss", "val_accuracy", "val_bits_per_char", "train_loss"})
    for trial in study.trials:
        attrs = trial.user_attrs
        assert attrs["val_bits_per_char"] == pytest.approx(attrs["val_loss"] / math.log(2), rel=1e-3)
        assert 0 < attrs["val_accuracy"] < 1 and attrs["val_loss"] < math.log(128)  # better than uniform


BAD_ENTRYPOINTS = {  # one module name per case: a module is imported once per process
    "broken:make": ("broken.py", "import no_such_module_here\n", "cannot import 'broken' (ModuleNotFoundError"),
    "no_make:make": ("no_make.py", "def build():\n    pass\n", "module 'no_make' has no attribute 'make'"),
    "constant:SIZE": ("constant.py", "SIZE = 3\n", "is a int, not callable"),
    "not_a_task:make": ("not_a_task.py", "import torch\n\ndef make():\n    return torch.nn.Linear(2, 1)\n",
                        "returned Linear, expected lrsearch.Task"),
}


@pytest.mark.parametrize("entrypoint", list(BAD_ENTRYPOINTS))
def test_a_bad_entrypoint_is_a_task_error_naming_it_and_creates_nothing(entrypoint: str, tmp_path: Path,
                                                                        storage: str) -> None:
    filename, code, problem = BAD_ENTRYPOINTS[entrypoint]
    (tmp_path / filename).write_text(code)
    path = write_study(tmp_path, tiny_study(task={"entrypoint": entrypoint}))
    with pytest.raises(TaskError) as error:
        lrsearch.study.tune.run_tune(path, storage=storage)
    message = str(error.value)
    assert f"task.entrypoint {entrypoint!r}" in message and problem in message and "\n" not in message
    assert not Path(storage.removeprefix("sqlite:///")).exists()


# -- function mode, the runner on its own ----------------------------------------------------------------------
def test_own_loop_reports_every_epoch_with_the_sampled_optimizer_and_schedule() -> None:
    spec = example("own_loop")
    config = {**ADAM, "schedule": {"name": "cosine"}}
    seen = []
    outcome = run_function_trial(load_function(spec), spec, config, TrialSettings(3, 32, 0),
                                 on_epoch=lambda epoch: seen.append(epoch.epoch) or False, device="cpu")
    assert seen == [0, 1, 2] and outcome.stopped is None and outcome.implementation == "fused"
    assert [h.epoch for h in outcome.history] == [0, 1, 2]
    # Cosine over 3 epochs of steps: at the end of epoch 1 of 3 the lr is lr * (1 + cos(pi/3)) / 2, then 0.
    assert outcome.history[0].lr == pytest.approx(1e-2 * 0.75)
    assert outcome.history[-1].lr == pytest.approx(0.0, abs=1e-12)
    assert all(h.epoch_seconds > 0 and h.samples_per_second > 0 for h in outcome.history)
    losses = [h.metrics["val_loss"] for h in outcome.history]
    y_val = example_module("own_loop").load_data()[3]
    assert losses[-1] < losses[0] < 1.0 and outcome.final["val_r2"] > 0.2
    assert outcome.final["val_r2"] == pytest.approx(1 - losses[-1] / y_val.var(unbiased=False).item())
    again = run_function_trial(load_function(spec), spec, config, TrialSettings(3, 32, 0), device="cpu")
    assert [h.metrics for h in again.history] == [h.metrics for h in outcome.history]  # seeded: same weights


def test_the_context_holds_the_trial(tmp_path: Path) -> None:
    spec = function_spec(tmp_path, """
        seen = {}

        def train(ctx):
            seen.update(vars(ctx))
            return {"val_loss": 0.5}
    """, task={"function": "user_loop:train", "args": {"width": 7}})
    config = {**ADAM, "schedule": {"name": "warmup_cosine", "warmup_fraction": 0.1}}
    run_function_trial(load_function(spec), spec, config, TrialSettings(4, 16, 3), device="cpu", trial_number=5)
    import user_loop

    seen = user_loop.seen
    assert seen["config"] == config and seen["args"] == {"width": 7}
    assert seen["params"] == flat_params(config) == {"optimizer": "adam", **ADAM["params"],
                                                     "schedule": "warmup_cosine", "warmup_fraction": 0.1}
    assert (seen["epochs"], seen["batch_size"], seen["seed"], seen["device"], seen["trial_number"]) == \
        (4, 16, 3, "cpu", 5)


REPORTS = """
    import math
    import torch

    log = []

    def train(ctx):
        model = torch.nn.Linear(2, 1)
        ctx.build_optimizer(model.parameters())
        for epoch, (train_loss, val_loss) in enumerate(ctx.args["losses"]):
            try:
                ctx.report(epoch, train_loss=train_loss, val_loss=val_loss)
            except Exception as exc:
                log.append((epoch, exc))
                if not ctx.args.get("swallow"):
                    raise
            log.append((epoch, "went on"))
        return {"val_loss": 0.1}
"""


def run_reports(tmp_path: Path, losses: list, prune_at: int | None = None, **args: Any) -> tuple[Any, list, list]:
    spec = function_spec(tmp_path, REPORTS, task={"function": "user_loop:train", "args": {"losses": losses, **args}})
    hooked: list[int] = []

    def on_epoch(epoch: Any) -> bool:
        hooked.append(epoch.epoch)
        return epoch.epoch == prune_at

    outcome = run_function_trial(load_function(spec), spec, ADAM, TrialSettings(len(losses), 16, 0), on_epoch,
                                 device="cpu")
    import user_loop

    return outcome, hooked, user_loop.log


def test_a_report_that_should_prune_raises_in_the_loop_and_stops_the_trial(tmp_path: Path) -> None:
    outcome, hooked, log = run_reports(tmp_path, [[1.0, 1.0], [0.9, 0.9], [0.8, 0.8]], prune_at=1)
    assert (outcome.stopped, outcome.stopped_epoch, hooked) == ("pruned", 1, [0, 1])
    assert log[0] == (0, "went on") and log[1][0] == 1 and isinstance(log[1][1], TrialStopped)
    assert len(log) == 2  # nothing after the stop ran
    assert [h.metrics["val_loss"] for h in outcome.history] == [1.0, 0.9] and outcome.final["val_loss"] == 0.9


def test_a_swallowed_stop_still_stops_the_trial(tmp_path: Path) -> None:
    outcome, _, log = run_reports(tmp_path, [[1.0, 1.0], [0.9, 0.9], [0.8, 0.8]], prune_at=0, swallow=True)
    assert (outcome.stopped, outcome.stopped_epoch, len(outcome.history)) == ("pruned", 0, 1)
    assert [entry[0] for entry in log if isinstance(entry[1], TrialStopped)] == [0, 1, 2]  # every report re-raises


@pytest.mark.parametrize(("losses", "epoch"), [
    ([[1.0, 1.0], [float("nan"), 0.9], [0.5, 0.5]], 1),     # non-finite train loss
    ([[1.0, 1.0], [0.9, float("inf")], [0.5, 0.5]], 1),     # non-finite objective
    ([[1.0, 1.0], [9.0, 9.0], [10.5, 0.5]], 2),             # train loss above 10x its first value
])
def test_divergence_follows_the_runners_rule(tmp_path: Path, losses: list, epoch: int) -> None:
    outcome, hooked, _ = run_reports(tmp_path, losses)
    assert (outcome.stopped, outcome.stopped_epoch, outcome.diverged) == ("diverged", epoch, True)
    assert hooked == list(range(epoch))  # like train_trial: a diverged epoch is recorded but not reported


def test_a_report_without_the_objective_metric_is_a_clear_error(tmp_path: Path) -> None:
    spec = function_spec(tmp_path, """
        def train(ctx):
            ctx.report(0, train_loss=1.0, val_acc=0.5)
    """)
    with pytest.raises(ContextError) as error:
        run_function_trial(load_function(spec), spec, ADAM, TrialSettings(2, 16, 0), device="cpu")
    assert isinstance(error.value, LrsearchError) and "\n" not in str(error.value)
    assert str(error.value) == ("ctx.report(epoch=0) in task.function 'user_loop:train': missing 'val_loss', the "
                                "study's objective.metric (got: train_loss, val_acc)")


@pytest.mark.parametrize(("body", "problem"), [
    ("ctx.report(0, val_loss='low')", "'val_loss' is str 'low', expected a number"),
    ("ctx.report(0, val_loss=1.0); ctx.report(0, val_loss=1.0)", "epoch must be an integer above the last"),
    ("return [0.5]", "returned list, expected a dict of final metrics such as {'val_loss': 0.42}"),
    ("return None", "returned None and never called ctx.report"),
    ("return {'train_loss': 0.5}", "missing 'val_loss'"),
])
def test_misused_context_is_a_context_error(tmp_path: Path, body: str, problem: str) -> None:
    spec = function_spec(tmp_path, f"def train(ctx):\n    {body}\n")
    with pytest.raises(ContextError, match="user_loop:train") as error:
        run_function_trial(load_function(spec), spec, ADAM, TrialSettings(2, 16, 0), device="cpu")
    assert problem in str(error.value)


def test_metrics_returned_without_reports_are_the_last_epoch(tmp_path: Path) -> None:
    spec = function_spec(tmp_path, "def train(ctx):\n    return {'val_loss': 0.25, 'val_top5': 0.9}\n")
    hooked = []
    outcome = run_function_trial(load_function(spec), spec, ADAM, TrialSettings(3, 16, 0),
                                 on_epoch=lambda epoch: hooked.append(epoch) or False, device="cpu")
    assert outcome.stopped is None and outcome.implementation == "user" and [e.epoch for e in hooked] == [2]
    assert outcome.final == {"val_loss": 0.25, "val_top5": 0.9} and math.isnan(hooked[0].lr)


def test_returned_metrics_win_over_the_last_report(tmp_path: Path) -> None:
    spec = function_spec(tmp_path, """
        def train(ctx):
            ctx.report(0, val_loss=0.4, samples=100)
            ctx.report(1, val_loss=0.6, samples=100)
            return {"val_loss": 0.4, "test_loss": 0.45}  # the best checkpoint, restored
    """)
    outcome = run_function_trial(load_function(spec), spec, ADAM, TrialSettings(2, 16, 0), device="cpu")
    assert [h.metrics for h in outcome.history] == [{"val_loss": 0.4}, {"val_loss": 0.6}]
    assert outcome.final == {"val_loss": 0.4, "test_loss": 0.45}


def test_an_error_in_the_loop_propagates_but_a_wrapped_stop_is_a_stop(tmp_path: Path) -> None:
    spec = function_spec(tmp_path, """
        def train(ctx):
            try:
                ctx.report(0, val_loss=1.0)
            except Exception as exc:
                raise RuntimeError("the framework wraps it") from exc
            raise ValueError("a bug in the loop")
    """)
    pruned = run_function_trial(load_function(spec), spec, ADAM, TrialSettings(2, 16, 0), lambda _: True,
                                device="cpu")
    assert (pruned.stopped, pruned.stopped_epoch) == ("pruned", 0)
    with pytest.raises(ValueError, match="a bug in the loop"):
        run_function_trial(load_function(spec), spec, ADAM, TrialSettings(2, 16, 0), lambda _: False, device="cpu")


@pytest.mark.parametrize(("code", "problem"), [
    ("import no_such_module_here\n", "cannot import 'user_loop' (ModuleNotFoundError"),
    ("def fit(ctx):\n    pass\n", "module 'user_loop' has no attribute 'train'"),
    ("train = 'nope'\n", "is a str, not callable"),
    ("def train(model, data):\n    pass\n", "must take one argument, the trial context (its signature is (model, "),
])
def test_a_bad_function_is_a_task_error_naming_it(tmp_path: Path, code: str, problem: str) -> None:
    spec = function_spec(tmp_path, code)
    with pytest.raises(TaskError) as error:
        load_function(spec)
    assert str(error.value).startswith("task.function 'user_loop:train'") and problem in str(error.value)


def test_a_stop_ends_an_optuna_trial_pruned_in_real_storage(tmp_path: Path, storage: str) -> None:
    """The study loop's contract without lrsearch.study: report each epoch to Optuna, prune when it says so."""
    spec = function_spec(tmp_path, REPORTS, task={"function": "user_loop:train",
                                                  "args": {"losses": [[1.0, 0.5], [1.0, 2.0], [1.0, 0.1]]}})
    study = optuna.create_study(storage=storage, pruner=optuna.pruners.ThresholdPruner(upper=1.0))
    function = load_function(spec)

    def objective(trial: optuna.Trial) -> float:
        def on_epoch(epoch: Any) -> bool:
            trial.report(epoch.metrics["val_loss"], epoch.epoch)
            return trial.should_prune()

        outcome = run_function_trial(function, spec, ADAM, TrialSettings(3, 16, 0), on_epoch, device="cpu")
        if outcome.stopped:
            raise optuna.TrialPruned(f"{outcome.stopped} at epoch {outcome.stopped_epoch}")
        return outcome.final["val_loss"]

    study.optimize(objective, n_trials=1)
    trial = optuna.load_study(study_name=study.study_name, storage=storage).trials[0]
    assert trial.state == State.PRUNED and trial.intermediate_values == {0: 0.5, 1: 2.0}


# -- function mode through tune (after integration) ----------------------------------------------------------
def test_function_study_lands_in_storage_and_mlflow(storage: str, mlflow_uri: str) -> None:
    spec = example("own_loop", budget={"n_trials": 3, "epochs": 2}, sampler={"name": "random", "seed": 0},
                   search={"optimizers": ["adam", "momentum"], "schedules": ["constant"]}, pruner={"name": "none"})
    tracker = MlflowTracker(mlflow_uri, None, storage)  # the tracking process reads the study
    study, ran = lrsearch.study.tune.run_tune(spec, storage=storage, observers=[tracker])
    assert ran
    check_tracked_study(study, mlflow_uri, {"val_loss", "val_r2", "train_loss"})
    assert {t.user_attrs["optimizer_impl"] for t in study.trials} == {"fused"}
    assert all(t.user_attrs["training"]["batch_size"] == 32 for t in study.trials)


CHEAP = """
    import math

    def train(ctx):
        # A bowl in log(lr), minimum at lr 1e-2; "nan" in args makes every trial diverge at epoch 1.
        value = (math.log10(ctx.params["lr"]) + 2) ** 2 + 1
        for epoch in range(ctx.epochs):
            val_loss = float("nan") if ctx.args.get("nan") and epoch == 1 else value
            ctx.report(epoch, train_loss=value, val_loss=val_loss)
        return {"val_loss": value}
"""


def test_function_mode_is_pruned_by_the_studys_pruner(storage: str, tmp_path: Path) -> None:
    spec = function_spec(tmp_path, CHEAP, budget={"n_trials": 12, "epochs": 4}, pruner={"name": "median"},
                         sampler={"name": "random", "seed": 0})
    study = lrsearch.study.tune.tune(spec, storage=storage)
    pruned = [t for t in study.trials if t.state == State.PRUNED]
    assert pruned and len(study.trials) == 12
    for trial in pruned:
        assert trial.user_attrs["diverged"] is False and len(trial.intermediate_values) < 4
    best = study.best_trial
    assert best.value == pytest.approx((math.log10(best.user_attrs["config"]["params"]["lr"]) + 2) ** 2 + 1)


def test_function_mode_divergence_is_pruned_as_diverged(storage: str, tmp_path: Path) -> None:
    spec = function_spec(tmp_path, CHEAP, task={"function": "user_loop:train", "args": {"nan": True}},
                         budget={"n_trials": 2, "epochs": 3})
    study = lrsearch.study.tune.tune(spec, storage=storage)
    for trial in study.trials:
        assert trial.state == State.PRUNED and trial.user_attrs["diverged"] is True
        assert trial.value == math.inf and trial.intermediate_values[1] == math.inf


def test_a_missing_objective_metric_stops_tune_at_the_first_trial(storage: str, tmp_path: Path) -> None:
    spec = function_spec(tmp_path, "def train(ctx):\n    ctx.report(0, train_loss=1.0)\n")
    with pytest.raises(ContextError, match="missing 'val_loss'"):
        lrsearch.study.tune.tune(spec, storage=storage)
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert [t.state for t in trials] == [State.FAIL]
