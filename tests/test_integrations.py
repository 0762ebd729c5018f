"""The framework integrations: PyTorch Lightning and the Hugging Face Trainer in function mode.

Each framework trains the example in studies/examples (lightning_digits.py, transformers_digits.py) through a small
wrapper that keeps what the framework did (epochs trained, the optimizer it stepped), so tests compare the trial's
record with the framework's own state. Studies run on real SQLite storage and a real MLflow store in tmp_path.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from click.testing import CliRunner
from conftest import REPO, tiny_study, write_study
from mlflow import MlflowClient

import lrsearch
import lrsearch.study.tune
from lrsearch.cli import cli
from lrsearch.config.spec import StudySpec, spec_from_dict
from lrsearch.training.function_mode import ContextError, load_function, run_function_trial
from lrsearch.training.trial import TrialSettings

EXAMPLES = REPO / "studies" / "examples"
State = optuna.trial.TrialState
FRAMEWORKS = {  # example module; its trainer's epochs and optimizer steps done; the optimizer it stepped
    "lightning": ("lightning_digits", "trainer.current_epoch, trainer.global_step", "trainer.optimizers[0]"),
    "transformers": ("transformers_digits", "round(trainer.state.epoch), trainer.state.global_step",
                     "getattr(trainer.optimizer, 'optimizer', trainer.optimizer)"),
}
STEPS_PER_EPOCH = 23  # 1437 training digits in batches of 64
ADAM = {"optimizer": "adam", "params": {"lr": 1e-2, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.0},
        "schedule": {"name": "cosine"}}
HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay", "momentum", "nesterov", "alpha")


@pytest.fixture(autouse=True)
def _examples_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))


def framework_spec(tmp_path: Path, framework: str, **changes: Any) -> StudySpec:
    """A study of ``recorded:train``: the framework's example, recording what its trainer did per trial."""
    module, epochs, optimizer = FRAMEWORKS[framework]
    (tmp_path / "recorded.py").write_text(textwrap.dedent(f"""
        import {module}

        SEEN = {{}}

        def train(ctx):
            trainer = {module}.fit(ctx)
            optimizer = {optimizer}
            epochs, steps = {epochs}
            SEEN[ctx.trial_number] = {{"epochs": epochs, "steps": steps, "class": type(optimizer),
                                      "defaults": dict(optimizer.defaults)}}
    """))
    sys.modules.pop("recorded", None)
    study = tiny_study(task={"function": "recorded:train", "args": {"hidden": 16, "layers": 1}},
                       budget={"n_trials": 3, "epochs": 3}, train={"batch_size": 64, "device": "cpu", "threads": 1},
                       search={"optimizers": ["adam", "momentum"], "schedules": ["constant", "cosine"]},
                       **changes)
    spec = spec_from_dict(study, "study.yaml")
    spec.source = str(write_study(tmp_path, study))
    return spec


def seen() -> dict[int, dict[str, Any]]:
    return sys.modules["recorded"].SEEN


# -- optional extras -------------------------------------------------------------------------------------------
def test_import_lrsearch_imports_no_framework() -> None:
    code = ("import sys, lrsearch, lrsearch.integrations; lrsearch.TrialContext; "
            "print(sorted(m for m in ('lightning', 'transformers', 'accelerate') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout == "[]\n"


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_an_integration_without_its_framework_names_the_extra(framework: str, tmp_path: Path) -> None:
    """The framework made unimportable (a None entry in sys.modules): tune stops at once, one line, exit 2."""
    (tmp_path / "uses_it.py").write_text(f"from lrsearch.integrations.{framework} import TrialCallback\n\n"
                                         "def train(ctx):\n    pass\n")
    path = write_study(tmp_path, tiny_study(task={"function": "uses_it:train"}))
    code = (f"import sys; sys.modules[{framework!r}] = None; from lrsearch.cli import main; "
            f"sys.argv = ['lrsearch', 'tune', {str(path)!r}, '--no-mlflow']; main()")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert f"lrsearch.integrations.{framework} needs the {framework!r} package" in done.stderr
    assert f"pip install 'lrsearch[{framework}]'" in done.stderr
    assert not (tmp_path / "lrsearch.db").exists()


def test_a_trial_context_sent_to_another_process_is_refused_in_one_line(tmp_path: Path) -> None:
    """What Lightning's ddp_spawn does with the module and callbacks holding ctx: pickle them for the new ranks."""
    message = context_error(tmp_path, "pickles_ctx", "import pickle\n\ndef train(ctx):\n    pickle.dumps(ctx)\n")
    assert message.startswith("the trial context of task.function 'pickles_ctx:train' cannot be pickled: a trial "
                              "reports from the process lrsearch runs it in") and "ddp_spawn" in message


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_the_example_studies_validate(framework: str) -> None:
    name = FRAMEWORKS[framework][0]
    path = EXAMPLES / f"{name}.yaml"
    assert path.read_text().startswith(f"# lrsearch tune studies/examples/{name}.yaml\n")
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 0 and result.output == "ok\n", result.output


def test_a_rank_started_by_rerunning_the_command_inside_a_trial_refuses() -> None:
    """Lightning's strategy='ddp' re-runs the command line per extra rank, inheriting the trial's environment."""
    code = ("from lrsearch.errors import LrsearchError\ntry:\n    import lrsearch.integrations.lightning\n"
            "except LrsearchError as e:\n    print(type(e).__name__, e.exit_code, e)")
    env = {**_environment(), "LRSEARCH_TRIAL": "4", "LOCAL_RANK": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env)
    assert done.stdout.startswith("ContextError 2 lrsearch.integrations.lightning: this process is local rank 1, "
                                  "started by re-running the command line inside trial 4"), done.stderr[-2000:]
    assert "Trainer(devices=1)" in done.stdout and done.stdout.count("\n") == 1


def _environment() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("LRSEARCH_TRIAL", "LOCAL_RANK")}


# -- one trial ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_the_schedule_steps_once_per_optimizer_step_over_the_trials_epochs(framework: str, tmp_path: Path) -> None:
    spec = framework_spec(tmp_path, framework)
    outcome = run_function_trial(load_function(spec), spec, ADAM, TrialSettings(3, 64, 0), device="cpu",
                                 trial_number=0)
    assert outcome.stopped is None and outcome.implementation == "fused"
    assert [h.epoch for h in outcome.history] == [0, 1, 2]
    assert (seen()[0]["epochs"], seen()[0]["steps"]) == (3, 3 * STEPS_PER_EPOCH)
    # Cosine over 3 epochs of steps: after epoch 1 of 3 the lr is lr * (1 + cos(pi/3)) / 2, after the last 0.
    assert outcome.history[0].lr == pytest.approx(1e-2 * 0.75)
    assert outcome.history[-1].lr == pytest.approx(0.0, abs=1e-12)
    first, last = outcome.history[0].metrics, outcome.history[-1].metrics
    assert {"train_loss", "val_loss", "val_accuracy"} <= set(last)
    assert last["val_loss"] < first["val_loss"] < math.log(10) + 0.1  # it trains
    assert all(h.samples_per_second > 0 for h in outcome.history)  # 1437 training samples per epoch


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_a_diverged_trial_stops_the_framework_at_that_epoch(framework: str, tmp_path: Path) -> None:
    spec = framework_spec(tmp_path, framework)
    huge = {"optimizer": "sgd", "params": {"lr": 1e4, "weight_decay": 0.0}, "schedule": {"name": "constant"}}
    outcome = run_function_trial(load_function(spec), spec, huge, TrialSettings(3, 64, 0), device="cpu",
                                 trial_number=0)
    # Checked at steps 1, 2, 4, ... against the first step's loss, as the built-in loop does: the framework stops
    # within the first epoch, which is not reported (a first report of an already exploded loss would pass).
    assert (outcome.stopped, outcome.stopped_epoch, outcome.history) == ("diverged", 0, [])
    assert 2 <= seen()[0]["steps"] <= 5


def context_error(tmp_path: Path, module: str, code: str) -> str:
    """The ContextError that one trial of ``module:train`` (``code``, written to tmp_path) raises."""
    (tmp_path / f"{module}.py").write_text(code)
    sys.modules.pop(module, None)
    study = tiny_study(task={"function": f"{module}:train"})
    spec = spec_from_dict(study, "study.yaml")
    spec.source = str(write_study(tmp_path, study))
    with pytest.raises(ContextError) as error:
        run_function_trial(load_function(spec), spec, ADAM, TrialSettings(3, 64, 0), device="cpu")
    return str(error.value)


MISUSE = {
    "lightning": {
        "max_epochs=ctx.epochs + 1": ("L.Trainer(max_epochs=ctx.epochs + 1, callbacks=[TrialCallback(ctx)])",
                                      "Trainer(max_epochs=4): a trial trains budget.epochs=3 epochs"),
        "max_steps": ("L.Trainer(max_epochs=ctx.epochs, max_steps=5, callbacks=[TrialCallback(ctx)])",
                      "Trainer(max_steps=5): a trial trains budget.epochs=3 whole epochs"),
        "own optimizer": ("L.Trainer(**trial_arguments(ctx), callbacks=[TrialCallback(ctx)])",
                          "configure_optimizers of Own did not build the trial's optimizer"),
        "no callback": ("L.Trainer(**trial_arguments(ctx))", "the Trainer has no TrialCallback(ctx) for this trial"),
    },
}


@pytest.mark.parametrize("case", list(MISUSE["lightning"]))
def test_lightning_misuse_is_one_clear_context_error(case: str, tmp_path: Path) -> None:
    trainer, problem = MISUSE["lightning"][case]
    own = "torch.optim.SGD(self.parameters(), lr=0.1)" if case == "own optimizer" else "trial_optimizers(ctx, self)"
    code = textwrap.dedent(f"""
        import lightning as L
        import torch
        from lightning_digits import load_digits
        from lrsearch.integrations.lightning import TrialCallback, trial_arguments, trial_optimizers

        def train(ctx):
            class Own(L.LightningModule):
                def __init__(self):
                    super().__init__()
                    self.net = torch.nn.Linear(64, 10)

                def training_step(self, batch, index):
                    return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

                def configure_optimizers(self):
                    return {own}

            loader = torch.utils.data.DataLoader(load_digits()[0], batch_size=64)
            trainer = {trainer}
            trainer.fit(Own(), loader)
    """)
    message = context_error(tmp_path, "misused", code)
    assert problem in message and "\n" not in message


@pytest.mark.parametrize(("arguments", "problem"), [
    ("num_train_epochs=2", "TrainingArguments(num_train_epochs=2): a trial trains budget.epochs=3 epochs"),
    ("num_train_epochs=3, eval_strategy='no'", "TrainingArguments(eval_strategy='no'): a trial reports once per "
                                               "epoch (allowed: 'epoch'"),
])
def test_transformers_misuse_is_one_clear_context_error(arguments: str, problem: str, tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        from transformers import Trainer, TrainingArguments
        from transformers_digits import load_digits, tiny_bert
        from lrsearch.integrations.transformers import TrialCallback, trial_optimizers

        def train(ctx):
            model, (train_set, val_set) = tiny_bert(16, 1), load_digits()
            args = TrainingArguments(output_dir="out", use_cpu=True, {arguments})
            Trainer(model, args, train_dataset=train_set, eval_dataset=val_set, callbacks=[TrialCallback(ctx)],
                    optimizers=trial_optimizers(ctx, model, args, train_set)).train()
    """)
    message = context_error(tmp_path, "misused_hf", code)
    assert problem in message and "\n" not in message


# -- a study -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_a_pruned_study_through_the_framework(framework: str, tmp_path: Path, storage: str, mlflow_uri: str) -> None:
    """3 trials with successive halving (rung after 2 epochs): every trial COMPLETE or PRUNED, pruned ones stopped
    by the framework at the pruned epoch, every epoch in Optuna and MLflow, exports that rebuild the optimizer."""
    spec = framework_spec(tmp_path, framework, pruner={"name": "sha"}, sampler={"name": "random", "seed": 2})
    uri = mlflow_uri
    from lrsearch.tracking.tracker import MlflowTracker

    study, ran = lrsearch.study.tune.run_tune(spec, storage=storage, observers=[MlflowTracker(uri, None, storage)])
    assert ran and len(study.trials) == 3
    states = {t.number: t.state for t in study.trials}
    assert set(states.values()) <= {State.COMPLETE, State.PRUNED} and State.PRUNED in states.values(), states
    client = MlflowClient(uri)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])}
    for trial in study.trials:
        epochs = sorted(trial.intermediate_values)
        pruned = trial.state == State.PRUNED
        assert epochs == ([0, 1] if pruned else [0, 1, 2])  # the sha rung is epoch 1 (2 epochs trained)
        # The framework stopped where the trial did.
        assert (seen()[trial.number]["epochs"], seen()[trial.number]["steps"]) == \
               (len(epochs), len(epochs) * STEPS_PER_EPOCH)
        assert trial.user_attrs["diverged"] is False
        run = runs[f"trial-{trial.number}"]
        assert run.info.status == ("KILLED" if pruned else "FINISHED")
        assert run.data.tags["pruned"] == str(pruned).lower()
        for metric in ("val_loss", "train_loss", "val_accuracy", "lr"):
            history = client.get_metric_history(run.info.run_id, metric)
            assert [m.step for m in history] == epochs, metric
        val_loss = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.value for m in val_loss] == pytest.approx([trial.intermediate_values[e] for e in epochs])
        exported = CliRunner().invoke(cli, ["export", "tiny", "--storage", storage, "--trial", str(trial.number)])
        rebuilt = lrsearch.build_optimizer(json.loads(exported.output), torch.nn.Linear(4, 2).parameters())
        used = seen()[trial.number]
        assert type(rebuilt) is used["class"]
        assert {k: rebuilt.defaults.get(k) for k in HYPERPARAMETERS} == \
               {k: used["defaults"].get(k) for k in HYPERPARAMETERS}
